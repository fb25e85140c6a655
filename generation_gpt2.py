"""GPT-2 text generation with a static key/value cache: prefill, decode steps, sampling.

Shapes are static so one trace serves every prompt of a (batch, input_len, output_len) triple:
prompts are right-padded to `input_len` (P) and the cache has T = P + output_len slots per layer.
Row b's prompt (length n_b) fills slots 0..n_b-1 at positions 0..n_b-1; generated token t is fed
at slot P + t and position n_b + t. A key is visible to a query when its slot holds a real token
(a prompt slot < n_b, or a generated slot already written) and is not later than the query's
slot, so the padding between n_b and P is never attended to and every row sees exactly the
sequence a batch-1, unpadded run would see.

Cache: a tuple over layers of (key, value) pairs, each [B,N,T,d] in the compute dtype; `stack_cache`
/ `unstack_cache` turn it into one [L,2,B,N,T,d] tensor for exported signatures.

Sampling follows Hugging Face's order: repetition penalty (CTRL: a seen token's logit is divided by
the penalty when positive, multiplied when negative; the prompt counts as seen), temperature,
top-k (ties with the k-th value kept), top-p (the smallest set of most likely tokens whose
probability reaches p; the most likely token always kept), then one draw per row from the softmax
(Gumbel-max over `uniforms` hashed from (seed, step)), or the argmax when greedy.
"""

import dataclasses
import functools

import tensorflow as tf

import modeling_gpt2
import modeling_ops as ops
from common.hashing import fmix32


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. Defaults: plain multinomial sampling from softmax(logits).

    greedy: argmax (after the repetition penalty); temperature, top_k and top_p then change
      nothing. top_k 0 and top_p 1.0 disable those filters; repetition_penalty 1.0 disables it.
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


# ----------------------------------------------------------------------------- the cached model


def inference_weights(params, compute_dtype):
    """The weights a generation graph reads: matmul kernels cast once to the compute dtype (so a
    bfloat16 decode step reads half the bytes), 1-D tensors (LayerNorm, biases) and the position
    table kept in float32. The token table is cast for the LM head; the embedding lookup reads the
    float32 variable."""
    keep = ("transformer/wpe/weight",)
    return {
        n: tf.cast(v, compute_dtype) if len(v.shape) == 2 and n not in keep else tf.identity(v)
        for n, v in params.items()
    }


def init_cache(config, batch, slots, dtype):
    """Zero cache: n_layer pairs of [batch, n_head, slots, head_size] tensors."""
    shape = [batch, config.n_head, slots, config.head_size]
    return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(config.n_layer))


def stack_cache(cache):
    """Tuple-of-pairs cache -> one tensor [L,2,B,N,T,d]."""
    return tf.stack([tf.stack(pair) for pair in cache])


def unstack_cache(tensor, n_layer):
    """One tensor [L,2,B,N,T,d] -> tuple of n_layer (key, value) pairs [B,N,T,d]."""
    return tuple((tensor[i, 0], tensor[i, 1]) for i in range(n_layer))


def _write(cache_part, new, slot):
    """cache_part [B,N,T,d] with slots slot..slot+R-1 replaced by new [B,N,R,d]."""
    b, n, r = ops.dim(new, 0), ops.dim(new, 1), ops.dim(new, 2)
    grid = tf.meshgrid(tf.range(b), tf.range(n), slot + tf.range(r), indexing="ij")
    return tf.tensor_scatter_nd_update(cache_part, tf.stack(grid, axis=-1), new)  # [B,N,R,3]


def forward_cached(params, weights, config, input_ids, positions, slot, cache, key_mask, dtype):
    """R new tokens per row through the model, reading and extending the cache.

    Args:
      params: the model's float32 variables (embedding lookups); weights: `inference_weights`.
      input_ids, positions: int32 [B,R]; the tokens go to cache slots slot..slot+R-1.
      slot: int32 scalar, the first slot written.
      cache: tuple of n_layer (key, value) [B,N,T,d].
      key_mask: bool [B,T], slots holding real tokens once these R are written.
      dtype: compute dtype.
    Returns:
      (hidden states after ln_f [B,R,E] in the compute dtype, the updated cache).
    """
    c = config
    acc = ops.float_dtype(dtype)
    table = params["transformer/wte/weight"].read_value()
    h = tf.cast(tf.gather(table, input_ids), acc)  # [B,R,E]
    h += tf.cast(tf.gather(weights["transformer/wpe/weight"], positions), acc)  # [B,R,E]
    slots = ops.dim(key_mask, 1)
    query_slot = slot + tf.range(ops.dim(input_ids, 1))  # [R]
    visible = tf.range(slots)[tf.newaxis, :] <= query_slot[:, tf.newaxis]  # [R,T]
    visible = visible[tf.newaxis, tf.newaxis] & key_mask[:, tf.newaxis, tf.newaxis, :]  # [B,1,R,T]
    bias = tf.where(
        visible, tf.constant(0.0, acc), tf.constant(modeling_gpt2.MASK_VALUE, acc)
    )  # [B,1,R,T]
    new_cache = []
    for i, (key_cache, value_cache) in enumerate(cache):
        query, key, value = modeling_gpt2.attention_projections(weights, c, i, h, dtype)
        key_cache, value_cache = _write(key_cache, key, slot), _write(value_cache, value, slot)
        h = modeling_gpt2.block_from_projections(
            weights, c, i, h, query, key_cache, value_cache, bias, dtype
        )
        new_cache.append((key_cache, value_cache))
    x = modeling_gpt2.final_norm(weights, c, h, dtype)
    return x, tuple(new_cache)


