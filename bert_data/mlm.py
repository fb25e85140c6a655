"""tf.data input for RoBERTa-style MLM: packed token ids -> dynamically masked batches.

Records come from create_mlm_data.py (`input_ids`, `input_mask` int64 [S]). Masks are drawn in the
pipeline, new ones every epoch (RoBERTa's dynamic masking), with BERT's rule: of the non-special real
tokens, k = min(max_predictions, max(1, round(n x mask_prob))) are chosen uniformly; each becomes
`<mask>` with probability 0.8, stays itself with 0.1, or becomes a uniformly drawn non-special token
with 0.1. Output elements have the standard BERT layout the model and loss already use (input_ids,
input_mask, segment_ids zeros, masked_lm_positions/ids/weights with exactly max_predictions slots,
weight 0 for unused ones), shaped [GA, micro_batch, ...] like bert_data.pretraining's.

The random numbers are a counter-based hash of (seed, epoch, index, position, purpose), so masks are
a pure function of those. Training data is numbered in the order of its endless shuffled stream
(epoch 0, index = place in the stream), so a record read again in a later pass gets new masks; the
numbering is part of the checkpointable iterator, so a resumed run draws exactly the masks the
uninterrupted run would have drawn. Generated data uses (pass, record) and evaluation (0, record):
the same masks at every evaluation.
"""

import dataclasses
import os
import struct

import numpy as np

from bert_data import pretraining
from bert_data.create_bpe_tokenizer import BOS, EOS, MASK, SPECIAL_TOKENS, load_tokenizer
from bert_data.pretraining import batch_steps
from bert_data.records import parse_example
from common import tfrecords
from common.errors import UserError
from common.hashing import fmix32

FEATURES = ("input_ids", "input_mask")
MASK_PROB = 0.15
_GOLDEN = 0x9E3779B9
_SELECT, _ACTION, _TOKEN = 0, 1, 2  # purposes of a position's random numbers


@dataclasses.dataclass(frozen=True)
class Masking:
    """What dynamic masking needs to know about the tokenizer.

    Attributes:
      mask_id: id of `<mask>`.
      special_ids: ids never chosen for masking nor drawn as random replacements.
      vocab_size: tokens of the tokenizer; random replacements are drawn below it.
      bos_id, eos_id: ids of `<s>` and `</s>` (for generated data).
      mask_prob: fraction of the maskable tokens to predict.
    """

    mask_id: int
    special_ids: tuple
    vocab_size: int
    bos_id: int
    eos_id: int
    mask_prob: float = MASK_PROB

    @classmethod
    def roberta_ids(cls, vocab_size):
        """The special ids create_bpe_tokenizer.py gives (`<s> <pad> </s> <unk> <mask>` = 0-4)."""
        ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        return cls(ids[MASK], tuple(sorted(ids.values())), vocab_size, ids[BOS], ids[EOS])


def masking_from_tokenizer(path):
    """Masking for a tokenizer.json (one-line error if it is missing or lacks the special tokens)."""
    tokenizer, ids = load_tokenizer(path)
    specials = tuple(sorted(ids[t] for t in SPECIAL_TOKENS))
    return Masking(ids[MASK], specials, tokenizer.get_vocab_size(), ids[BOS], ids[EOS])


def parse_spec(seq_length):
    import tensorflow as tf

    return {name: tf.io.FixedLenFeature([seq_length], tf.int64) for name in FEATURES}


def check_files(files, seq_length, vocab_size, sample=200, skip_damage=False):
    """Checks MLM data against the config before any graph is built.

    Reads the first records of the first file: layout (packed ids, not BERT's masked instances),
    sequence length, and token ids below vocab_size.

    Returns:
      Estimated number of records in all files (from the mean record size).
    """
    path = files[0]
    head = pretraining.read_head(path, sample, skip_damage)
    ex = parse_example(head[0])
    if "masked_lm_ids" in ex or "masked_labels" in ex:
        raise UserError(
            f"{path} holds BERT instances with fixed masks (create_pretraining_data.py); model_type "
            "roberta reads packed ids from bert_data/create_mlm_data.py (or set model_type bert)"
        )
    if set(FEATURES) - set(ex):
        raise UserError(f"{path} is not MLM data (features: {sorted(ex)}); use create_mlm_data.py")
    if len(ex["input_ids"]) != seq_length:
        raise UserError(
            f"{path} has sequence length {len(ex['input_ids'])} but seq_length is {seq_length}"
        )
    top = max(max(parse_example(r)["input_ids"]) for r in head)
    if top >= vocab_size:
        raise UserError(
            f"{path} has token id {top} >= vocab_size {vocab_size}: data made with another tokenizer?"
        )
    mean_size = sum(len(r) + 16 for r in head) / len(head)
    return int(sum(os.path.getsize(f) for f in files) / mean_size)


