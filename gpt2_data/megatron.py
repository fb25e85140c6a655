"""Megatron-LM's indexed (`.bin`/`.idx`) token corpora, and GPT-2 training samples cut from them.

On-disk layout (REFERENCE_GPT2.md §5.6). A corpus is two files sharing a prefix:

* `<prefix>.bin` holds nothing but token ids: every sequence's ids one after another, each id in
  the corpus dtype, native little-endian, no header and no separators.
* `<prefix>.idx` is little-endian and starts with a 34-byte header:
    bytes 0-8    the 9 magic bytes `MMIDIDX` followed by two zero bytes;
    bytes 9-16   the format version as an unsigned 64-bit integer, always 1;
    byte  17     a one-byte code for the token dtype (`DTYPE_CODES`);
    bytes 18-25  the number of sequences, n, unsigned 64-bit;
    bytes 26-33  the number of document boundaries, m, unsigned 64-bit.
  Three arrays follow, with no padding between them: n int32 sequence lengths (in tokens); n
  int64 byte offsets of each sequence in `.bin` (a running sum of length x itemsize, starting at
  0); m int64 document boundaries, the sequence index where each document starts, beginning with
  0 and ending with n (so documents = m - 1). Megatron's preprocessing stores one sequence per
  JSON document and, with `--append-eod`, ends each with the EOD id (50256 for GPT-2); its
  writer uses uint16 when the vocabulary has fewer than 65500 ids.

GPT samples (§5.7, without the reference's bugs of §12): like Megatron's GPTDataset, each sequence
counts as a document. Epoch e is a permutation of the documents drawn from (seed, e) alone, so an
epoch's order does not depend on how many epochs are built. The epochs' documents, concatenated as
stored (EOD ids included; nothing is inserted), form one token stream; sample j is the stream's
tokens [j*seq_len, j*seq_len + seq_len], so consecutive samples share one token and samples cross
documents and epochs freely. Just enough epochs are built for `num_samples` samples (which is
honoured, unlike the reference), and the samples are then shuffled with the seed. Sample starts are
found by binary search in the stream's cumulative document ends rather than stored, so memory is
one int64 per (epoch, document) plus the shuffle. Sample k of the shuffled order is a pure function
of k, which makes a training position a plain counter: resuming at k is exact.
"""

import os
import struct

import numpy as np

from common.errors import UserError
from common.fileio import atomic_outputs, ensure_output_dir

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, doc_idx entries
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float64,
    8: np.uint16,
}
_INT_CODES = {np.dtype(t): code for code, t in DTYPE_CODES.items() if code not in (6, 7)}


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError as err:
        raise UserError(f"cannot read Megatron corpus file {path}: {err.strerror}") from None


