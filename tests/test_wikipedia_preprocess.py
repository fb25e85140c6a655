"""gpt2_data.wikipedia_preprocess on a tiny WikiExtractor tree: the pickle holds each long-enough
article's ids + one EOT, in a seeded order; TFRecords parsed by TensorFlow's protobuf and their
.index files agree with a plain framing parser; bytes do not depend on --workers."""

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from common.errors import UserError
from gpt2_data import tokenizer as gpt2_tokenizer
from gpt2_data import wikipedia_preprocess as wp
from tests.test_gpt2_tokenizer import TINY_MERGES, tiny_vocab_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["the", "other", "there's", "aaaa", "a", "x", "naïve", "12", ","]


def _tree(tmp_path, articles=24):
    """<tmp>/ex/{AA,AB}/wiki_0{0,1}: `articles` articles; returns {title: paragraphs}."""
    rng = np.random.default_rng(7)
    truth, blocks = {}, []
    for i in range(articles):
        paragraphs = [
            " ".join(rng.choice(WORDS, rng.integers(1, 25))) for _ in range(rng.integers(0, 4))
        ]
        truth[f"Title {i}"] = paragraphs
        body = "\n\n".join(paragraphs)
        blocks.append(
            f'<doc id="{i}" url="u?{i}" title="Title {i}">\nTitle {i}\n\n{body}\n</doc>\n'
        )
    quarter = articles // 4
    for k, (sub, name) in enumerate(
        [("AA", "wiki_00"), ("AA", "wiki_01"), ("AB", "wiki_00"), ("AB", "wiki_01")]
    ):
        os.makedirs(tmp_path / "ex" / sub, exist_ok=True)
        (tmp_path / "ex" / sub / name).write_text(
            "".join(blocks[k * quarter : (k + 1) * quarter]), encoding="utf-8"
        )
    return truth


def _argv(tmp_path, vocab, merges, out, *extra):
    return ["--input-file-path", str(tmp_path / "ex"), "--output-file-path", str(tmp_path / out),
            "--vocab-file", vocab, "--merge-file", merges, *extra]  # fmt: skip


def read_tfrecord(path):
    """[(offset, length, payload)] of a TFRecord file, by its framing (length, crc, data, crc)."""
    with open(path, "rb") as f:
        data, out, pos = f.read(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append((pos, n + 16, data[pos + 12 : pos + 12 + n]))
        pos += n + 16
    assert pos == len(data)
    return out


def expected_windows(article, length, stride):
    out, s = [], 0
    if len(article) < length:
        return [article] if len(article) >= max(length // 2, 2) else []
    while s + length <= len(article):
        out.append(article[s : s + length])
        s += stride
    if s - stride + length < len(article) and len(article) - s >= max(length // 2, 2):
        out.append(article[s:])
    return out


@pytest.fixture
def tiny(tmp_path):
    _, vocab, merges = tiny_vocab_files(tmp_path, TINY_MERGES)
    return vocab, merges


def test_pickle_and_tfrecords(tmp_path, tiny):
    import tensorflow as tf

    vocab, merges = tiny
    truth = _tree(tmp_path)
    tok = gpt2_tokenizer.load(vocab, merges)
    extra = ["--tfrecord", "--seq-length", "9", "--stride", "6", "--num-output", "3", "--seed", "3",
             "--min-length", "12", "--use-bpe"]  # fmt: skip
    stats = wp.run(wp.parse_args(_argv(tmp_path, *tiny, "one", *extra)))
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "gpt2_data", "wikipedia_preprocess.py"),
         *_argv(tmp_path, *tiny, "two", *extra), "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == sorted(os.listdir(tmp_path / "two")) and len(names) == 7
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()

    with open(tmp_path / "one" / wp.PKL_NAME, "rb") as f:
        articles = pickle.load(f)
    expected = [tok.encode(" ".join(p)) + [tok.eod] for p in truth.values()]
    long_enough = [e for e in expected if len(e) >= 12]
    assert sorted(articles) == sorted(long_enough) and stats["articles"] == len(long_enough)
    assert stats["dropped"] == len(expected) - len(long_enough) > 0
    assert all(a.count(tok.eod) == 1 for a in articles)
    assert articles != [e for e in expected if len(e) >= 12]  # shuffled...
    argv = _argv(tmp_path, *tiny, "seed4", "--seed", "4", "--min-length", "12")
    assert wp.run(wp.parse_args(argv))["records"] == 0
    with open(tmp_path / "seed4" / wp.PKL_NAME, "rb") as f:
        assert pickle.load(f) != articles  # ...by the seed

    windows = [w for a in articles for w in expected_windows(a, 9, 6)]
    assert stats["records"] == len(windows) > 30
    for i in range(3):
        records = read_tfrecord(tmp_path / "one" / f"data_{i}.tfrecord")
        index = (tmp_path / "one" / f"data_{i}.index").read_text().splitlines()
        assert index == [f"{offset} {length}" for offset, length, _ in records]
        got = [list(tf.train.Example.FromString(r).features.feature["input_ids"].int64_list.value)
               for _, _, r in records]  # fmt: skip
        assert got == windows[i::3]  # record k in file k mod 3
        assert {
            f for *_, r in records for f in tf.train.Example.FromString(r).features.feature
        } == {"input_ids"}


def test_missing_tree_and_bad_flags_are_user_errors(tmp_path, tiny):
    with pytest.raises(UserError, match="no WikiExtractor files"):
        wp.run(wp.parse_args(_argv(tmp_path, *tiny, "o")))
    _tree(tmp_path, 4)
    with pytest.raises(UserError, match="--stride must be at least 1"):
        wp.run(wp.parse_args(_argv(tmp_path, *tiny, "o", "--stride", "-1")))
    with pytest.raises(UserError, match="no article has --min-length 100000"):
        wp.run(wp.parse_args(_argv(tmp_path, *tiny, "o", "--min-length", "100000")))
    assert not os.path.exists(tmp_path / "o" / wp.PKL_NAME)