def is_mlm_data(path):
    """True if the first record of `path` has the packed-ids layout of create_mlm_data.py.

    Reads that record only, unchecked (a damaged file gives False, and the data check that follows
    names the damage).
    """
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(12)[:8])
            ex = parse_example(f.read(length))
    except Exception:  # noqa: BLE001 (any parse failure means "not this layout")
        return False
    return "masked_lm_ids" not in ex and "masked_labels" not in ex and set(FEATURES) <= set(ex)


# ----------------------------------------------------------------------------- masking


def _words(x):
    """int64 tensor -> (low, high) uint32 words."""
    import tensorflow as tf

    x = tf.cast(x, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(x, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, 32), 0xFFFFFFFF), tf.uint32)
    return low, high


def _row_keys(seed, epoch, index):
    """uint32 [B] key of each record from (seed, epoch [B], index [B])."""
    import tensorflow as tf

    key = tf.constant(_GOLDEN, tf.uint32)
    words = [
        tf.constant(seed & 0xFFFFFFFF, tf.uint32),
        tf.constant((seed >> 32) & 0xFFFFFFFF, tf.uint32),
    ]
    words += [*_words(epoch), *_words(index)]
    for word in words:
        key = fmix32(tf.bitwise.bitwise_xor(key, word)) + tf.constant(_GOLDEN, tf.uint32)
    return key


def _bits(keys, seq_length, purpose):
    """uint32 [B,S]: random word of each (record, position) for one purpose."""
    import tensorflow as tf

    counter = tf.cast(tf.range(seq_length) * 4 + purpose, tf.uint32)  # [S]
    h = fmix32(tf.bitwise.bitwise_xor(keys[:, tf.newaxis], counter))  # [B,S]
    return fmix32(h + tf.constant(_GOLDEN, tf.uint32))


def _uniform(keys, seq_length, purpose):
    """float32 [B,S] in [0, 1), multiples of 2^-24."""
    import tensorflow as tf

    top = tf.bitwise.right_shift(_bits(keys, seq_length, purpose), tf.constant(8, tf.uint32))
    return tf.cast(top, tf.float32) * (1.0 / (1 << 24))


def dynamic_mask(features, seed, mask_prob, max_predictions, special_ids, vocab_size, mask_id):
    """Draws masks for a micro-batch of packed sequences (a tf.data map function).

    Args:
      features: dict with input_ids, input_mask (int [B,S]), epoch and index (int [B]: they key
        the random numbers, with the seed).
      seed: Python int, the data seed.
      mask_prob: Python float, fraction of maskable tokens to predict.
      max_predictions: Python int P <= S, slots per sequence (k is capped at P).
      special_ids: Python ints never masked (and never drawn as replacements).
      vocab_size: Python int; replacements are drawn uniformly from [0, vocab_size) minus specials.
      mask_id: Python int, id of `<mask>`.
    Returns:
      dict: input_ids (masked), input_mask, segment_ids (zeros) int32 [B,S]; masked_lm_positions
      (ascending, then 0), masked_lm_ids (then 0) int32 [B,P]; masked_lm_weights float32 [B,P]
      (1 for the k used slots).
    """
    import tensorflow as tf

    ids = tf.cast(features["input_ids"], tf.int32)
    real = tf.cast(features["input_mask"], tf.int32)
    seq_length = ids.shape[1] if ids.shape[1] is not None else tf.shape(ids)[1]
    keys = _row_keys(seed, features["epoch"], features["index"])  # [B]
    maskable = tf.cast(real, tf.bool)
    for special in special_ids:
        maskable &= tf.not_equal(ids, special)
    count = tf.reduce_sum(tf.cast(maskable, tf.int32), axis=1)  # [B]
    # float64 and round-half-even, as Google's Python round(n * p): 30 x 0.15 gives 4, not 5.
    k = tf.cast(tf.round(tf.cast(count, tf.float64) * mask_prob), tf.int32)
    k = tf.where(count > 0, tf.clip_by_value(k, 1, max_predictions), 0)  # [B]

    # The k maskable positions with the largest random scores (others score -1, never chosen).
    scores = tf.where(maskable, _uniform(keys, seq_length, _SELECT), -1.0)  # [B,S]
    chosen = tf.math.top_k(scores, k=max_predictions, sorted=True).indices  # [B,P]
    used = tf.range(max_predictions)[tf.newaxis, :] < k[:, tf.newaxis]  # [B,P]
    positions = tf.sort(tf.where(used, chosen, seq_length), axis=1)  # used slots first, ascending
    used = positions < seq_length
    positions = tf.where(used, positions, 0)
    labels = tf.where(used, tf.gather(ids, positions, batch_dims=1), 0)  # [B,P]
    slot_of = tf.equal(positions[:, :, tf.newaxis], tf.range(seq_length))  # [B,P,S]
    selected = tf.reduce_any(slot_of & used[:, :, tf.newaxis], axis=1)  # [B,S]

    # 80% <mask>, 10% unchanged, 10% a random non-special token (drawn at every position, kept
    # only where selected, so each position's draw does not depend on the others').
    action = _uniform(keys, seq_length, _ACTION)
    specials = sorted(s for s in set(special_ids) if 0 <= s < vocab_size)
    bits = tf.cast(_bits(keys, seq_length, _TOKEN), tf.int64)
    random_ids = tf.cast(bits % (vocab_size - len(specials)), tf.int32)
    for special in specials:  # ascending: the j-th non-special id, skipping the specials
        random_ids += tf.cast(random_ids >= special, tf.int32)
    replaced = tf.where(action < 0.8, mask_id, tf.where(action < 0.9, ids, random_ids))
    return {
        "input_ids": tf.where(selected, replaced, ids),
        "input_mask": real,
        "segment_ids": tf.zeros_like(ids),
        "masked_lm_positions": positions,
        "masked_lm_ids": labels,
        "masked_lm_weights": tf.cast(used, tf.float32),
    }


