"""Data fingerprints: the data tools write what they used, run_pretraining.py refuses data made with
another vocab, casing, sequence length, mask count or layout (one line, exit 2), and data without a
fingerprint still trains."""

import json
import os

import pytest

from bert_data import create_bpe_tokenizer, create_mlm_data, create_vocab
from bert_data import create_pretraining_data as cpd
from bert_data.pretraining import expand_train_files
from common import fingerprint
from tests.run_outputs import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "bert_data", "sample.txt")
SCRIPT = os.path.join(ROOT, "run_pretraining.py")
TINY = os.path.join(ROOT, "configs", "pretrain_tiny_128_lamb.json")
ROBERTA_TINY = os.path.join(ROOT, "configs", "pretrain_roberta_tiny_128.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_vocab):
    """The quick start's data (remask layout, uncased) at seq 64 / 10 masks from the 600-token
    sample vocab, plus a second, larger vocab from the same text."""
    tmp = tmp_path_factory.mktemp("fingerprint")
    out = str(tmp / "sample.tfrecord")
    argv = ["--input-file", SAMPLE, "--output-file", out, "--vocab-file", sample_vocab, "--quiet",
            "--do-lower-case", "--remask", "--sequence-length", "64", "--mask-tokens", "10",
            "--duplication-factor", "1", "--num-workers", "1"]  # fmt: skip
    cpd.run(cpd.build_parser().parse_args(argv))
    other = str(tmp / "other_vocab.txt")
    create_vocab.main(["--input-file", SAMPLE, "--output-file", other, "--vocab-size", "900"])
    return {"records": out, "vocab": sample_vocab, "other_vocab": other}


def pretrain(data_file, *extra):
    return run_script(
        SCRIPT, "--config", TINY, "--train-file", data_file, "--seq-length", "64",
        "--max-predictions-per-seq", "10", *extra,
    )  # fmt: skip


def one_line_error(result):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_fingerprint_records_the_settings(data):
    stamp = fingerprint.load(data["records"])
    assert stamp["tool"] == "bert_data.create_pretraining_data"
    with open(data["vocab"], "rb") as f:
        lines = f.read().splitlines()
    assert stamp["vocab"]["size"] == len(lines)
    assert stamp["vocab"]["sha256"] == fingerprint.file_entry(data["vocab"])["sha256"]
    assert (stamp["do_lower_case"], stamp["sequence_length"], stamp["mask_tokens"]) == (
        True,
        64,
        10,
    )
    assert stamp["layout"] == "remask"
    assert data["vocab"] not in json.dumps(stamp)  # no paths: shards on other machines agree


def test_other_vocab_is_one_line_naming_both(data):
    """The quick start's trap: data from a small vocab, run with another vocab file."""
    line = one_line_error(pretrain(data["records"], "--vocab-file", data["other_vocab"]))
    assert data["records"] in line and fingerprint.path_of(data["records"]) in line
    assert "vocab.txt (600 entries" in line and data["other_vocab"] in line
    assert "other_vocab.txt (" in line


def test_casing_mismatch_is_one_line(data):
    line = one_line_error(pretrain(data["records"], "--no-do-lower-case"))
    assert "was made with do_lower_case true but this run has do_lower_case false" in line
    assert fingerprint.path_of(data["records"]) in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--sequence-length", "32"], "sequence length 32 but this run has sequence length 64"),
        (["--mask-tokens", "12"], "mask tokens per sequence 12 but this run has mask tokens per sequence 10"),
    ],
)  # fmt: skip
def test_a_later_file_made_otherwise_is_one_line(tmp_path, data, flags, expected):
    """The data checks read the first file; the fingerprints cover every file of the glob."""
    other = str(tmp_path / "other.tfrecord")
    argv = ["--input-file", SAMPLE, "--output-file", other, "--vocab-file", data["vocab"], "--quiet",
            "--do-lower-case", "--remask", "--sequence-length", "64", "--mask-tokens", "10",
            "--duplication-factor", "1", "--num-workers", "1", *flags]  # fmt: skip
    cpd.run(cpd.build_parser().parse_args(argv))
    line = one_line_error(pretrain(f"{data['records']},{other}"))
    assert expected in line and fingerprint.path_of(other) in line


def _two_steps(tmp_path, data_file, *extra):
    result = pretrain(
        data_file, "--save-path", str(tmp_path), "--num-train-steps", "2", "--precision", "32",
        "--micro-batch-size", "2", "--global-batch-size", "2", "--hidden-size", "36",
        "--num-attention-heads", "3", "--intermediate-size", "37", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step: 1," in result.stdout


def test_matching_settings_train(tmp_path, data):
    # A glob that also matches the fingerprint file: training skips it.
    _two_steps(tmp_path, data["records"] + "*", "--vocab-file", data["vocab"], "--do-lower-case")


def test_data_without_fingerprint_trains(tmp_path, data):
    bare = tmp_path / "bare.tfrecord"
    with open(data["records"], "rb") as f:
        bare.write_bytes(f.read())
    assert fingerprint.load(str(bare)) is None
    _two_steps(tmp_path, str(bare), "--vocab-file", data["other_vocab"], "--no-do-lower-case")


def test_train_file_globs_skip_fingerprints(data):
    assert expand_train_files(data["records"] + "*") == [data["records"]]


def test_roberta_tokenizer_mismatch(tmp_path):
    tokenizers = []
    for size in ("600", "700"):
        out = tmp_path / f"bpe{size}"
        create_bpe_tokenizer.main(
            ["--input-file", SAMPLE, "--output-dir", str(out), "--vocab-size", size]
        )
        tokenizers.append(str(out / "tokenizer.json"))
    records = str(tmp_path / "mlm.tfrecord")
    create_mlm_data.main(["--input-file", SAMPLE, "--output-file", records, "--quiet",
                          "--tokenizer-file", tokenizers[0], "--sequence-length", "64"])  # fmt: skip
    assert fingerprint.load(records)["layout"] == "packed"
    result = run_script(SCRIPT, "--config", ROBERTA_TINY, "--train-file", records,
                        "--seq-length", "64", "--tokenizer-file", tokenizers[1])  # fmt: skip
    line = one_line_error(result)
    assert "was made with vocab tokenizer.json" in line and tokenizers[1] in line