class IndexedDataset:
    """A memory-mapped Megatron corpus: `len(ds)` sequences, `ds[i]` the ids of sequence i.

    Nothing is read up front beyond the header; `ds[i]` is a zero-copy view into `.bin`.

    Attributes:
      dtype: numpy dtype of the token ids.
      sizes: int32 [n] tokens per sequence (a view into `.idx`).
      pointers: int64 [n] byte offset of each sequence in `.bin`.
      doc_idx: int64 [m] first sequence of each document, then n.
      tokens: [total tokens] every id of `.bin`, in the corpus dtype.
    Raises:
      UserError: a missing file, bad magic or version, unknown dtype code, a truncated `.idx` or
        `.bin`, or sequences that run past the end of `.bin`.
    """

    def __init__(self, prefix):
        idx_path, bin_path = f"{prefix}.idx", f"{prefix}.bin"
        idx_size, bin_size = _file_size(idx_path), _file_size(bin_path)
        if idx_size < HEADER.size:
            raise UserError(f"{idx_path} is truncated: {idx_size} bytes, less than the header")
        with open(idx_path, "rb") as f:
            magic, version, code, n, m = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC:
            raise UserError(f"{idx_path} is not a Megatron index: magic {magic!r}, not {MAGIC!r}")
        if version != VERSION:
            raise UserError(f"{idx_path} has format version {version}; only {VERSION} is known")
        if code not in DTYPE_CODES:
            raise UserError(f"{idx_path} has unknown dtype code {code} (known: 1-8)")
        self.dtype = np.dtype(DTYPE_CODES[code]).newbyteorder("<")
        expected = HEADER.size + 12 * n + 8 * m
        if idx_size != expected:
            what = "truncated" if idx_size < expected else "longer than its header says"
            raise UserError(f"{idx_path} is {what}: {idx_size} bytes, expected {expected}")
        index = np.memmap(idx_path, np.uint8, mode="r")
        self.sizes = index[HEADER.size :][: 4 * n].view("<i4")
        self.pointers = index[HEADER.size + 4 * n :][: 8 * n].view("<i8")
        self.doc_idx = index[HEADER.size + 12 * n :].view("<i8")
        item = self.dtype.itemsize
        if bin_size % item:
            raise UserError(f"{bin_path} is truncated: {bin_size} bytes, not whole {self.dtype}")
        self.tokens = (
            np.memmap(bin_path, self.dtype, mode="r") if bin_size else np.empty(0, self.dtype)
        )
        ends = self.pointers + self.sizes.astype(np.int64) * item
        bad = (self.sizes < 0) | (self.pointers < 0) | (self.pointers % item != 0)
        bad |= ends > bin_size
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(
                f"{idx_path}: sequence {i} ({int(self.sizes[i])} tokens at byte "
                f"{int(self.pointers[i])}) runs past the end of {bin_path} ({bin_size} bytes)"
            )
        if m and (
            self.doc_idx[0] != 0 or self.doc_idx[-1] != n or np.any(np.diff(self.doc_idx) < 0)
        ):
            raise UserError(f"{idx_path}: document index is not ascending from 0 to {n}")
        self._starts = self.pointers // item

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        """The ids of sequence i (negative i counts from the end), a read-only view into `.bin`."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        start = self._starts[i]
        return self.tokens[start : start + self.sizes[i]]


class IndexWriter:
    """Appends sequences to an open `.bin` file and writes the matching `.idx` at the end.

    One sequence per document, as Megatron's preprocessing writes them (doc_idx = 0, 1, ..., n).
    Memory: one size per sequence.

    Args:
      bin_file, idx_file: binary files open for writing (e.g. from `atomic_outputs`).
      dtype: integer token dtype (uint8, int8, int16, int32, int64 or uint16).
    """

    def __init__(self, bin_file, idx_file, dtype=np.uint16):
        dtype = np.dtype(dtype)
        if dtype not in _INT_CODES:
            raise ValueError(
                f"token dtype must be one of {sorted(map(str, _INT_CODES))}, not {dtype}"
            )
        self.bin_file, self.idx_file, self.dtype = bin_file, idx_file, dtype
        self.sizes = []

    def add(self, ids, name=None):
        """Appends one sequence (1-D integer ids); `name` (default "document i") says where in
        a UserError for ids that are not 1-D integers or do not fit the dtype."""
        ids = np.asarray(ids)
        name = name or f"document {len(self.sizes)}"
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise UserError(f"{name} is not a 1-D sequence of integer ids")
        limits = np.iinfo(self.dtype)
        if ids.size and (ids.min() < limits.min or ids.max() > limits.max):
            raise UserError(f"{name} has ids outside {self.dtype} [{limits.min}, {limits.max}]")
        self.bin_file.write(ids.astype(self.dtype.newbyteorder("<")).tobytes())
        self.sizes.append(ids.size)

    def finish(self):
        """Writes the `.idx`; returns the number of sequences."""
        n = len(self.sizes)
        sizes = np.asarray(self.sizes, np.int64)
        pointers = np.concatenate([[0], np.cumsum(sizes * self.dtype.itemsize)[:-1]]).astype("<i8")
        self.idx_file.write(HEADER.pack(MAGIC, VERSION, _INT_CODES[self.dtype], n, n + 1))
        self.idx_file.write(sizes.astype("<i4").tobytes())
        self.idx_file.write(pointers[:n].tobytes())
        self.idx_file.write(np.arange(n + 1, dtype="<i8").tobytes())
        return n


def write_indexed_dataset(prefix, documents, dtype=np.uint16):
    """Writes `<prefix>.bin` and `<prefix>.idx`, one sequence per document, atomically.

    Args:
      prefix: output path without extension; its directory is created.
      documents: iterable of 1-D integer sequences (append EOD yourself, as `--append-eod` does).
      dtype: integer token dtype (uint8, int8, int16, int32, int64 or uint16).
    Returns:
      the number of documents written.
    Raises:
      UserError: an id that does not fit `dtype`, or an unwritable directory.
    """
    ensure_output_dir(prefix)
    with atomic_outputs([f"{prefix}.bin", f"{prefix}.idx"]) as (bin_file, idx_file):
        writer = IndexWriter(bin_file, idx_file, dtype)
        for doc in documents:
            writer.add(doc)
        return writer.finish()


class GPTSamples:
    """Seeded, epoch-aware GPT samples of `seq_len + 1` ids from an IndexedDataset (see above).

    Args:
      dataset: an IndexedDataset.
      seq_len: model positions per sample; each sample has seq_len + 1 ids.
      num_samples: samples wanted; None = those that fit in one epoch, (tokens - 1) // seq_len.
      seed: non-negative int for the document and sample shuffles.
      documents: sequence indices to use (e.g. a train split); None = all.
    Attributes:
      num_epochs: epochs built. doc_idx: int32 [num_epochs * documents], the stream's documents.
      shuffle_idx: [num_samples] stream sample number of each shuffled sample.
    """

    def __init__(self, dataset, seq_len, num_samples=None, seed=0, documents=None):
        if seq_len < 1 or seed < 0 or (num_samples is not None and num_samples < 1):
            raise UserError(
                f"need seq_len >= 1, seed >= 0 and num_samples >= 1 (or None), not "
                f"{seq_len}, {seed} and {num_samples}"
            )
        self.dataset, self.seq_len, self.seed = dataset, int(seq_len), int(seed)
        docs = np.arange(len(dataset)) if documents is None else np.asarray(documents, np.int64)
        tokens_per_epoch = int(np.sum(dataset.sizes[docs], dtype=np.int64))
        if tokens_per_epoch < 2:
            raise UserError(f"the corpus has {tokens_per_epoch} tokens; a sample needs at least 2")
        if num_samples is None:
            num_samples = max(1, (tokens_per_epoch - 1) // self.seq_len)
        self.num_samples = int(num_samples)
        # The last sample ends at stream token num_samples * seq_len, which must exist.
        self.num_epochs = -(-(self.num_samples * self.seq_len + 1) // tokens_per_epoch)
        self.doc_idx = np.concatenate(
            [self.epoch_order(docs, e) for e in range(self.num_epochs)]
        ).astype(np.int32)
        self._ends = np.cumsum(dataset.sizes[self.doc_idx], dtype=np.int64)
        order = np.random.default_rng([self.seed, 1]).permutation(self.num_samples)
        self.shuffle_idx = order.astype(np.uint32 if self.num_samples < 2**32 else np.int64)

    def epoch_order(self, docs, epoch):
        """The documents of `epoch`, permuted by (seed, epoch) alone."""
        return np.random.default_rng([self.seed, 0, epoch]).permutation(docs)

    def __len__(self):
        return self.num_samples

    def locate(self, j):
        """(position in doc_idx, token offset in that document) where stream sample j starts."""
        start = j * self.seq_len
        pos = int(np.searchsorted(self._ends, start, side="right"))
        begin = self._ends[pos] - self.dataset.sizes[self.doc_idx[pos]]
        return pos, int(start - begin)

    def __getitem__(self, k):
        """int32 [seq_len + 1]: sample k of the shuffled order, read from the memory map."""
        if not 0 <= k < self.num_samples:
            raise IndexError(f"sample {k} out of range for {self.num_samples} samples")
        pos, offset = self.locate(int(self.shuffle_idx[k]))
        out = np.empty(self.seq_len + 1, np.int32)
        filled = 0
        while filled < len(out):
            ids = self.dataset[int(self.doc_idx[pos])][offset:]
            take = min(len(ids), len(out) - filled)
            out[filled : filled + take] = ids[:take]
            filled, pos, offset = filled + take, pos + 1, 0
        return out

    def batch(self, ks):
        """int32 [len(ks), seq_len + 1]: samples ks."""
        return (
            np.stack([self[int(k)] for k in ks])
            if len(ks)
            else np.empty((0, self.seq_len + 1), np.int32)
        )


def gpt_tf_dataset(samples, batch_size, start=0, drop_remainder=True):
    """tf.data of int32 [batch_size, seq_len + 1] batches of samples start, start + 1, ...

    The stream is `Dataset.range(start, len(samples))`, so a position is a sample counter: a
    checkpointed iterator, or `start = steps_done * batch_size`, continues the same stream. Inputs
    are tokens[:, :-1] and targets tokens[:, 1:].
    """
    import tensorflow as tf

    width = samples.seq_len + 1

    def fetch(ks):
        return samples.batch(ks)

    def load(ks):
        tokens = tf.numpy_function(fetch, [ks], tf.int32, stateful=False)
        return tf.ensure_shape(tokens, [batch_size if drop_remainder else None, width])

    ds = tf.data.Dataset.range(start, len(samples)).batch(batch_size, drop_remainder)
    return ds.map(load).prefetch(tf.data.AUTOTUNE)