def _mask_fn(pipe, seed, masking):
    def fn(features):
        return dynamic_mask(
            features,
            seed,
            masking.mask_prob,
            pipe.max_predictions_per_seq,
            masking.special_ids,
            masking.vocab_size,
            masking.mask_id,
        )

    return fn


# ----------------------------------------------------------------------------- datasets


def mlm_dataset(files, pipe, seed, masking, shard=(1, 0)):
    """Records -> masked batches [GA, micro_batch, ...], repeated forever, deterministic for `seed`.

    The record order is bert_data.pretraining's (file order reshuffled every pass, records
    interleaved, then a shuffle buffer of SHUFFLE_BUFFER). Records are then numbered in stream
    order and masked with keys (seed, epoch 0, number): a record seen again in a later pass has
    another number, hence new masks. tf.data ops with seeds of their own inside a per-epoch
    `flat_map` would make the iterator impossible to checkpoint, so the pass is not a key of its
    own here.

    Args:
      files: TFRecord paths from create_mlm_data.py.
      pipe: bert_data.pretraining.Pipeline (seq_length, max_predictions_per_seq, micro_batch_size,
        gradient_accumulation_count, parallel_io_threads, sloppy_parallel_interleave).
      seed: data seed (order and masks).
      masking: Masking.
      shard: (number of input pipelines, this pipeline's index) for multi-worker training.
    """
    import tensorflow as tf

    ds = pretraining.shuffled_records(files, pipe, seed, shard).enumerate()
    ds = ds.map(lambda i, r: {"record": r, "epoch": tf.constant(0, tf.int64), "index": i})
    spec = parse_spec(pipe.seq_length)
    return batch_steps(ds, pipe, _parse_and_mask(spec, _mask_fn(pipe, seed, masking)))


def _parse_and_mask(spec, mask):
    import tensorflow as tf

    def fn(x):
        parsed = tf.io.parse_example(x["record"], spec)
        return mask({**parsed, "epoch": x["epoch"], "index": x["index"]})

    return fn


def eval_dataset(files, pipe, masking, seed=0):
    """One ordered pass over `files` in micro-batches [B, ...] (the last may be smaller), with the
    same masks at every evaluation (epoch 0 of `seed`)."""
    import tensorflow as tf

    spec = parse_spec(pipe.seq_length)
    ds = tfrecords.records(files, pipe.damage).enumerate()
    ds = ds.map(lambda i, r: {"record": r, "epoch": tf.constant(0, tf.int64), "index": i})
    ds = ds.batch(pipe.micro_batch_size)
    parse = _parse_and_mask(spec, _mask_fn(pipe, seed, masking))
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def generated_dataset(pipe, seed, masking, samples=1000):
    """`--generated-data` for model_type roberta: random packed sequences `<s> ... </s>`, cached and
    repeated, masked dynamically like real data."""
    import tensorflow as tf

    seq = pipe.seq_length
    rng = np.random.default_rng(seed)
    ordinary = np.setdiff1d(np.arange(masking.vocab_size), masking.special_ids)
    ids = rng.choice(ordinary, size=(samples, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = masking.bos_id, masking.eos_id
    feats = {"input_ids": ids, "input_mask": np.ones((samples, seq), np.int32)}
    ds = tf.data.Dataset.from_tensor_slices(feats).repeat().enumerate()
    ds = ds.map(lambda i, x: {**x, "epoch": i // samples, "index": i % samples})
    return batch_steps(ds, pipe, _mask_fn(pipe, seed, masking))
