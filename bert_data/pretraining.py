"""tf.data input for pretraining: TFRecords in either layout, or generated data.

Every element is one optimizer step's worth of data: a dict of tensors shaped
[gradient_accumulation_count, micro_batch_size, ...] (int32, except the float32 `masked_lm_weights` and, packed,
`next_sentence_weights`), with the
names `modeling.py` expects. The order is a pure function of the files and the seed (deterministic
interleave and shuffle), and the iterator can be saved in a checkpoint, so a resumed run reads exactly the
records the uninterrupted run would have read, without re-reading the ones already consumed.
"""

import dataclasses
import glob
import os

import numpy as np

from bert_data import records
from bert_data.records import parse_example
from common import fingerprint, tfrecords
from common.errors import UserError

SHUFFLE_BUFFER = 10000


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """What the input pipelines need to know: record layout and batching.

    Attributes:
      seq_length, max_predictions_per_seq, static_mask: the records' layout (checked by
        `check_files`).
      sequences_per_pack: K of packed records (`create_pretraining_data.py --packing`; found by
        `check_files`), 0 for unpacked ones. Packed elements are rows of up to K sequences
        with the features of records.py's packed layout (masked_lm_* [K*P], next_sentence_*
        and cls_positions [K]; masked_lm_sequence_ids is not read).
      micro_batch_size, gradient_accumulation_count: elements are [GA, micro_batch, ...].
      parallel_io_threads: files read and parsed in parallel.
      sloppy_parallel_interleave: allow a non-deterministic interleave (no exact resume).
      damage: common.tfrecords.DamageLog of the run: notes damaged TFRecord files and either stops
        the pipeline there or skips the rest of them (default: a log of its own, which stops).
    """

    seq_length: int
    max_predictions_per_seq: int = 20
    static_mask: bool = False
    sequences_per_pack: int = 0
    micro_batch_size: int = 1
    gradient_accumulation_count: int = 1
    parallel_io_threads: int = 4
    sloppy_parallel_interleave: bool = False
    damage: tfrecords.DamageLog = dataclasses.field(
        default_factory=tfrecords.DamageLog, compare=False
    )


def expand_train_files(spec):
    """Comma-separated glob patterns -> sorted file list; one-line error if a pattern matches nothing."""
    files = []
    for pattern in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        matches = [m for m in sorted(glob.glob(pattern)) if not fingerprint.is_fingerprint(m)]
        if not matches:
            raise UserError(f"train_file pattern matches no file: {pattern}")
        files += [m for m in matches if m not in files]
    if not files:
        raise UserError("no training data: set --train-file (TFRecord globs) or --generated-data")
    return files


def read_head(path, sample, skip_damage=False):
    """The first `sample` serialised records of a TFRecord file (at least one, else UserError).

    A damaged record among them is an error, unless `skip_damage` and records precede it (the
    input pipeline then skips the rest of the file, as skip_corrupt_records says)."""
    head = []
    try:
        for record in records.read_records(path):
            head.append(record)
            if len(head) >= sample:
                break
    except ValueError as err:
        if not (skip_damage and head):
            raise UserError(f"cannot read training data: {err}") from None
    if not head:
        raise UserError(f"training file has no records: {path}")
    return head


def check_files(
    files, seq_length, max_predictions, static_mask, vocab_size, sample=200, skip_damage=False
):
    """Checks the data against the config before any graph is built (USER_NEEDS #6, #33).

    Reads the first records of the first file with the pure-Python parser: layout (remask iff
    static_mask; packed rows are read by the standard model), sequence length, mask count per
    sequence, and token ids below vocab_size.

    Returns:
      (estimated number of records in all files (from the mean record size), sequences per
      pack K of packed records or 0).
    """
    path = files[0]
    head = read_head(path, sample, skip_damage)
    ex = parse_example(head[0])
    per_pack = len(ex["next_sentence_weights"]) if records.is_packed(ex) else 0
    if per_pack and static_mask:
        raise UserError(
            f"{path} holds packed sequences (create_pretraining_data.py --packing) but "
            "static_mask is True: set static_mask false"
        )
    remask = "input_position" in ex
    if "input_ids" not in ex or (not remask and "input_mask" not in ex):
        raise UserError(f"{path} is not BERT pretraining data (features: {sorted(ex)})")
    if remask != bool(static_mask):
        layout = "remask (static-mask)" if remask else "standard"
        fix = "set static_mask true" if remask else "set static_mask false"
        raise UserError(f"{path} has the {layout} layout but static_mask is {static_mask}: {fix}")
    if len(ex["input_ids"]) != seq_length:
        raise UserError(
            f"{path} has sequence length {len(ex['input_ids'])} but seq_length is {seq_length}"
        )
    masks = len(ex["masked_labels" if remask else "masked_lm_ids"]) // max(per_pack, 1)
    if masks != max_predictions:
        raise UserError(
            f"{path} was made with --mask-tokens {masks} but max_predictions_per_seq is "
            f"{max_predictions}"
        )
    top = max(max(parse_example(r)["input_ids"]) for r in head)
    if vocab_size is not None and top >= vocab_size:
        raise UserError(
            f"{path} has token id {top} >= vocab_size {vocab_size}: data made with another vocab?"
        )
    mean_size = sum(len(r) + 16 for r in head) / len(head)
    return int(sum(os.path.getsize(f) for f in files) / mean_size), per_pack


