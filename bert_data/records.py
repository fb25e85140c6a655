"""Pretraining TFRecord schemas and a fast, TensorFlow-free writer.

Three layouts (the first two: REFERENCE_APP.md §4.3):
  * standard: Google BERT's 7 features;
  * remask ("static mask"): masked tokens first, with `input_position`, `mask_padding_index`,
    `seq_padding_index`, `masked_labels` (and the variable-length `masked_lm_positions`);
  * packed (`create_pretraining_data.py --packing`): up to K standard instances in one row,
    below.

Packed layout. S = sequence length, P = mask tokens per sequence (`--mask-tokens`), K = most
sequences per row (`--max-sequences-per-pack`). A row holds k <= K whole instances, each exactly
as the unpacked run writes it ([CLS] A [SEP] B [SEP], its own masks and NSP label), back to back
from position 0, then padding. All features are fixed-length; ints are int64, weights float32:

  input_ids [S]               token ids (masked tokens replaced), 0 on padding
  input_mask [S]              1 on the tokens of any sequence, 0 on padding
  segment_ids [S]             each sequence's own 0/1 (A / B), 0 on padding
  sequence_ids [S]            1..k: which sequence the token belongs to, 0 on padding
  positions [S]               position of the token within its sequence (0 at its [CLS]), 0 on
                              padding: use these, not 0..S-1, for the position embeddings
  masked_lm_positions [K*P]   index in the row (not in the sequence) of each masked token; the
                              predictions of sequence 1, then of sequence 2, ... each ascending;
                              then 0 for unused slots. A sequence has at most P predictions, so
                              K*P slots always suffice.
  masked_lm_ids [K*P]         original token ids, 0 for unused slots
  masked_lm_weights [K*P]     1.0 for real predictions, 0.0 for unused slots
  masked_lm_sequence_ids [K*P]  sequence (1..k) of each prediction, 0 for unused slots
  next_sentence_labels [K]    NSP label of sequence i at index i-1 (1 = random next), 0 beyond k
  next_sentence_weights [K]   1.0 for the k sequences, 0.0 beyond
  cls_positions [K]           index in the row of sequence i's [CLS] at index i-1, 0 beyond k

A model without cross-contamination lets token t attend to token u only when
sequence_ids[t] == sequence_ids[u] != 0, takes position embeddings from `positions`, gathers
the MLM inputs at masked_lm_positions (loss weighted by masked_lm_weights) and the NSP inputs at
cls_positions (loss weighted by next_sentence_weights). `unpack` turns a row back into the
standard instances it holds.

`encode_records` serialises many `tf.train.Example`s at once with NumPy (protobuf wire format written
directly) and frames them as TFRecords (length, masked CRC32C). Importing TensorFlow costs
seconds per worker process, so the data tools never do; tests/test_create_pretraining_data.py proves that
the bytes equal a plain protobuf encoding and that TensorFlow parses them. `parse_spec` (which does import
TensorFlow) is for readers.
"""

import functools
import os
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
PACKED_FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "sequence_ids",
    "positions",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "masked_lm_sequence_ids",
    "next_sentence_labels",
    "next_sentence_weights",
    "cls_positions",
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


def feature_lengths(seq_length, mask_tokens, remask, sequences_per_pack=None):
    """{name: fixed length} of each feature; None marks a variable-length feature.

    `sequences_per_pack` K selects the packed layout (not with remask)."""
    if sequences_per_pack:
        per_token = ("input_ids", "input_mask", "segment_ids", "sequence_ids", "positions")
        per_sequence = ("next_sentence_labels", "next_sentence_weights", "cls_positions")
        return {
            name: seq_length
            if name in per_token
            else sequences_per_pack
            if name in per_sequence
            else sequences_per_pack * mask_tokens
            for name in PACKED_FEATURES
        }
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


FLOAT_FEATURES = frozenset({"masked_lm_weights", "next_sentence_weights"})