def lm_head(weights, x):
    """Next-token logits float32 [B,V] of hidden states x [B,E] (compute dtype)."""
    table = tf.cast(weights["transformer/wte/weight"], x.dtype)  # [V,E], tied head
    return tf.cast(tf.matmul(x, table, transpose_b=True), tf.float32)


def prefill(params, weights, config, input_ids, lengths, slots, dtype):
    """The padded prompts through the model into a fresh cache.

    Args:
      input_ids: int32 [B,P], row b's prompt in its first lengths[b] >= 1 columns.
      lengths: int32 [B].
      slots: cache slots T >= P.
    Returns:
      (logits float32 [B,V] after each prompt's last token, cache, key_mask bool [B,T]).
    """
    batch, width = ops.dim(input_ids, 0), ops.dim(input_ids, 1)
    cache = init_cache(config, batch, slots, dtype)
    key_mask = tf.range(slots)[tf.newaxis, :] < lengths[:, tf.newaxis]  # [B,T]
    positions = tf.broadcast_to(tf.range(width)[tf.newaxis, :], tf.shape(input_ids))  # [B,P]
    x, cache = forward_cached(
        params, weights, config, input_ids, positions, 0, cache, key_mask, dtype
    )
    last = tf.gather(x, lengths - 1, batch_dims=1)  # [B,E]
    return lm_head(weights, last), cache, key_mask


def decode_step(params, weights, config, tokens, positions, slot, cache, key_mask, dtype):
    """One generated token per row at cache slot `slot`.

    Args:
      tokens, positions: int32 [B]; slot: int32 scalar; key_mask: bool [B,T] before this token.
    Returns:
      (logits float32 [B,V] for the next token, cache, key_mask with `slot` set).
    """
    key_mask = key_mask | (tf.range(ops.dim(key_mask, 1)) == slot)[tf.newaxis, :]  # [B,T]
    x, cache = forward_cached(
        params,
        weights,
        config,
        tokens[:, tf.newaxis],
        positions[:, tf.newaxis],
        slot,
        cache,
        key_mask,
        dtype,
    )
    return lm_head(weights, x[:, 0]), cache, key_mask


# ----------------------------------------------------------------------------- choosing tokens


def seen_tokens(input_ids, lengths, vocab_size):
    """bool [B,V]: which ids occur in each row's prompt (its first lengths[b] ids)."""
    batch, width = ops.dim(input_ids, 0), ops.dim(input_ids, 1)
    rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], [batch, width])  # [B,P]
    real = tf.range(width)[tf.newaxis, :] < lengths[:, tf.newaxis]  # [B,P]
    index = tf.stack([rows, input_ids], axis=-1)  # [B,P,2]
    seen = tf.tensor_scatter_nd_max(
        tf.zeros([batch, vocab_size], tf.int32), index, tf.cast(real, tf.int32)
    )
    return seen > 0


def mark_seen(seen, tokens):
    """seen bool [B,V] with tokens int32 [B] set."""
    index = tf.stack([tf.range(ops.dim(tokens, 0)), tokens], axis=-1)  # [B,2]
    return tf.tensor_scatter_nd_update(seen, index, tf.ones_like(tokens, tf.bool))


def _order_keys(x):
    """int64 keys of float32 x with the floats' order (-0.0 just below +0.0; NaN not expected)."""
    bits = tf.bitcast(x, tf.int32)
    return tf.cast(tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits), tf.int64)


def _largest_key(keys, amount, target):
    """Per row, the largest t among int64 keys [B,V] (int32-ranged) with amount(keys >= t) >=
    target, by bisection over the key range (33 halvings cover it: exact). amount(mask [B,V]) ->
    [B] is non-increasing in t; target is at most amount of the row's smallest key."""
    lo = tf.reduce_min(keys, axis=-1)  # amount(all) >= target
    hi = tf.reduce_max(keys, axis=-1) + 1  # amount(none) = 0 < target
    for _ in range(33):
        mid = lo + (hi - lo) // 2
        ok = amount(keys >= mid[:, tf.newaxis]) >= target
        lo, hi = tf.where(ok, mid, lo), tf.where(ok, hi, mid)
    return lo[:, tf.newaxis]  # [B,1]


