"""gpt2_data.preprocess_data: Megatron's .bin/.idx read back by an independent struct parser and by
IndexedDataset, equal to tokenizer.encode + EOD; byte-identical for any worker count; the three
input formats; one-line errors that leave no output."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from common.errors import UserError
from gpt2_data import preprocess_data
from gpt2_data import tokenizer as gpt2_tokenizer
from gpt2_data.megatron import IndexedDataset
from tests.test_gpt2_tokenizer import TINY_MERGES, tiny_vocab_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    "the other there's aaaaaaa",
    "",
    "Ça coûte 12€ — naïve 東京\n\nsecond paragraph  ",
    "x",
    "they'll <|endoftext|> stays text",
] * 7


def parse_idx(path):
    """{dtype code, sizes, pointers, doc_idx} of a Megatron .idx, by the table of §5.6."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, code, n, m = struct.unpack_from("<9sQBQQ", data, 0)
    assert magic == b"MMIDIDX\x00\x00" and version == 1
    offset = 34
    sizes = list(struct.unpack_from(f"<{n}i", data, offset))
    pointers = list(struct.unpack_from(f"<{n}q", data, offset + 4 * n))
    doc_idx = list(struct.unpack_from(f"<{m}q", data, offset + 12 * n))
    assert len(data) == offset + 12 * n + 8 * m
    return {"code": code, "sizes": sizes, "pointers": pointers, "doc_idx": doc_idx}


@pytest.fixture
def tiny(tmp_path):
    _, vocab, merges = tiny_vocab_files(tmp_path, TINY_MERGES)
    return vocab, merges


def _run_cli(args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "gpt2_data", "preprocess_data.py"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _jsonl(path, texts, key="text"):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t, "id": 1}) + "\n")


def test_output_reads_back_as_encode_plus_eod_for_any_worker_count(tmp_path, tiny):
    vocab, merges = tiny
    _jsonl(tmp_path / "in.jsonl", TEXTS)
    outputs = {}
    for workers in (1, 2):
        prefix = str(tmp_path / f"w{workers}")
        argv = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", prefix, "--vocab",
                vocab, "--merge-file", merges, "--append-eod", "--workers", str(workers),
                "--chunk-size", "2", "--dataset-impl", "mmap"]  # fmt: skip
        done = _run_cli(argv)
        assert done.returncode == 0, done.stderr
        outputs[workers] = [
            pathlib.Path(f"{prefix}_text_document{e}").read_bytes() for e in (".bin", ".idx")
        ]
    assert outputs[1] == outputs[2]

    tok = gpt2_tokenizer.load(vocab, merges)
    expected = [tok.encode(t) + [tok.eod] for t in TEXTS if t]
    prefix = str(tmp_path / "w2_text_document")
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == expected and ds.dtype == np.uint16
    parsed = parse_idx(prefix + ".idx")
    assert parsed["code"] == 8  # uint16: the vocabulary is far below 65500
    assert parsed["sizes"] == [len(e) for e in expected]
    assert parsed["pointers"] == [2 * sum(map(len, expected[:i])) for i in range(len(expected))]
    assert parsed["doc_idx"] == list(range(len(expected) + 1))
    with open(prefix + ".bin", "rb") as f:
        assert f.read() == b"".join(struct.pack(f"<{len(e)}H", *e) for e in expected)


def _args(tmp_path, tiny, *extra):
    vocab, merges = tiny
    argv = ["--output-prefix", str(tmp_path / "out"), "--vocab-file", vocab, "--merge-file", merges]
    return preprocess_data.parse_args([*argv, *extra])


def _read(tmp_path, key="text"):
    ds = IndexedDataset(str(tmp_path / f"out_{key}_document"))
    return [ds[i].tolist() for i in range(len(ds))]


def test_text_and_wikiextractor_inputs_are_detected(tmp_path, tiny):
    tok = gpt2_tokenizer.load(*tiny)
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n\n  \nsecond doc\n", encoding="utf-8")
    preprocess_data.run(_args(tmp_path, tiny, "--input", str(tmp_path / "a.txt")))
    assert _read(tmp_path) == [tok.encode("first doc\nline two"), tok.encode("second doc")]

    wiki = '<doc id="1" title="T">\nT\n\nPara one.\nPara two.\n</doc>\n<doc id="2" title="U">\nU\n</doc>\n'
    (tmp_path / "wiki_00").write_text(wiki, encoding="utf-8")
    counts = preprocess_data.run(
        _args(tmp_path, tiny, "--input", str(tmp_path / "wiki_*"), "--append-eod")
    )
    assert _read(tmp_path) == [tok.encode("Para one.\nPara two.") + [tok.eod]]
    assert counts == {"text": (1, len(_read(tmp_path)[0]))}  # the empty article is skipped


