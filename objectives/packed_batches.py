"""Packed fine-tuning batches (GLUE `--pack-sequences K`): each micro-batch's own examples, packed.

The examples of a training micro-batch are the ones the unpacked stream gives it
(`finetuning.train_dataset`: same seed, same order), laid out in R rows of seq_length tokens with up
to K examples per row, in the packed layout the pretraining records use (bert_data/records.py):
`sequence_ids` (1..K, 0 for padding), `positions` restarting at 0 for each example, `cls_positions`
[R,K] (the first token of each example), and per slot `label_ids` and `label_weights` (1.0 for a
real example). The model keeps the examples apart (block-diagonal attention, positions, the pooler
and classifier at each [CLS]) and the loss is the mean over the micro-batch's real slots, so a
packed micro-batch has the loss and gradients of the unpacked one (tests/test_packed_finetuning.py);
only dropout masks differ, since they hash each element's position in the row.

Which examples share a row comes from `bert_data.packing.pack` (the pretraining data's algorithm),
micro-batch by micro-batch, for every micro-batch the run takes, before training: R is the most rows
any of them needs, so every step has the same shape (one trace, no padding to seq_length per
example) and none drops an example. Only the plan, int32 [micro-batches, R, K] example indices, is
kept; the rows are gathered from the examples in the tf.data pipeline.
"""

import numpy as np

from bert_data import packing
from common.errors import UserError

TOKEN_FEATURES = ("input_ids", "segment_ids")  # gathered token by token into the rows
PREFETCH_STEPS = 4  # planned beyond the run's last step, for the pipeline's read-ahead


def check(cfg, config):
    """One line when packing is asked for where it cannot work."""
    per_pack = cfg.finetune.pack_sequences
    if not per_pack:
        return
    if per_pack < 2:
        raise UserError(f"pack_sequences must be 0 (off) or at least 2, got {per_pack}")
    if cfg.finetune.length_bucket:
        raise UserError(
            "pack_sequences and length_bucket both shorten the padding of training batches: "
            "set only one of them"
        )
    if config.groupbert:
        raise UserError(
            "pack_sequences: GroupBERT's convolution crosses sequence boundaries, so packed "
            "examples would mix; fine-tune GroupBERT without --pack-sequences"
        )


def plan(lengths, example_order, micro_batch, per_pack, seq_length):
    """Rows of every micro-batch.

    Args:
      lengths: int [n] real tokens of each example.
      example_order: int [M * micro_batch], the examples of M consecutive micro-batches.
    Returns:
      int32 [M, R, per_pack]: example indices, -1 for an empty slot; R is the most rows any
      micro-batch needs (the others get empty rows at the end).
    """
    batches = np.asarray(example_order, np.int64).reshape(-1, micro_batch)
    packs = [packing.pack(lengths[b], seq_length, per_pack) for b in batches]
    rows = max(len(p) for p in packs)
    out = np.full((len(batches), rows, per_pack), -1, np.int32)
    for o, b, p in zip(out, batches, packs):
        o[: len(p)] = np.where(p >= 0, b[np.maximum(p, 0)], -1)
    return out


def packed_micro_batch(tensors, members, seq_length):
    """The packed rows of one micro-batch (tf ops, for a tf.data map).

    Args:
      tensors: {feature: tensor [n, ...]} of all examples: input_ids, input_mask, segment_ids
        [n, S]; label_ids [n].
      members: int32 [R, K] from `plan` (-1: empty slot).
    Returns:
      {feature: tensor}: input_ids, input_mask, segment_ids, sequence_ids, positions [R, S];
      cls_positions, label_ids, label_weights [R, K].
    """
    import tensorflow as tf

    K = members.shape[-1]
    used = members >= 0
    example = tf.maximum(members, 0)
    lengths = tf.reduce_sum(tf.cast(tf.gather(tensors["input_mask"], example), tf.int32), -1)
    lengths = tf.where(used, lengths, 0)  # [R,K]
    ends = tf.cumsum(lengths, axis=1)
    starts = ends - lengths  # [R,K] first token of each example in its row
    token = tf.range(seq_length, dtype=tf.int32)
    slot = tf.reduce_sum(tf.cast(token[None, None] >= ends[:, :, None], tf.int32), 1)  # [R,S]
    real = slot < K  # padding: past the row's last example
    slot = tf.minimum(slot, K - 1)
    within = tf.where(real, token[None] - tf.gather(starts, slot, batch_dims=1), 0)
    source = tf.stack([tf.gather(example, slot, batch_dims=1), within], -1)  # [R,S,2]
    rows = {name: tf.where(real, tf.gather_nd(tensors[name], source), 0) for name in TOKEN_FEATURES}
    labels = tensors["label_ids"]
    rows.update(
        input_mask=tf.cast(real, tensors["input_mask"].dtype),
        sequence_ids=tf.where(real, slot + 1, 0),
        positions=within,
        cls_positions=starts * tf.cast(used, tf.int32),
        label_ids=tf.where(used, tf.gather(labels, example), tf.zeros([], labels.dtype)),
        label_weights=tf.cast(used, tf.float32),
    )
    return rows


def describe(members, lengths, example_order, seq_length):
    """One line: rows per micro-batch and the real-token fraction of padded and packed rows."""
    micro_batches, rows, per_pack = members.shape
    real = lengths[np.asarray(example_order)].sum()
    micro_batch = len(example_order) // micro_batches
    padded = real / (len(example_order) * seq_length)
    packed = real / (micro_batches * rows * seq_length)
    return (
        f"packed training batches: {micro_batch} examples per micro-batch in {rows} rows of "
        f"{seq_length} (up to {per_pack} per row); real-token fraction {padded:.3f} padded, "
        f"{packed:.3f} packed"
    )