def parse_spec(seq_length, mask_tokens, remask, sequences_per_pack=None):
    """`tf.io.parse_*example` feature spec for one layout (imports TensorFlow)."""
    import tensorflow as tf

    spec = {}
    lengths = feature_lengths(seq_length, mask_tokens, remask, sequences_per_pack)
    for name, length in lengths.items():
        dtype = tf.float32 if name in FLOAT_FEATURES else tf.int64
        spec[name] = (
            tf.io.VarLenFeature(dtype) if length is None else tf.io.FixedLenFeature([length], dtype)
        )
    return spec


# ---------------------------------------------------------------------------------------------
# Protobuf wire format and TFRecord framing, vectorised over records.
#
# A record is built as a row of byte columns: each piece (constant header bytes, varints, float bytes) is a
# uint8 matrix [n, c] with an optional "keep" mask [n, c] (varints and variable-length rows use fewer bytes
# than their column count). The rows of all pieces side by side, with the unkept bytes dropped, are the
# records back to back: one compression writes every byte once.


def _const(data, n):
    """Constant bytes in every row: (read-only view [n, len(data)], keep None)."""
    return np.broadcast_to(np.frombuffer(bytes(data), np.uint8), (n, len(data))), None


def _varint_columns(values, row_lengths=None):
    """Protobuf varints of a matrix of non-negative ints, row by row.

    Args:
      values: int array [n, w].
      row_lengths: None (every row has w values) or int [n]: row r holds values[r, :row_lengths[r]].
    Returns:
      (bytes uint8 [n, w * width], keep bool [n, w * width] or None when every byte is kept,
      byte count of each row int64 [n]); width (bytes per value) is at least the most any value needs.
    """
    values = np.asarray(values)
    n, w = values.shape
    if values.size and values.min() < 0:
        raise ValueError("negative int64 features are not supported by this writer")
    top = int(values.max()) if values.size else 0
    width = 1
    while width < 10 and top >> (7 * width):
        width += 1
    in_row = None if row_lengths is None else np.arange(w) < np.asarray(row_lengths)[:, None]
    if width == 1:
        data = values.view(np.uint8) if values.dtype == bool else values.astype(np.uint8)
        counts = np.full(n, w, np.int64) if in_row is None else in_row.sum(axis=1)
        return data, in_row, counts
    if top < _TABLE_LIMIT:
        table, present = _varint_table(top)
        # 4 byte columns per value (the unused ones are not kept): gathering 4-byte items is fast.
        width = 4
        data = table.take(values).view(np.uint8).reshape(n, w, width)
        present = present.take(values).view(bool).reshape(n, w, width)
    else:
        data, present = _varint_bytes(values.astype(np.uint64), width)
    if in_row is not None:
        present = present & in_row[:, :, None]
    keep = present.reshape(n, w * width)
    return data.reshape(n, w * width), keep, keep.view(np.uint8).sum(axis=1, dtype=np.int64)


_TABLE_LIMIT = 1 << 21  # values needing at most 3 bytes are looked up in a table
_TABLES = {}


def _varint_bytes(u, width):
    """(bytes uint8 [..., width], present bool [..., width]) of the varints of unsigned ints `u`."""
    data = np.empty((*u.shape, width), np.uint8)
    present = np.empty((*u.shape, width), bool)
    present[..., 0] = True
    rest = u
    for k in range(width):
        # Byte k holds bits 7k..7k+6 and the continuation bit when higher bits remain.
        higher = rest >> np.uint8(7)
        data[..., k] = (rest & np.uint8(0x7F)) | ((higher != 0).astype(np.uint8) << np.uint8(7))
        if k + 1 < width:
            present[..., k + 1] = higher != 0
        rest = higher
    return data, present