def _kth_largest(x, k):
    """Per row, the k-th largest value of x [B,V] counting ties ([B,1]), by k rounds of taking
    the largest remaining value (for small k: fewer passes over the row than a bisection)."""
    remaining, kth = x, tf.fill([ops.dim(x, 0), 1], tf.constant(float("inf"), x.dtype))
    taken = tf.zeros([ops.dim(x, 0), 1], tf.int64)
    for _ in range(k):
        top = tf.reduce_max(remaining, axis=-1, keepdims=True)  # [B,1]
        kth = tf.where(taken < k, top, kth)
        hits = remaining >= top
        taken += tf.math.count_nonzero(hits, axis=-1, keepdims=True, dtype=tf.int64)
        remaining = tf.where(hits, tf.constant(-float("inf"), x.dtype), remaining)
    return kth


def filter_logits(logits, sampling, seen=None):
    """Logits float32 [B,V] after the repetition penalty, temperature, top-k and top-p of
    `sampling` (filtered tokens get -inf). `seen` bool [B,V] is needed for the penalty.

    Top-k keeps the tokens at least as likely as the k-th most likely one; top-p the tokens at
    least as likely as the first one (in decreasing order) at which the cumulated probability
    reaches p. Both thresholds are found by bisection on the values' order rather than by a
    sort, which XLA compiles slowly on CPUs (a full sort of the vocabulary at every step).
    """
    s, minus_inf = sampling, tf.constant(-float("inf"), logits.dtype)
    if s.repetition_penalty != 1.0:
        penalised = tf.where(
            logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty
        )
        logits = tf.where(seen, penalised, logits)
    if s.greedy:
        return logits
    if s.temperature != 1.0:
        logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        if s.top_k <= 16:
            logits = tf.where(logits >= _kth_largest(logits, s.top_k), logits, minus_inf)
        else:
            keys = _order_keys(logits)
            count = functools.partial(tf.math.count_nonzero, axis=-1, dtype=tf.int64)
            logits = tf.where(keys >= _largest_key(keys, count, s.top_k), logits, minus_inf)
    if s.top_p < 1.0:
        keys, probs = _order_keys(logits), tf.nn.softmax(logits)

        def mass(mask):
            return tf.reduce_sum(tf.where(mask, probs, 0.0), axis=-1)

        logits = tf.where(keys >= _largest_key(keys, mass, s.top_p), logits, minus_inf)
    return logits


def uniforms(like, seed):
    """float32 uniforms in (0, 1) shaped like `like` [B,V], a pure function of seed (int64 [2]:
    the user's seed and the step) and the element's index: a keyed murmur3-finalizer hash of the
    index (24 bits per draw), computed alike with and without XLA (TF's stateless Philox gives
    other numbers under XLA)."""
    seed = tf.bitcast(tf.cast(seed, tf.int64), tf.uint32)  # [2,2] (low, high words)
    key0 = fmix32(seed[0, 0] ^ fmix32(seed[0, 1] + tf.constant(0x9E3779B9, tf.uint32)))
    key1 = fmix32(seed[1, 0] ^ fmix32(seed[1, 1] + key0))
    index = tf.bitcast(tf.reshape(tf.range(tf.size(like)), tf.shape(like)), tf.uint32)
    bits = fmix32(fmix32(index ^ key0) + key1)
    top24 = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32)
    return (top24 + 0.5) * 2.0**-24


def choose(logits, sampling, seed):
    """int32 [B] next tokens from filtered logits [B,V]: argmax when greedy, else one draw per row
    from their softmax (seed: int64 [2], e.g. (user seed, step))."""
    if sampling.greedy:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    # Gumbel-max: argmax(logits + Gumbel noise) is one draw from softmax(logits); a -inf logit is
    # never chosen.
    gumbel = -tf.math.log(-tf.math.log(uniforms(logits, seed)))
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)


# ----------------------------------------------------------------------------- the whole loop


