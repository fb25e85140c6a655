"""gpt2_data.readers: pickle windows against a plain loop over the documented rule, TFRecords written
by TensorFlow itself, text blocks against the concatenated ids, and one-line errors."""

import os
import pickle

import numpy as np
import pytest

from common.errors import UserError
from gpt2_data import readers
from gpt2_data import tokenizer as gpt2_tokenizer
from tests.test_gpt2_tokenizer import TINY_MERGES, tiny_vocab_files


def expected_pickle_samples(articles, max_len, stride):
    """The rule of pickle_samples, spelled out with a while loop."""
    width, out = max_len + 1, []
    for article in articles:
        n = len(article)
        if n < width:
            if n >= max(max_len // 2, 2):
                out.append(list(article))
            continue
        s = 0
        while s + width <= n:
            out.append(list(article[s : s + width]))
            s += stride
        if s - stride + width < n:
            out.append(list(article[n - width :]))
    return out


@pytest.mark.parametrize("max_len, stride", [(4, 3), (4, 5), (7, 7), (1, 1), (6, 2)])
def test_pickle_samples_follow_the_rule(tmp_path, max_len, stride):
    rng = np.random.default_rng(max_len * 10 + stride)
    articles = [rng.integers(0, 50257, n).tolist() for n in (0, 1, 2, 3, 5, 8, 11, 12, 13, 30)]
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(articles))
    got = readers.pickle_samples(str(path), max_len, stride)
    assert [s.tolist() for s in got] == expected_pickle_samples(articles, max_len, stride)
    assert all(s.dtype == np.int32 and len(s) <= max_len + 1 for s in got)


def test_short_article_is_kept_whole_not_its_last_ids(tmp_path):
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps([[5, 6, 7, 8, 9, 10], [1, 2]]))
    samples = readers.pickle_samples(str(path), max_len=8, stride=8)
    assert [s.tolist() for s in samples] == [[5, 6, 7, 8, 9, 10]]  # the reference kept [10, ...]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not a pickle", "is not a readable pickle"),
        (pickle.dumps({"a": [1]}), "holds a dict, not a list"),
        (pickle.dumps([[1, 2], ["x"]]), "article 1 is not a list of non-negative int"),
        (pickle.dumps([[1, -2]]), "article 0 is not a list of non-negative int"),
    ],
)
def test_bad_pickles_are_one_line_errors(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=message) as err:
        readers.pickle_samples(str(path), 4, 4)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot read pickle dataset"):
        readers.pickle_samples(str(tmp_path / "missing.pkl"), 4, 4)


def _write_records(path, rows):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = {"input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=row))}
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )


def test_tfrecord_files_expand_sorted_and_name_a_missing_pattern(tmp_path):
    for name in ("b.tfrecord", "a.tfrecord", "c.other"):
        (tmp_path / name).write_bytes(b"")
    both = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    assert readers.tfrecord_files(str(tmp_path / "*.tfrecord")) == both
    assert readers.tfrecord_files(f"{tmp_path}/b.tfrecord,{tmp_path}/*.tfrecord") == both[::-1]
    assert readers.tfrecord_files([str(tmp_path / "c.other"), both[0]])[1] == both[0]
    with pytest.raises(UserError, match=r"--input-files .*/x\*\.tfrecord matches no file"):
        readers.tfrecord_files([both[0], str(tmp_path / "x*.tfrecord")])


def test_tfrecord_dataset_pads_masks_and_truncates_in_file_order(tmp_path):
    rows_a = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    rows_b = [[10, 11, 12, 13, 14, 15, 16, 17, 18], [50256]]
    _write_records(tmp_path / "a.tfrecord", rows_a)
    _write_records(tmp_path / "b.tfrecord", rows_b)
    files = readers.tfrecord_files(str(tmp_path / "*.tfrecord"))
    ds = readers.tfrecord_dataset(files, max_len=5)
    got = [{k: v.numpy().tolist() for k, v in ex.items()} for ex in ds]
    width = 6
    for ex, row in zip(got, rows_a + rows_b, strict=True):
        kept = row[:width]
        assert ex["input_ids"] == kept + [0] * (width - len(kept))
        assert ex["mask"] == [1] * len(kept) + [0] * (width - len(kept))
    assert (
        ds.element_spec["input_ids"].shape == (6,) and ds.element_spec["mask"].dtype.name == "int32"
    )


def test_text_blocks_overlap_by_one_and_cover_the_ids(tmp_path):
    _, vocab, merges = tiny_vocab_files(tmp_path, TINY_MERGES)
    tok = gpt2_tokenizer.load(vocab, merges)
    texts = ["the other there's aaaaaaa\n\nsecond line  ", "Ça coûte 12€ — naïve\n"]
    for i, text in enumerate(texts):
        (tmp_path / f"t{i}.txt").write_text(text, encoding="utf-8")
    ids = tok.encode(texts[0]) + tok.encode(texts[1])
    block = 4
    blocks = readers.text_blocks(str(tmp_path / "t*.txt"), tok, block)
    n = (len(ids) - 1) // block
    assert blocks.shape == (n, block + 1) and blocks.dtype == np.int32 and n >= 5
    assert all(blocks[i, -1] == blocks[i + 1, 0] for i in range(n - 1))
    joined = [blocks[0, 0]] + blocks[:, 1:].reshape(-1).tolist()  # every target once
    assert joined == ids[: n * block + 1]
    with pytest.raises(UserError, match="fewer than one block of 1000"):
        readers.text_blocks([str(tmp_path / "t1.txt")], tok, 999)
    with pytest.raises(UserError, match="matches no file"):
        readers.text_blocks(os.path.join(tmp_path, "none*.txt"), tok, 4)