def _varint_table(top):
    """Varint bytes and presence of every value 0..top, 4 bytes each (gathering 4-byte items is fast).

    Built once per process for the next power of two above `top` (vocabulary ids: 32768 entries).
    Returns:
      (bytes, present): uint32 [size] each, viewed as 4 uint8 / bool per value; the 4th is never used.
    """
    size = 1 << max(top.bit_length(), 7)
    if size not in _TABLES:
        data, present = _varint_bytes(np.arange(size, dtype=np.uint32), 4)
        present[:, 3] = False
        _TABLES[size] = (data.view(np.uint32).reshape(size), present.view(np.uint32).reshape(size))
    return _TABLES[size]


def _varint(value):
    """The protobuf varint of one non-negative int, as bytes."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _entry_header(key, list_tag, packed_len):
    """Bytes of a `Features.feature` map entry up to its packed values (`packed_len` bytes of them)."""
    list_len = 1 + len(_varint(packed_len)) + packed_len  # XxxList { packed value = 1 }
    feature_len = 1 + len(_varint(list_len)) + list_len  # Feature { xxx_list = 2|3 }
    entry_len = 2 + len(key) + 1 + len(_varint(feature_len)) + feature_len  # entry { key, value }
    header = b"\x0a" + _varint(entry_len) + bytes([0x0A, len(key)]) + key
    header += b"\x12" + _varint(feature_len) + bytes([list_tag]) + _varint(list_len)
    return header + b"\x0a" + _varint(packed_len)


def _feature_pieces(name, values, row_lengths):
    """Pieces of one `Features.feature` map entry for every row, and the entry's size with its tag."""
    n = values.shape[0]
    if name in FLOAT_FEATURES:
        floats = np.ascontiguousarray(values, "<f4")
        data = floats.view(np.uint8).reshape(n, -1)
        if row_lengths is None:
            payload = (data, None)
            packed_len = np.full(n, data.shape[1], np.int64)
        else:
            byte_lengths = np.asarray(row_lengths, np.int64) * 4
            payload = (data, np.arange(data.shape[1]) < byte_lengths[:, None])
            packed_len = byte_lengths
        list_tag = 0x12  # Feature.float_list
    else:
        data, keep, packed_len = _varint_columns(values, row_lengths)
        payload = (data, keep)
        list_tag = 0x1A  # Feature.int64_list
    key = name.encode()
    distinct, inverse = np.unique(packed_len, return_inverse=True)
    headers = [_entry_header(key, list_tag, int(p)) for p in distinct.tolist()]
    sizes = np.fromiter(map(len, headers), np.int64, len(headers))
    if len(headers) == 1:  # the usual case: a fixed-length feature
        header = _const(headers[0], n)
    else:  # each distinct header once, padded to the longest, then one row per record
        table = np.zeros((len(headers), sizes.max()), np.uint8)
        for row, h in zip(table, headers):
            row[: len(h)] = np.frombuffer(h, np.uint8)
        header = (table[inverse], (np.arange(table.shape[1]) < sizes[:, None])[inverse])
    return [header, payload], sizes[inverse] + packed_len  # the entry with its tag and length


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _masked_crcs(crc):
    """TFRecord's CRC masking of uint32 CRCs, vectorised."""
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


