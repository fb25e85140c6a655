"""Pretraining TFRecord schemas and a fast, TensorFlow-free writer.

Two layouts (REFERENCE_APP.md §4.3):
  * standard: Google BERT's 7 features;
  * remask ("static mask"): masked tokens first, with `input_position`, `mask_padding_index`,
    `seq_padding_index`, `masked_labels` (and the variable-length `masked_lm_positions`).

`encode_examples` serialises many `tf.train.Example`s at once with NumPy (protobuf wire format written
directly), and `frame_records` adds TFRecord framing (length, masked CRC32C). Importing TensorFlow costs
seconds per worker process, so the data tools never do; `tests/test_records.py` proves that TensorFlow parses
what is written here. `parse_spec` (which does import TensorFlow) is for readers.
"""

import struct

import google_crc32c
import numpy as np

STANDARD_FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)
REMASK_FEATURES = (
    "input_ids",
    "input_position",
    "segment_ids",
    "mask_padding_index",
    "seq_padding_index",
    "masked_lm_positions",
    "masked_labels",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


def feature_lengths(seq_length, mask_tokens, remask):
    """{name: fixed length} of each feature; None marks a variable-length feature."""
    if not remask:
        return {
            "input_ids": seq_length,
            "input_mask": seq_length,
            "segment_ids": seq_length,
            "masked_lm_positions": mask_tokens,
            "masked_lm_ids": mask_tokens,
            "masked_lm_weights": mask_tokens,
            "next_sentence_labels": 1,
        }
    return {
        "input_ids": seq_length,
        "input_position": seq_length,
        "segment_ids": seq_length,
        "mask_padding_index": 1,
        "seq_padding_index": 1,
        "masked_lm_positions": None,
        "masked_labels": mask_tokens,
        "masked_lm_ids": mask_tokens,
        "masked_lm_weights": mask_tokens,
        "next_sentence_labels": 1,
    }


FLOAT_FEATURES = frozenset({"masked_lm_weights"})


def parse_spec(seq_length, mask_tokens, remask):
    """`tf.io.parse_*example` feature spec for one layout (imports TensorFlow)."""
    import tensorflow as tf

    spec = {}
    for name, length in feature_lengths(seq_length, mask_tokens, remask).items():
        dtype = tf.float32 if name in FLOAT_FEATURES else tf.int64
        spec[name] = (
            tf.io.VarLenFeature(dtype) if length is None else tf.io.FixedLenFeature([length], dtype)
        )
    return spec


# ---------------------------------------------------------------------------------------------
# Protobuf wire format, vectorised over records.


def _unsigned(values):
    """The narrowest unsigned view that holds the values (less memory traffic than uint64)."""
    values = np.asarray(values)
    top = int(values.max()) if values.size else 0
    return values.astype(np.uint32 if top < 2**32 else np.uint64, copy=False), top


def _varint_sizes(values):
    """Bytes taken by each non-negative value as a protobuf varint."""
    v, top = _unsigned(values)
    sizes = np.ones(v.shape, np.int64)
    k = 1
    while k < 10 and top >= 1 << (7 * k):
        sizes += v >= v.dtype.type(1 << (7 * k))
        k += 1
    return sizes


def _varints(values):
    """Varint encoding of a 1-D array of non-negative ints: (flat uint8 bytes, size of each value)."""
    if values.size and values.min() < 0:
        raise ValueError("negative int64 features are not supported by this writer")
    v, top = _unsigned(values)
    v = v.reshape(-1)
    if top < 1 << 7:
        return v.astype(np.uint8), np.ones(v.shape, np.int64)
    width = 1
    while width < 10 and top >= 1 << (7 * width):
        width += 1
    sizes = _varint_sizes(v)
    # Byte k of each value: 7 bits, with the continuation bit when more bytes follow; then keep the
    # first `size` bytes of each row of the [n, width] table (row-major order = wire order).
    table = np.empty((v.size, width), np.uint8)
    for k in range(width):
        group = (v >> v.dtype.type(7 * k)) & v.dtype.type(0x7F)
        table[:, k] = group | ((sizes > k + 1) * 0x80).astype(v.dtype)
    return table[np.arange(width)[None, :] < sizes[:, None]], sizes


def _ragged_concat(segments, n):
    """Row-wise concatenation of ragged byte segments.

    Args:
      segments: list of (flat uint8 array, per-row lengths [n]) pairs; row r of the result is segment 0's
        row r, then segment 1's row r, and so on.
      n: number of rows.
    Returns:
      (flat uint8 buffer, per-row lengths [n]).
    """
    lengths = np.stack([lens for _, lens in segments], axis=1)  # [n, m]
    row_len = lengths.sum(axis=1)
    total = int(row_len.sum())
    index = np.int32 if total < 2**31 else np.int64  # half the memory traffic when it fits
    starts = (np.cumsum(lengths.reshape(-1)) - lengths.reshape(-1)).reshape(n, -1).astype(index)
    out = np.empty(total, np.uint8)
    for j, (flat, lens) in enumerate(segments):
        if flat.size == 0:
            continue
        # Destination of byte b of row r = starts[r, j] + b: shift each row's block as a whole.
        seg_starts = (np.cumsum(lens) - lens).astype(index)
        shift = np.repeat(starts[:, j] - seg_starts, lens)
        shift += np.arange(flat.size, dtype=index)
        out[shift] = flat
    return out, row_len


def _const(data, n):
    flat = np.frombuffer(bytes(data), np.uint8)
    return np.tile(flat, n), np.full(n, flat.size, np.int64)


def _sized(lengths):
    """Bytes of a length-delimited field whose content has `lengths` bytes: tag + varint + content."""
    return 1 + _varint_sizes(lengths) + lengths


def encode_examples(features, n):
    """Serialises `n` tf.train.Example protos.

    All nested message lengths are computed arithmetically first; then each record is one row-wise
    concatenation of small per-feature headers and the feature payloads (one pass over the payload bytes).

    Args:
      features: ordered list of (name, values, row_lengths) where values is a flat array (int64-able
        non-negative ints, or float32 for FLOAT_FEATURES) holding every row's values back to back, and
        row_lengths [n] the number of values in each row.
      n: number of records.
    Returns:
      (flat uint8 buffer of all serialised Examples, per-record byte lengths [n]).
    """
    headers, payloads, item_lengths = [], [], []
    for name, values, row_lengths in features:
        row_lengths = np.asarray(row_lengths, np.int64)
        if name in FLOAT_FEATURES:
            payload = (np.asarray(values, "<f4").view(np.uint8).reshape(-1), row_lengths * 4)
            list_tag = 0x12  # Feature.float_list
        else:
            flat, sizes = _varints(np.asarray(values))
            byte_ends = np.concatenate([[0], np.cumsum(sizes)])[np.cumsum(row_lengths)]
            payload = (flat, np.diff(np.concatenate([[0], byte_ends])))
            list_tag = 0x1A  # Feature.int64_list
        packed_len = payload[1]
        list_len = _sized(packed_len)  # XxxList { packed value = 1 }
        feature_len = _sized(list_len)  # Feature { xxx_list = 2|3 }
        key = name.encode()
        entry_len = 2 + len(key) + _sized(feature_len)  # map entry { key = 1, value = 2 }
        item_lengths.append(_sized(entry_len))  # Features { feature = 1 (repeated entry) }
        parts = [_const([0x0A], n), _varints(entry_len), _const(bytes([0x0A, len(key)]) + key, n)]
        parts += [_const([0x12], n), _varints(feature_len), _const([list_tag], n)]
        parts += [_varints(list_len), _const([0x0A], n), _varints(packed_len)]
        headers.append(_ragged_concat(parts, n))
        payloads.append(payload)
    features_len = np.sum(item_lengths, axis=0)
    segments = [_const([0x0A], n), _varints(features_len)]  # Example { features = 1 }
    for header, payload in zip(headers, payloads):
        segments += [header, payload]
    return _ragged_concat(segments, n)


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_records(buffer, lengths):
    """TFRecord framing of serialised records: returns (bytes, per-record framed lengths)."""
    view = buffer.tobytes() if isinstance(buffer, np.ndarray) else bytes(buffer)
    parts = []
    offset = 0
    pack_q, pack_i = struct.Struct("<Q").pack, struct.Struct("<I").pack
    for length in lengths.tolist():
        header = pack_q(length)
        data = view[offset : offset + length]
        parts += (header, pack_i(_masked_crc(header)), data, pack_i(_masked_crc(data)))
        offset += length
    return b"".join(parts), np.asarray(lengths, np.int64) + 16


def read_records(path):
    """Yields the raw records of a TFRecord file, checking both CRCs (no TensorFlow needed).

    Raises:
      ValueError naming the file and byte offset of a truncated or corrupt record.
    """
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {offset}")
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        if crc != _masked_crc(header):
            raise ValueError(f"{path}: corrupt record length at byte {offset}")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        record = data[start:end]
        (crc,) = struct.unpack("<I", data[end : end + 4])
        if crc != _masked_crc(record):
            raise ValueError(f"{path}: corrupt record data at byte {offset}")
        yield record
        offset = end + 4