def generate(params, config, input_ids, lengths, seed, *, output_len, sampling, dtype, stop_id=-1):
    """Prefill, then decode steps until `output_len` tokens per row or every row has emitted
    `stop_id`.

    Args:
      params: the model's float32 variables.
      input_ids: int32 [B,P] right-padded prompts; lengths: int32 [B], 1 <= lengths <= P.
      seed: int64 scalar; draw t uses seed (seed, t).
      output_len: Python int >= 1, tokens generated per row (P + output_len <= n_positions).
      sampling: `Sampling`; dtype: compute dtype; stop_id: Python int, -1 for none.
    Returns:
      (tokens int32 [B,output_len]: a row that emitted `stop_id` holds it in every later column;
       steps: int32 scalar, model calls made (prefill included)).
    """
    weights = inference_weights(params, dtype)
    batch, width = ops.dim(input_ids, 0), ops.dim(input_ids, 1)
    slots = width + output_len
    seed = tf.cast(seed, tf.int64)

    def pick(logits, seen, finished, step):
        token = choose(filter_logits(logits, sampling, seen), sampling, tf.stack([seed, step]))
        if stop_id >= 0:
            token = tf.where(finished, stop_id, token)
            finished = finished | tf.equal(token, stop_id)
        if sampling.repetition_penalty != 1.0:
            seen = mark_seen(seen, token)
        return token, seen, finished

    seen = (
        seen_tokens(input_ids, lengths, config.vocab_size)
        if sampling.repetition_penalty != 1.0
        else tf.zeros([batch, 1], tf.bool)
    )
    logits, cache, key_mask = prefill(params, weights, config, input_ids, lengths, slots, dtype)
    finished = tf.zeros([batch], tf.bool)
    token, seen, finished = pick(logits, seen, finished, tf.constant(0, tf.int64))
    out = tf.tensor_scatter_nd_update(
        tf.fill([output_len, batch], stop_id if stop_id >= 0 else 0), [[0]], token[tf.newaxis]
    )  # [output_len, B]

    def more(t, token, cache, key_mask, seen, finished, out):
        return (t < output_len) & ~tf.reduce_all(finished)

    def step(t, token, cache, key_mask, seen, finished, out):
        slot = width + t - 1
        logits, cache, key_mask = decode_step(
            params, weights, config, token, lengths + t - 1, slot, cache, key_mask, dtype
        )
        token, seen, finished = pick(logits, seen, finished, tf.cast(t, tf.int64))
        out = tf.tensor_scatter_nd_update(out, [[t]], token[tf.newaxis])
        return t + 1, token, cache, key_mask, seen, finished, out

    t, *_, out = tf.while_loop(
        more,
        step,
        (tf.constant(1), token, cache, key_mask, seen, finished, out),
        maximum_iterations=output_len,
    )
    return tf.transpose(out), t


class Generator:
    """`generate` compiled once for one (batch, input_len, output_len), reused for every prompt.

    Args:
      model: modeling_gpt2.GPT2Model; sampling: `Sampling`; dtype: compute dtype.
      stop_id: int, -1 for none; xla: compile with XLA (jit_compile) or run as a TF graph.
    Raises:
      ValueError: input_len + output_len > n_positions, or a size < 1.
    """

    def __init__(self, model, *, batch, input_len, output_len, sampling, dtype, stop_id, xla):
        if min(batch, input_len, output_len) < 1:
            raise ValueError("batch size, input length and output length must be >= 1")
        if input_len + output_len > model.config.n_positions:
            raise ValueError(
                f"input length {input_len} + output length {output_len} exceeds the model's "
                f"{model.config.n_positions} positions"
            )
        self.batch, self.input_len, self.output_len = batch, input_len, output_len
        self.model = model

        def run(input_ids, lengths, seed):
            return generate(
                model.params,
                model.config,
                input_ids,
                lengths,
                seed,
                output_len=output_len,
                sampling=sampling,
                dtype=dtype,
                stop_id=stop_id,
            )

        self._fn = tf.function(
            run,
            jit_compile=xla,
            input_signature=[
                tf.TensorSpec([batch, input_len], tf.int32),
                tf.TensorSpec([batch], tf.int32),
                tf.TensorSpec([], tf.int64),
            ],
        )

    def __call__(self, prompts, seed=0):
        """Generate for up to `batch` prompts (lists of ids, 1..input_len ids each).

        Returns:
          (int32 np.ndarray [len(prompts), output_len], model calls made (prefill included)).
        """
        import numpy as np

        if not 1 <= len(prompts) <= self.batch:
            raise ValueError(f"expected 1..{self.batch} prompts, got {len(prompts)}")
        rows = list(prompts) + [prompts[-1]] * (self.batch - len(prompts))  # static batch
        ids = np.zeros([self.batch, self.input_len], np.int32)
        for i, row in enumerate(rows):
            if not 1 <= len(row) <= self.input_len:
                raise ValueError(f"prompt {i} has {len(row)} tokens; expected 1..{self.input_len}")
            ids[i, : len(row)] = row
        lengths = np.array([len(r) for r in rows], np.int32)
        tokens, steps = self._fn(ids, lengths, np.int64(seed))
        return tokens.numpy()[: len(prompts)], int(steps)