def encode_records(features, n):
    """Serialises `n` tf.train.Example protos, each framed as a TFRecord (length, CRCs), back to back.

    Args:
      features: ordered list of (name, values, row_lengths): values [n, width], non-negative ints (int64
        features) or floats (FLOAT_FEATURES); row_lengths None when every row has `width` values, else
        int [n] (a variable-length feature: row r holds values[r, :row_lengths[r]]).
      n: number of records.
    Returns:
      (uint8 array: the framed records back to back, i.e. a TFRecord file's bytes;
      int64 [n]: each framed record's byte length).
    """
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    pieces, item_len = [], []
    for name, values, row_lengths in features:
        feature, size = _feature_pieces(name, np.asarray(values).reshape(n, -1), row_lengths)
        pieces += feature
        item_len.append(size)
    features_len = np.sum(item_len, axis=0)
    length, length_keep, length_size = _varint_columns(features_len[:, None])
    record_len = 1 + length_size + features_len  # Example { features = 1 }
    # TFRecord framing: uint64 length, masked CRC of those 8 bytes, data, masked CRC of the data
    # (filled in below, once the data bytes exist).
    header = np.empty((n, 12), np.uint8)
    header[:, :8] = record_len.astype("<u8").view(np.uint8).reshape(n, 8)
    distinct, inverse = np.unique(record_len, return_inverse=True)
    length_crcs = [_masked_crc(int(x).to_bytes(8, "little")) for x in distinct]
    header[:, 8:] = np.asarray(length_crcs, "<u4")[inverse].view(np.uint8).reshape(n, 4)
    pieces = [(header, None), _const([0x0A], n), (length, length_keep), *pieces]
    pieces.append((np.zeros((n, 4), np.uint8), None))
    framed = record_len + 16
    ends = np.cumsum(framed)
    out = np.empty(int(ends[-1]) if n else 0, np.uint8)
    # A few hundred records at a time, in one reused byte matrix (and its keep mask) where the constant
    # pieces are written once: it stays in cache.
    widths = [data.shape[1] for data, _ in pieces]
    offsets = np.concatenate([[0], np.cumsum(widths)]).tolist()
    rows = min(n, _BLOCK_ROWS)
    matrix = np.empty((rows, offsets[-1]), np.uint8)
    mask = np.ones((rows, offsets[-1]), bool) if any(k is not None for _, k in pieces) else None
    varying = []
    for (data, keep), lo, hi in zip(pieces, offsets[:-1], offsets[1:]):
        if data.strides[0] == 0 and keep is None:  # a constant (see _const)
            matrix[:, lo:hi] = data[:rows]
        else:
            varying.append((data, keep, lo, hi))
    crc = google_crc32c.value
    for first_row in range(0, n, _BLOCK_ROWS):
        last_row = min(first_row + _BLOCK_ROWS, n)
        count = last_row - first_row
        for data, keep, lo, hi in varying:
            matrix[:count, lo:hi] = data[first_row:last_row]
            if keep is not None:
                mask[:count, lo:hi] = keep[first_row:last_row]
        first = int(ends[first_row] - framed[first_row])
        dst = out[first : int(ends[last_row - 1])]
        if mask is None:
            dst[:] = matrix[:count].reshape(-1)
        else:
            # np.compress (indices, then a gather) is several times faster than boolean indexing.
            np.compress(mask[:count].reshape(-1), matrix[:count].reshape(-1), out=dst)
        # The data CRC of each record, now that its bytes exist.
        data = dst.tobytes()
        starts = (ends[first_row:last_row] - framed[first_row:last_row] + 12 - first).tolist()
        stops = (ends[first_row:last_row] - 4 - first).tolist()
        crcs = np.fromiter(map(crc, map(data.__getitem__, map(slice, starts, stops))), np.uint64)
        dst[np.add.outer(stops, np.arange(4))] = _masked_crcs(crcs).view(np.uint8).reshape(-1, 4)
    return out, framed


_BLOCK_ROWS = 512


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


def count_records(path):
    """Number of records in a TFRecord file, from the length fields alone (seeks, no data read).

    Raises:
      ValueError naming the file and byte offset when the framing does not end at the file's end
      (a truncated file) or a length field is corrupt.
    """
    size = os.path.getsize(path)
    count = offset = 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
                raise ValueError(f"{path}: corrupt record length at byte {offset}")
            offset += 16 + length
            count += 1
    if offset != size:
        raise ValueError(f"{path}: truncated record at the end ({size} bytes, {offset} expected)")
    return count


# ----------------------------------------------------------------------------- decoding


