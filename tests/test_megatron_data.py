"""gpt2_data.megatron: the .bin/.idx layout pinned by hand-built bytes, reader errors, GPT samples
against a materialised reference stream, and the resumable tf.data pipeline."""

import os
import pathlib
import re
import struct

import numpy as np
import pytest

from common.errors import UserError
from gpt2_data.megatron import GPTSamples, IndexedDataset, gpt_tf_dataset, write_indexed_dataset

EOD = 50256


def _corpus(sizes, start=1):
    """Documents of the given lengths; ids are a running counter, and each ends with EOD."""
    docs, next_id = [], start
    for size in sizes:
        docs.append(list(range(next_id, next_id + size - 1)) + [EOD])
        next_id += size - 1
    return docs


@pytest.fixture
def corpus(tmp_path):
    docs = _corpus([5, 3, 9, 1, 6, 4, 2])  # 30 tokens, 7 documents
    prefix = str(tmp_path / "c_text_document")
    write_indexed_dataset(prefix, docs, np.uint16)
    return prefix, docs


def test_writer_bytes_match_the_documented_layout(tmp_path):
    prefix = str(tmp_path / "two")
    write_indexed_dataset(prefix, [[7, 50256], [1, 2, 3]], np.uint16)
    idx = b"MMIDIDX\x00\x00"  # magic
    idx += (1).to_bytes(8, "little")  # version
    idx += bytes([8])  # dtype code: uint16
    idx += (2).to_bytes(8, "little") + (3).to_bytes(8, "little")  # sequences, doc_idx entries
    idx += (2).to_bytes(4, "little") + (3).to_bytes(4, "little")  # sizes, int32
    idx += (0).to_bytes(8, "little") + (4).to_bytes(8, "little")  # byte pointers, int64
    idx += b"".join(i.to_bytes(8, "little") for i in (0, 1, 2))  # doc_idx, int64
    binary = b"".join(i.to_bytes(2, "little") for i in (7, 50256, 1, 2, 3))
    assert pathlib.Path(prefix + ".idx").read_bytes() == idx
    assert pathlib.Path(prefix + ".bin").read_bytes() == binary
    assert not [name for name in os.listdir(tmp_path) if "tmp" in name]
    # The hand-built bytes (an independent writer) read back as those documents.
    pathlib.Path(tmp_path / "hand.idx").write_bytes(idx)
    pathlib.Path(tmp_path / "hand.bin").write_bytes(binary)
    hand = IndexedDataset(str(tmp_path / "hand"))
    assert [hand[i].tolist() for i in range(len(hand))] == [[7, 50256], [1, 2, 3]]
    assert hand.doc_idx.tolist() == [0, 1, 2] and hand.dtype == np.uint16


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_round_trip_is_a_zero_copy_view(tmp_path, dtype):
    docs = [[3, 1, 4], [], [1, 5, 9, 2, 6], [5]]
    prefix = str(tmp_path / "rt")
    assert write_indexed_dataset(prefix, docs, dtype) == 4
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype) and len(ds) == 4
    assert [ds[i].tolist() for i in range(4)] == docs and ds[-1].tolist() == [5]
    assert ds.sizes.tolist() == [3, 0, 5, 1] and ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert np.shares_memory(ds[2], ds.tokens) and not ds[2].flags.writeable
    with pytest.raises(IndexError):
        ds[4]


def _header(n=1, m=2, code=8, magic=b"MMIDIDX\x00\x00", version=1):
    return struct.pack("<9sQBQQ", magic, version, code, n, m)


@pytest.mark.parametrize(
    "idx, binary, message",
    [
        (b"MMID", b"", "is truncated: 4 bytes"),
        (_header(magic=b"NOTMAGIC\x00"), b"", "is not a Megatron index"),
        (_header(version=2), b"", "format version 2"),
        (_header(code=9), b"", "unknown dtype code 9"),
        (_header() + struct.pack("<iq", 2, 0), b"\0" * 4, "truncated: 46 bytes, expected 62"),
        (
            _header() + struct.pack("<iqqq", 3, 0, 0, 1),
            b"\0" * 4,
            "sequence 0 (3 tokens at byte 0)",
        ),
        (_header() + struct.pack("<iqqq", 2, 0, 0, 1), b"\0" * 3, "not whole uint16"),
        (_header() + struct.pack("<iqqq", 2, 0, 1, 0), b"\0" * 4, "not ascending"),
    ],
)
def test_bad_files_are_one_line_user_errors(tmp_path, idx, binary, message):
    prefix = str(tmp_path / "bad")
    pathlib.Path(prefix + ".idx").write_bytes(idx)
    pathlib.Path(prefix + ".bin").write_bytes(binary)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        IndexedDataset(prefix)
    assert "\n" not in str(err.value) and re.search(r"/bad\.(idx|bin)\b", str(err.value))


def test_missing_file_names_it(corpus):
    prefix, _ = corpus
    os.remove(prefix + ".bin")
    with pytest.raises(UserError, match=r"c_text_document\.bin: No such file"):
        IndexedDataset(prefix)


def test_writer_rejects_ids_outside_the_dtype(tmp_path):
    with pytest.raises(UserError, match="document 1 has ids outside uint8"):
        write_indexed_dataset(str(tmp_path / "x"), [[1], [256]], np.uint8)
    assert os.listdir(tmp_path) == []