def test_several_json_keys_write_one_dataset_each(tmp_path, tiny):
    tok = gpt2_tokenizer.load(*tiny)
    with open(tmp_path / "in.json", "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "the", "title": "x y"}) + "\n\n")
        f.write(json.dumps({"text": "aa", "title": ""}) + "\n")
    preprocess_data.run(
        _args(tmp_path, tiny, "--input", str(tmp_path / "in.json"), "--json-keys", "text", "title")
    )
    assert _read(tmp_path) == [tok.encode("the"), tok.encode("aa")]
    assert _read(tmp_path, "title") == [tok.encode("x y")]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', '{"text": "a", '], "in.jsonl:2: not valid JSON"),
        (['{"text": "ok"}', "", '{"body": "a"}'], "in.jsonl:3: key 'text' must hold a string"),
        (['["text"]'], "in.jsonl:1: expected a JSON object"),
        (['{"text": "ok"}', '{"text": "a the"}'], "in.jsonl:2: token id 999 >= vocab size"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line_and_writes_nothing(tmp_path, lines, message):
    # " the" is one token whose id, 999, is past the end of this 264-entry vocabulary.
    _, vocab, merges = tiny_vocab_files(tmp_path, TINY_MERGES, extra={"Ġthe": 999})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UserError, match=message) as err:
        preprocess_data.run(_args(tmp_path, (vocab, merges), "--input", str(tmp_path / "in.jsonl")))
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == before
    done = _run_cli(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "o"),
                     "--vocab", vocab, "--merge-file", merges, "--workers", "2"])  # fmt: skip
    assert done.returncode != 0 and message.split(":", 1)[1] in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and sorted(os.listdir(tmp_path)) == before


def test_missing_input_names_the_pattern(tmp_path, tiny):
    with pytest.raises(UserError, match=r"--input .*nothing\*\.json matches no file"):
        preprocess_data.run(_args(tmp_path, tiny, "--input", str(tmp_path / "nothing*.json")))


@pytest.mark.parametrize("num_shards", [2, 3])
def test_merged_shards_equal_the_single_run(tmp_path, tiny, num_shards):
    """N machines' parts, merged, are the single run's .bin/.idx and fingerprint bytes (the
    input has empty documents, which only the merge may drop)."""
    from gpt2_data import merge_shards

    _jsonl(tmp_path / "in.jsonl", TEXTS[:-3])
    common = ["--input", str(tmp_path / "in.jsonl"), "--append-eod", "--chunk-size", "2"]
    preprocess_data.run(_args(tmp_path / "one", tiny, *common))
    for k in range(num_shards):
        flags = [
            "--shard-index",
            str(k),
            "--num-shards",
            str(num_shards),
            "--workers",
            str(1 + k % 2),
        ]
        preprocess_data.run(_args(tmp_path / "parts", tiny, *common, *flags))
    assert not (tmp_path / "parts" / "out_text_document.bin").exists()
    merge_shards.main(["--output-prefix", str(tmp_path / "parts" / "out")])
    for ext in (".bin", ".idx", ".fingerprint.json"):
        single = (tmp_path / "one" / f"out_text_document{ext}").read_bytes()
        assert (tmp_path / "parts" / f"out_text_document{ext}").read_bytes() == single, ext
    assert len(IndexedDataset(str(tmp_path / "one" / "out_text_document"))) > 10


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard-index", "3", "--num-shards", "3"], "--shard-index 3 is out of range for --num-shards 3: use 0 to 2"),
        (["--num-shards", "0"], "--num-shards 0 must be at least 1"),
    ],
)  # fmt: skip
def test_bad_shard_flags_are_one_line(tmp_path, tiny, flags, message):
    vocab, merges = tiny
    _jsonl(tmp_path / "in.jsonl", TEXTS)
    before = sorted(os.listdir(tmp_path))
    done = _run_cli(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "o"),
                     "--vocab", vocab, "--merge-file", merges, *flags])  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}"
    assert sorted(os.listdir(tmp_path)) == before


def test_merge_rejects_parts_of_another_input(tmp_path, tiny):
    from gpt2_data import merge_shards

    _jsonl(tmp_path / "a.jsonl", TEXTS)
    _jsonl(tmp_path / "b.jsonl", TEXTS[:4])
    for k, name in enumerate(("a.jsonl", "b.jsonl")):
        flags = ["--input", str(tmp_path / name), "--shard-index", str(k), "--num-shards", "2"]
        preprocess_data.run(_args(tmp_path, tiny, *flags))
    with pytest.raises(
        UserError, match="part-0-of-2.idx has 18 documents but shard 0 of 2 should have 10"
    ):
        merge_shards.merge(str(tmp_path / "out_text_document"))
    assert not (tmp_path / "out_text_document.bin").exists()