def _read_varint(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data):
    """Yields (field number, wire type, value) of a protobuf message (only wire types 0 and 2)."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        yield number, wire, value


def parse_example(record):
    """A serialised tf.train.Example -> {feature name: list of ints or floats}."""
    out = {}
    for _, _, features in _fields(record):  # Example.features
        for _, _, entry in _fields(features):  # Features.feature map entries
            name, feature = None, b""
            for number, _, value in _fields(entry):
                if number == 1:
                    name = bytes(value).decode()
                else:
                    feature = value
            values = []
            for kind, _, lst in _fields(feature):  # 1 bytes, 2 float, 3 int64
                for _, wire, packed in _fields(lst):
                    if kind == 2:
                        if wire == 2:
                            values += list(struct.unpack(f"<{len(packed) // 4}f", packed))
                        else:
                            raise ValueError("unpacked float lists are not supported")
                    elif kind == 3:
                        if wire == 0:
                            values.append(packed)
                        else:
                            pos = 0
                            while pos < len(packed):
                                v, pos = _read_varint(packed, pos)
                                values.append(v)
                    else:
                        values.append(bytes(packed))
            out[name] = values
    return out


def to_standard(ex):
    """Either layout -> standard-layout numpy arrays (remask records are put back in position order)."""
    if "input_mask" in ex:
        return {k: np.asarray(v) for k, v in ex.items()}
    ids, pos, seg = (np.asarray(ex[k]) for k in ("input_ids", "input_position", "segment_ids"))
    k = ex["mask_padding_index"][0]
    end = ex["seq_padding_index"][0]
    P = len(ex["masked_labels"])
    slots = [s for s in range(end) if s < k or s >= P]
    seq = len(ids)
    std_ids, std_seg, mask = np.zeros(seq, int), np.zeros(seq, int), np.zeros(seq, int)
    for s in slots:
        std_ids[pos[s]], std_seg[pos[s]], mask[pos[s]] = ids[s], seg[s], 1
    positions = np.zeros(P, int)
    positions[:k] = np.asarray(ex["masked_lm_positions"][:k])
    return {
        "input_ids": std_ids,
        "input_mask": mask,
        "segment_ids": std_seg,
        "masked_lm_positions": positions,
        "masked_lm_ids": np.asarray(ex["masked_labels"]),
        "masked_lm_weights": np.asarray(ex["masked_lm_weights"]),
        "next_sentence_labels": np.asarray(ex["next_sentence_labels"]),
    }


def is_packed(ex):
    """Whether a parsed example (`parse_example`) has the packed layout."""
    return "sequence_ids" in ex


def unpack(ex):
    """A packed-layout example -> the standard-layout instances it holds, in row order.

    Args:
      ex: {name: list} from `parse_example` (packed layout, see the module docstring).
    Returns:
      list of dicts of numpy arrays as `to_standard` returns them: input_ids, input_mask,
      segment_ids [S] (the sequence from position 0, zero-padded), masked_lm_positions (relative
      to the sequence), masked_lm_ids, masked_lm_weights [P], next_sentence_labels [1].
    """
    a = {k: np.asarray(v) for k, v in ex.items()}
    seq = len(a["input_ids"])
    P = len(a["masked_lm_ids"]) // len(a["next_sentence_labels"])
    out = []
    for i in np.flatnonzero(a["next_sentence_weights"] > 0):
        start = int(a["cls_positions"][i])
        tokens = np.flatnonzero(a["sequence_ids"] == i + 1)
        preds = np.flatnonzero(
            (a["masked_lm_sequence_ids"] == i + 1) & (a["masked_lm_weights"] > 0)
        )
        std = {name: np.zeros(seq, np.int64) for name in ("input_ids", "input_mask", "segment_ids")}
        std["input_ids"][: len(tokens)] = a["input_ids"][tokens]
        std["input_mask"][: len(tokens)] = 1
        std["segment_ids"][: len(tokens)] = a["segment_ids"][tokens]
        for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
            std[name] = np.zeros(P, np.float32 if name in FLOAT_FEATURES else np.int64)
        std["masked_lm_positions"][: len(preds)] = a["masked_lm_positions"][preds] - start
        std["masked_lm_ids"][: len(preds)] = a["masked_lm_ids"][preds]
        std["masked_lm_weights"][: len(preds)] = 1.0
        std["next_sentence_labels"] = a["next_sentence_labels"][i : i + 1]
        out.append(std)
    return out