def _stream(ds, samples):
    """The reference: every built epoch's documents materialised and concatenated."""
    return np.concatenate([ds[int(d)] for d in samples.doc_idx]).astype(np.int32)


def _in_stream_order(samples):
    out = np.empty((len(samples), samples.seq_len + 1), np.int32)
    out[samples.shuffle_idx.astype(np.int64)] = samples.batch(range(len(samples)))
    return out


def test_one_epoch_covers_every_token_once_except_the_overlaps(corpus):
    prefix, docs = corpus
    ds = IndexedDataset(prefix)
    samples = GPTSamples(ds, seq_len=7, seed=3)  # (30 - 1) // 7 = 4 samples, 29 tokens used
    assert len(samples) == 4 and samples.num_epochs == 1
    rows = _in_stream_order(samples)
    assert all(rows[i, -1] == rows[i + 1, 0] for i in range(3))  # the one-token overlaps
    joined = np.concatenate([rows[0], *[r[1:] for r in rows[1:]]])
    stream = _stream(ds, samples)
    assert joined.tolist() == stream[:29].tolist()
    # 29 of the epoch's 30 tokens, each exactly once; the 30th starts the next epoch's samples.
    every = sorted(t for d in docs for t in d)
    assert sorted(joined.tolist() + [int(stream[29])]) == every


def test_many_epochs_match_the_materialised_stream(corpus):
    prefix, docs = corpus
    ds = IndexedDataset(prefix)
    samples = GPTSamples(ds, seq_len=5, num_samples=13, seed=11)  # needs 66 tokens: 3 epochs
    assert samples.num_epochs == 3 and len(samples.doc_idx) == 21
    stream = _stream(ds, samples)
    expected = np.stack([stream[j * 5 : j * 5 + 6] for j in range(13)])
    assert _in_stream_order(samples).tolist() == expected.tolist()
    epochs = samples.doc_idx.reshape(3, 7)
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0].tolist() != epochs[1].tolist()  # epoch 2 reorders the documents
    # An epoch's order is fixed by (seed, epoch), not by how many epochs are built.
    assert GPTSamples(ds, 5, 2, seed=11).doc_idx.tolist() == epochs[0].tolist()


def test_seed_fixes_the_samples_and_another_seed_reorders_them(corpus):
    ds = IndexedDataset(corpus[0])
    a, b, c = (GPTSamples(ds, 4, 11, seed=s) for s in (5, 5, 6))
    assert a.batch(range(11)).tolist() == b.batch(range(11)).tolist()
    assert a.shuffle_idx.tolist() != c.shuffle_idx.tolist()
    assert a.batch(range(11)).tolist() != c.batch(range(11)).tolist()


def test_a_sample_spanning_two_documents_holds_the_eod_between_them(tmp_path):
    prefix = str(tmp_path / "span")
    write_indexed_dataset(prefix, [[11, 12, EOD], [21, 22, 23, EOD]], np.uint16)
    samples = GPTSamples(IndexedDataset(prefix), seq_len=4, seed=0)  # 1 sample, 5 of 7 tokens
    first, second = ([11, 12, EOD], [21, 22, 23, EOD])
    if samples.doc_idx[0] == 1:
        first, second = second, first
    assert samples[0].tolist() == (first + second)[:5] and EOD in samples[0].tolist()[:-1]
    assert samples[0].dtype == np.int32


def test_a_subset_of_documents_is_all_the_stream_holds(corpus):
    ds = IndexedDataset(corpus[0])
    samples = GPTSamples(ds, 3, 9, seed=2, documents=[1, 3, 6])  # 3 + 1 + 2 = 6 tokens an epoch
    assert set(samples.doc_idx.tolist()) == {1, 3, 6} and samples.num_epochs == 5
    assert set(_stream(ds, samples).tolist()) == {5, 6, 23, EOD}  # [5, 6, EOD], [EOD], [23, EOD]


def test_bad_sample_settings_are_user_errors(tmp_path):
    prefix = str(tmp_path / "one")
    write_indexed_dataset(prefix, [[EOD]], np.uint16)
    with pytest.raises(UserError, match="1 tokens; a sample needs at least 2"):
        GPTSamples(IndexedDataset(prefix), 4)
    with pytest.raises(UserError, match="seq_len >= 1"):
        GPTSamples(IndexedDataset(prefix), 0)


def test_tf_stream_resumed_at_k_is_the_tail_of_the_full_stream(corpus):
    import tensorflow as tf

    samples = GPTSamples(IndexedDataset(corpus[0]), seq_len=3, num_samples=17, seed=4)
    full = [b.numpy().tolist() for b in gpt_tf_dataset(samples, batch_size=2)]
    assert len(full) == 8 and np.array(full).shape == (8, 2, 4)
    assert np.array(full).reshape(16, 4).tolist() == samples.batch(range(16)).tolist()
    resumed = [b.numpy().tolist() for b in gpt_tf_dataset(samples, 2, start=6)]
    assert resumed == full[3:]
    # A checkpointed iterator continues where it stopped.
    it = iter(gpt_tf_dataset(samples, 2))
    next(it), next(it)
    ckpt = tf.train.Checkpoint(it=it)
    path = ckpt.write(str(corpus[0]) + "_ckpt")
    next(it)
    ckpt.read(path)
    assert [b.numpy().tolist() for b in it] == full[2:]
    tail = list(gpt_tf_dataset(samples, 2, start=15, drop_remainder=False))
    assert [b.numpy().tolist() for b in tail] == [samples.batch([15, 16]).tolist()]