_PACKED_EXTRA = ("sequence_ids", "positions", "cls_positions")  # the packed model's int inputs


def _parser(pipe):
    """Serialised records [N] -> the model's features (int32; weights float32) for `pipe`'s
    layout."""
    import tensorflow as tf

    static, per_pack = pipe.static_mask, pipe.sequences_per_pack
    spec = records.parse_spec(pipe.seq_length, pipe.max_predictions_per_seq, static, per_pack)
    # Not needed by the model: the remask layout's variable-length masked_lm_positions, and
    # which sequence each packed prediction belongs to.
    spec.pop("masked_lm_positions" if static else "masked_lm_sequence_ids", None)
    names = (
        ("input_ids", "input_position", "segment_ids", "mask_padding_index", "seq_padding_index")
        if static
        else ("input_ids", "input_mask", "segment_ids", "masked_lm_positions")
    )
    if per_pack:
        names += _PACKED_EXTRA

    def parse(serialised):
        parsed = tf.io.parse_example(serialised, spec)
        out = {name: tf.cast(parsed[name], tf.int32) for name in names}
        out["masked_lm_ids"] = tf.cast(
            parsed["masked_labels" if static else "masked_lm_ids"], tf.int32
        )
        out["masked_lm_weights"] = tf.cast(parsed["masked_lm_weights"], tf.float32)
        out["next_sentence_labels"] = tf.cast(parsed["next_sentence_labels"], tf.int32)
        if per_pack:
            out["next_sentence_weights"] = tf.cast(parsed["next_sentence_weights"], tf.float32)
        return out

    return parse


def tfrecord_dataset(files, pipe, seed, shard=(1, 0)):
    """Records -> batches of [GA, micro_batch, ...], repeated forever, deterministic for `seed`.

    Args:
      files: TFRecord paths.
      pipe: Pipeline (layout, batching, parallel_io_threads).
      seed: data-order seed.
      shard: (number of input pipelines, this pipeline's index) for multi-worker training.
    """
    return batch_steps(shuffled_records(files, pipe, seed, shard), pipe, _parser(pipe))


def shuffled_records(files, pipe, seed, shard=(1, 0)):
    """Serialised records of `files`, repeated forever: file order reshuffled every pass, files
    interleaved (`parallel_io_threads`), then a SHUFFLE_BUFFER shuffle; deterministic for `seed`
    unless `sloppy_parallel_interleave`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shard[0] > 1:
        ds = ds.shard(*shard)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        tfrecords.reader(pipe.damage),
        cycle_length=max(1, min(pipe.parallel_io_threads, len(files))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not pipe.sloppy_parallel_interleave,
    )
    return ds.shuffle(SHUFFLE_BUFFER, seed=seed + 1, reshuffle_each_iteration=True)


def batch_steps(ds, pipe, parse):
    """Records (or examples) -> parsed one-step elements [GA, micro_batch, ...], prefetched."""
    import tensorflow as tf

    ds = ds.batch(pipe.micro_batch_size, drop_remainder=True)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(pipe.gradient_accumulation_count, drop_remainder=True)
    return ds.prefetch(2)


def generated_dataset(pipe, seed, vocab_size, samples=1000):
    """Random but well-formed samples (either layout), cached and repeated (`--generated-data`)."""
    import tensorflow as tf

    seq, P = pipe.seq_length, pipe.max_predictions_per_seq
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, (samples, seq)).astype(np.int32)
    keys = rng.random((samples, seq - 1))
    positions = np.sort(np.argsort(keys, axis=1)[:, :P] + 1, axis=1).astype(np.int32)
    labels = np.take_along_axis(ids, positions, axis=1)
    # Masked positions show a fixed "[MASK]" id, so the task is not copying the input.
    np.put_along_axis(ids, positions, 103 if vocab_size > 103 else 4, axis=1)
    feats = {
        "segment_ids": (np.arange(seq)[None, :] >= seq // 2).repeat(samples, 0).astype(np.int32),
        "masked_lm_ids": labels,
        "masked_lm_weights": np.ones((samples, P), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (samples, 1)).astype(np.int32),
    }
    if pipe.static_mask:
        rest = np.argsort(
            np.isin(np.arange(seq)[None, :].repeat(samples, 0), positions), axis=1, kind="stable"
        )
        order = np.concatenate([positions, rest[:, : seq - P]], axis=1)
        feats["input_ids"] = np.take_along_axis(ids, order, axis=1)
        feats["input_position"] = order.astype(np.int32)
        feats["mask_padding_index"] = np.full((samples, 1), P, np.int32)
        feats["seq_padding_index"] = np.full((samples, 1), seq, np.int32)
    else:
        feats["input_ids"] = ids
        feats["input_mask"] = np.ones((samples, seq), np.int32)
        feats["masked_lm_positions"] = positions
    ds = tf.data.Dataset.from_tensor_slices(feats).repeat()
    return batch_steps(ds.batch(1).unbatch(), pipe, lambda x: x)


def eval_dataset(files, pipe):
    """One ordered pass over `files` in micro-batches [B, ...] (the last one may be smaller)."""
    import tensorflow as tf

    ds = tfrecords.records(files, pipe.damage).batch(pipe.micro_batch_size)
    return ds.map(_parser(pipe), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
