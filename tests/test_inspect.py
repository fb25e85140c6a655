"""bert_data.inspect_records and the TFRecord reader: decoding, statistics, corrupt input."""

import os
import subprocess
import sys

import pytest

from bert_data.records import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "bert_data", "sample.txt")


@pytest.fixture
def data(sample_vocab, sample_records):
    return sample_vocab, sample_records


def _inspect(*args):
    return subprocess.run(
        [sys.executable, "-m", "bert_data.inspect_records", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["standard", "remask"])
def test_inspect_decodes_text_and_prints_statistics(data, layout):
    vocab, files = data
    result = _inspect(files[layout], "--vocab-file", vocab, "-n", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("--- ") == 2 and "[CLS]" in out and "[SEP]" in out
    assert "[MASK](" in out  # masked positions shown with their original token
    assert f"layout: {layout}" in out
    records = len(list(read_records(files[layout])))
    assert f"records: {records}" in out
    assert "NSP random-next fraction" in out and "as [MASK]/kept/random" in out


def test_both_layouts_decode_to_the_same_text(data):
    vocab, files = data
    texts = [_inspect(files[k], "--vocab-file", vocab, "-n", "5").stdout for k in files]
    strip = [
        t.split("files:")[0].replace(files["standard"], "F").replace(files["remask"], "F")
        for t in texts
    ]
    assert strip[0] == strip[1]


def test_corrupt_file_is_one_line_error(data, tmp_path):
    vocab, files = data
    with open(files["standard"], "rb") as f:
        raw = f.read()
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    result = _inspect(str(bad), "--vocab-file", vocab)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot read {bad}: {bad}: corrupt record data at byte 0"
    ]
    truncated = tmp_path / "cut.tfrecord"
    truncated.write_bytes(raw[:-3])
    result = _inspect(str(truncated), "--vocab-file", vocab)
    assert result.returncode == 2 and "truncated record" in result.stderr


def test_wrong_vocab_is_detected(data, tmp_path):
    _, files = data
    small = tmp_path / "v.txt"
    small.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    result = _inspect(files["standard"], "--vocab-file", str(small))
    assert result.returncode == 2 and "wrong --vocab-file?" in result.stderr
