"""Model primitives every family shares (BERT and GroupBERT today, GPT-2 next).

Parameters are a dict `params {checkpoint name: float32 tf.Variable}`; the functions here create
named variables, read them cast to the compute dtype, and run the pieces the families are made of:
dense layers, LayerNorm, activations, stateless hash dropout, the fused elementwise kernels
around the matmuls, and the multi-head attention helpers. Nothing here knows a family's layer
layout or its data format.

Precision: variables are float32 masters; `weight` casts them at use. Matmuls run in the compute
dtype (float32, bfloat16 or float16); LayerNorm, softmax and activations run in `float_dtype`
(float32, or float64 in float64 runs, which gradient tests use).
"""

import contextlib
import functools
import math
import threading
import zlib

import tensorflow as tf

from common.hashing import fmix32
from model_config import ACTIVATION_NAMES

# ----------------------------------------------------------------------------- activations


def gelu_tanh(x):
    """Google BERT's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return tf.nn.gelu(x, approximate=True)


def gelu_erf(x):
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))): what Hugging Face calls "gelu"."""
    return tf.nn.gelu(x, approximate=False)


# "gelu" means the tanh form, as in Google BERT and the reference app. Hugging Face's "gelu" is the
# erf form (our "gelu_erf"/"gelu_exact") and its "gelu_new" is the tanh form. The two differ by up
# to a few 1e-4 per activation, so a checkpoint should be run with the form it was trained with.
ACTIVATIONS = {
    "gelu": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu_erf": gelu_erf,
    "gelu_exact": gelu_erf,
    "relu": tf.nn.relu,
    "swish": tf.nn.silu,
    "silu": tf.nn.silu,
    "tanh": tf.tanh,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # model_config lists the names


# ----------------------------------------------------------------------------- placement

_PLACEMENT = threading.local()  # .current: the active pipeline.Placement (see `placed`)


@contextlib.contextmanager
def _thread_setting(holder, name, value):
    """Set `holder.name` (a threading.local) to value for the duration of the block."""
    before = getattr(holder, name, None)
    setattr(holder, name, value)
    try:
        yield
    finally:
        setattr(holder, name, before)


def placed(placement):
    """While active (in this thread), `stage` scopes and `add_variable` follow `placement` (a
    `pipeline.Placement` with device names; None: no placement, everything as usual)."""
    return _thread_setting(_PLACEMENT, "current", placement)


def _placement_device(device_of):
    placement = getattr(_PLACEMENT, "current", None)
    return contextlib.nullcontext() if placement is None else tf.device(device_of(placement))


def stage(kind, layer=None):
    """Device scope of one part of the model ("emb", "hid" with its layer index, "mlm", "cls")
    under the active placement; a no-op without one."""
    return _placement_device(lambda p: p.device(kind, layer))


def _variable_scope(name):
    return _placement_device(lambda p: p.variable_device(name))


# ----------------------------------------------------------------------------- variables


def add_variable(params, name, shape, initializer="normal", stddev=0.02, seed=0, trainable=True):
    """Create a float32 `tf.Variable` whose name is exactly `name` and store it in `params[name]`.

    Used by the models and by task code that adds heads (`cls/squad/output_weights`, ...).

    Args:
      params: dict {name: tf.Variable}, updated in place.
      name: checkpoint name, e.g. "cls/squad/output_weights" (no ":0").
      shape: list of ints.
      initializer: "normal" (truncated normal cut at 2 stddev, like TF1's truncated_normal_initializer),
        "zeros", "ones", or a callable(shape) returning the initial value.
      stddev: standard deviation for "normal".
      seed: int; "normal" values depend only on (seed, name), so adding a head does not change the
        initial values of the other variables.
      trainable: False for variables the optimizer must not touch.
    Returns:
      The new float32 tf.Variable of `shape`.
    """
    if name in params:
        raise ValueError(f"variable {name} already exists")
    if initializer == "normal":
        name_hash = zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
        stateless_seed = tf.constant([seed, name_hash], tf.int64)
        value = tf.random.stateless_truncated_normal(shape, seed=stateless_seed, stddev=stddev)
    elif initializer == "zeros":
        value = tf.zeros(shape, tf.float32)
    elif initializer == "ones":
        value = tf.ones(shape, tf.float32)
    else:
        value = tf.cast(initializer(shape), tf.float32)
    # init_scope + an empty name scope: the name must not pick up any surrounding scope prefix.
    with tf.init_scope(), tf.name_scope(""), _variable_scope(name):
        var = tf.Variable(value, name=name, trainable=trainable, dtype=tf.float32)
    if var.name != name + ":0":
        raise ValueError(f"variable {name} was created as {var.name}")
    params[name] = var
    return var


def add_dense(params, scope, n_in, n_out, stddev, seed, bias=True):
    """Add `{scope}/kernel` [n_in, n_out] (truncated normal, `stddev`) and `{scope}/bias` [n_out]
    (zeros, unless bias is False) to `params`; `seed` as `add_variable`."""
    add_variable(params, f"{scope}/kernel", [n_in, n_out], stddev=stddev, seed=seed)
    if bias:
        add_variable(params, f"{scope}/bias", [n_out], "zeros")


def add_layer_norm(params, scope, size):
    """Add `{scope}/beta` (zeros) and `{scope}/gamma` (ones), both [size], to `params`."""
    add_variable(params, f"{scope}/beta", [size], "zeros")
    add_variable(params, f"{scope}/gamma", [size], "ones")


# ----------------------------------------------------------------------------- dtypes and reads


def float_dtype(compute_dtype):
    """Dtype for LayerNorm, softmax, logits and losses: float64 in float64 runs, else float32."""
    return tf.float64 if compute_dtype == tf.float64 else tf.float32


def check_compute_dtype(compute_dtype):
    """The tf.DType of `compute_dtype` (a dtype or its name); ValueError unless it is float32,
    bfloat16, float16 or float64."""
    dtype = tf.as_dtype(compute_dtype)
    if dtype not in (tf.float32, tf.bfloat16, tf.float16, tf.float64):
        raise ValueError(
            f"compute_dtype must be float32, bfloat16, float16 or float64, not {dtype}"
        )
    return dtype


def dim(x, axis):
    """Static size of an axis when known (keeps shapes static for the tracer), else dynamic."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def weight(params, name, dtype):
    """params[name] (float32 master) cast to `dtype` at use."""
    return tf.cast(params[name], dtype)


def dense(params, scope, x, bias=True):
    """x [N, in] (compute dtype) -> [N, out] with `{scope}/kernel` and optional `{scope}/bias`."""
    y = tf.matmul(x, weight(params, f"{scope}/kernel", x.dtype))
    if bias:
        y = tf.nn.bias_add(y, weight(params, f"{scope}/bias", x.dtype))
    return y


def norm_params(params, scope, dtype):
    """(`{scope}/gamma`, `{scope}/beta`), each [H], cast to `dtype`."""
    return weight(params, f"{scope}/gamma", dtype), weight(params, f"{scope}/beta", dtype)


def lookup(table, ids):
    """tf.gather(table, ids) whose gradient is a dense [V, H] tensor, not IndexedSlices.

    A tied word table also feeds the output projection; a dense gather gradient is added to that
    one directly instead of being concatenated with it as slices and scattered afterwards.

    Args:
      table: float tensor [V, H]; ids: int32 [...].
    Returns:
      [..., H] in table's dtype.
    """

    @tf.custom_gradient
    def gather(table):
        def grad(dy):
            rows = tf.reshape(dy, [-1, table.shape[-1]])  # [N, H]
            return tf.math.unsorted_segment_sum(rows, tf.reshape(ids, [-1]), table.shape[0])

        return tf.gather(table, ids), grad

    return gather(table)


# ----------------------------------------------------------------------------- fused kernels
#
# Around each matmul sit chains of cheap elementwise ops (bias, GELU, dropout, residual add,
# LayerNorm, softmax). Run op by op they took about a quarter of a bfloat16 training step on CPU,
# so each chain is a pure function run as one XLA kernel forward and one backward (which
# recomputes what it needs from the inputs, dropout masks included). Inside an XLA-compiled step
# these simply inline; without XLA the matmuls stay with TensorFlow's (oneDNN) kernels, which are
# much faster than XLA's in bfloat16.


_PLAIN = threading.local()  # .active: trace the kernels as plain ops (see `plain_kernels`)


def plain_kernels():
    """While active (in this thread), `xla_kernel` functions are traced as ordinary TensorFlow ops.

    For graphs that must run without XLA's JIT: a SavedModel for serving (TensorFlow Serving
    leaves XLA:CPU off by default and then refuses functions marked jit_compile). Same values up
    to float rounding; only forward passes are meant to be traced this way.
    """
    return _thread_setting(_PLAIN, "active", True)


def xla_kernel(fn):
    """Wrap a pure function fn(*floats, *others, **static) -> tensor as one XLA kernel.

    Returns call(floats, others=(), **static) with fn's value, differentiable in `floats` (float
    tensors), not in `others` (tensors or None) nor in `static` (Python values). Inside
    `plain_kernels()` the call is fn itself, unfused.
    """
    forward = tf.function(fn, jit_compile=True, autograph=False)

    def backward_fn(floats, others, dy, **static):
        with tf.GradientTape() as tape:
            tape.watch(floats)
            y = fn(*floats, *others, **static)
        return tape.gradient(y, floats, output_gradients=dy)

    backward = tf.function(backward_fn, jit_compile=True, autograph=False)

    def call(floats, others=(), **static):
        if getattr(_PLAIN, "active", False):
            return fn(*floats, *others, **static)

        @tf.custom_gradient
        def apply(*floats):
            def grad(dy):
                return backward(list(floats), list(others), dy, **static)

            return forward(*floats, *others, **static), grad

        return apply(*floats)

    return call


def layer_norm_math(x, gamma, beta, epsilon):
    """LayerNorm of x [..., H] over the last axis with gamma, beta [H], in x's dtype."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


# ----------------------------------------------------------------------------- dropout
#
# Dropout draws 16-bit uniforms from a keyed integer hash of each element's index: a handful of
# elementwise integer ops that fuse into the kernels and are recomputed in the backward pass,
# where XLA's CPU lowering of TF's Philox kernels costs more than a layer's matmuls. Each use of
# dropout folds its own salt into the step's seed, so masks are a pure function of
# (dropout_seed, salt) and recomputation or a resumed run draws the same masks.


def dropout_keys(dropout_seed, salt):
    """uint32 [2] hash keys of one use of dropout, from the step's seed (int32/int64 [2]) and the
    use's salt (Python int)."""
    seed = tf.random.experimental.stateless_fold_in(dropout_seed, salt, alg=_RNG)
    return _keys(seed)


# Named, not "auto_select": XLA's automatic choice is another algorithm, which would make the masks
# depend on whether the step is compiled (and differ between pipelined and plain steps).
_RNG = "philox"


def _keys(seed):
    return tf.random.stateless_uniform(
        [2], seed, minval=None, maxval=None, dtype=tf.uint32, alg=_RNG
    )


def keep_mask(index, keys, rate, dtype):
    """Dropout multipliers at flat element indices (see `dropout_keep_mask`).

    Args:
      index: int32 tensor of any shape; keys: uint32 [2] from `dropout_keys`; rate: Python float.
    Returns:
      `dtype` tensor shaped like index: 0 or 1 / (1 - rounded rate).
    """
    index = tf.bitcast(index, tf.uint32)
    one = tf.constant(1, tf.uint32)
    word = tf.bitwise.bitwise_xor(tf.bitwise.right_shift(index, one), keys[0])
    word = fmix32(fmix32(word) + keys[1])
    half = tf.bitwise.left_shift(tf.bitwise.bitwise_and(index, one), tf.constant(4, tf.uint32))
    bits = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(word, half), tf.constant(0xFFFF, tf.uint32)
    )
    threshold = min(max(round(rate * 2**16), 1), 2**16 - 1)
    scale = 2**16 / (2**16 - threshold)
    keep = bits >= tf.constant(threshold, tf.uint32)
    return tf.where(keep, tf.constant(scale, dtype), tf.constant(0.0, dtype))


def iota(shape):
    """int32 tensor of `shape` (list of ints) holding 0, 1, ... in row-major order."""
    return tf.reshape(tf.range(math.prod(shape), dtype=tf.int32), shape)


def dropout_keep_mask(shape, rate, seed, index=None):
    """Dropout multipliers: 0 with probability `rate`, else 1 / (1 - rate), as float32.

    Element i of a tensor gets half i % 2 (the low 16 bits first) of word i // 2 of a
    counter-mode stream, word k = mix32(mix32(k ^ key0) + key1) with (key0, key1) drawn from
    `seed`. The rate is rounded to a multiple of 2^-16 (0.1 -> 0.1000061) and the scale uses the
    rounded rate, so E[mask] = 1 exactly.

    Args:
      shape: static shape (list of ints) of the mask.
      rate: Python float in (0, 1).
      seed: int32/int64 [2] tensor; the mask is a pure function of (seed, rate, element index).
      index: optional int32 tensor of `shape`: the flat index each element has in a larger tensor
        whose mask is wanted at those elements only (default: 0, 1, ..., the tensor itself).
    Returns:
      float32 tensor of `shape`.
    """
    return keep_mask(iota(shape) if index is None else index, _keys(seed), rate, tf.float32)


def layer_salt(layer_index, use):
    """Dropout salt of one use in layer `layer_index`: 1000 (layer_index + 1) + use.

    Each family numbers its uses per layer (BERT: 0 attention probabilities, 1 attention output,
    2 feed-forward output); salts below 1000 are left for uses outside the layers.
    """
    return 1000 * (layer_index + 1) + use


def keys_if(rate, training, dropout_seed, salt):
    """Hash keys (uint32 [2]) of this use of dropout, or None when it is off."""
    if not training or rate == 0.0:
        return None
    return dropout_keys(dropout_seed, salt)


def dropout(x, rate, training, dropout_seed, salt, index=None):
    """Stateless dropout; identity when not training or rate is 0.

    The models' own dropouts are fused into their kernels and draw the same masks as this.

    Args:
      x: tensor with a static shape.
      rate: Python float, probability of dropping.
      training: Python bool.
      dropout_seed: int32/int64 [2] tensor (per step).
      salt: Python int identifying this use of dropout.
      index: optional int32 tensor shaped like x, see `dropout_keep_mask`: x holds some elements
        of a larger tensor and gets the masks that tensor would get there.
    Returns:
      x * mask (see `dropout_keep_mask`), same shape and dtype as x.
    """
    keys = keys_if(rate, training, dropout_seed, salt)
    if keys is None:
        return x
    if index is None:
        index = iota(x.shape.as_list())
    return x * keep_mask(index, keys, rate, x.dtype)


# ----------------------------------------------------------------------------- the fused kernels


def _kernel_norm(x, gamma, beta, keys=None, *, epsilon, rate, dtype):
    """dropout(LayerNorm(x)) with x, gamma, beta in the float dtype; result cast to `dtype`."""
    y = layer_norm_math(x, gamma, beta, epsilon)
    if keys is not None:
        y *= keep_mask(iota(y.shape.as_list()), keys, rate, y.dtype)
    return tf.cast(y, dtype)


def _kernel_add_norm(x, a, gamma, beta, keys=None, index=None, *, epsilon, rate):
    """LayerNorm(x + dropout(a)) in gamma's dtype, cast to x's dtype (the post-LN residual)."""
    acc = gamma.dtype
    a = tf.cast(a, acc)
    if keys is not None:
        a *= keep_mask(iota(a.shape.as_list()) if index is None else index, keys, rate, acc)
    return tf.cast(layer_norm_math(tf.cast(x, acc) + a, gamma, beta, epsilon), x.dtype)


def _kernel_activation(x, *, name):
    """ACTIVATIONS[name](x) computed in float32 (float64 for float64 x), cast back to x's dtype."""
    return tf.cast(ACTIVATIONS[name](tf.cast(x, float_dtype(x.dtype))), x.dtype)


def _kernel_attention_probs(scores, mask=None, keys=None, index=None, *, scale, rate, acc):
    """dropout(softmax(scores * scale + mask)) computed in `acc`, cast to the scores' dtype."""
    s = tf.cast(scores, acc) * scale
    if mask is not None:
        s += tf.cast(mask, acc)
    probs = tf.nn.softmax(s, axis=-1)
    if keys is not None:
        probs *= keep_mask(iota(probs.shape.as_list()) if index is None else index, keys, rate, acc)
    return tf.cast(probs, scores.dtype)


# fused_norm([x, gamma, beta], [keys or None], epsilon=, rate=, dtype=): dropout(LayerNorm(x)),
#   x [..., H] and gamma, beta [H] in the float dtype; returns [..., H] in `dtype`.
fused_norm = xla_kernel(_kernel_norm)
# fused_add_norm([x, a, gamma, beta], [keys, index], epsilon=, rate=): LayerNorm(x + dropout(a)),
#   x, a [N, H] (compute dtype), gamma, beta [H] float; index int32 [N, H] or None (see
#   `dropout_keep_mask`); returns [N, H] in x's dtype.
fused_add_norm = xla_kernel(_kernel_add_norm)
# fused_activation([x], name=): ACTIVATIONS[name] in the float dtype; returns x's shape and dtype.
fused_activation = xla_kernel(_kernel_activation)
# fused_attention_probs([scores], [mask, keys, index], scale=, rate=, acc=):
#   dropout(softmax(scores * scale + mask)), scores [B,N,R,S] (compute dtype), mask additive
#   [B,1,1,S] or None, index int32 [B,N,R,S] or None; returns [B,N,R,S] in the scores' dtype.
fused_attention_probs = xla_kernel(_kernel_attention_probs)


def layer_norm(params, scope, x, epsilon):
    """LayerNorm over the last axis with `{scope}/gamma`, `{scope}/beta`, computed in float32.

    Args:
      x: [..., H] in the compute dtype.
    Returns:
      The same shape and dtype as x.
    """
    acc = float_dtype(x.dtype)
    gamma, beta = norm_params(params, scope, acc)
    return fused_norm([tf.cast(x, acc), gamma, beta], epsilon=epsilon, rate=0.0, dtype=x.dtype)


# ----------------------------------------------------------------------------- attention

QKV = ("query", "key", "value")


def add_attention(params, config, layer, seed):
    """Add one layer's self-attention variables under Google BERT's names to `params`.

    Q/K/V kernels `{layer}/attention/self/{query,key,value}/kernel` [H,H] (config.use_qkv_split)
    or one fused `{layer}/attention/self/kernel/qkv_weight` [H,3H]; biases
    `{layer}/attention/self/{part}/bias` [H] if config.use_qkv_bias; the output projection
    `{layer}/attention/projection/dense` (bias if config.use_attention_projection_bias). Reads
    hidden_size and initializer_range too; `seed` as `add_variable`.
    """
    c, h = config, config.hidden_size
    normal = functools.partial(add_variable, stddev=c.initializer_range, seed=seed)
    if c.use_qkv_split:
        for part in QKV:
            normal(params, f"{layer}/attention/self/{part}/kernel", [h, h])
    else:
        # Columns [0:H] query, [H:2H] key, [2H:3H] value; heads are contiguous within each.
        normal(params, f"{layer}/attention/self/kernel/qkv_weight", [h, 3 * h])
    if c.use_qkv_bias:
        for part in QKV:
            # The key bias adds the same value to every score of a query, so it cancels in the
            # softmax: kept (checkpoints have it) but not trained, as in the reference.
            add_variable(
                params,
                f"{layer}/attention/self/{part}/bias",
                [h],
                "zeros",
                trainable=part != "key",
            )
    add_dense(
        params,
        f"{layer}/attention/projection/dense",
        h,
        h,
        c.initializer_range,
        seed,
        bias=c.use_attention_projection_bias,
    )


def qkv_projection(params, config, layer, x2d, parts):
    """x2d [N,H] times the kernel columns of `parts` (a contiguous run of QKV), plus biases.

    Split kernels are concatenated at use; the fused [H,3H] kernel is sliced ([0:H] query,
    [H:2H] key, [2H:3H] value). Variables as `add_attention`.

    Returns:
      [N, len(parts)*H] in x2d's dtype.
    """
    dtype, h = x2d.dtype, config.hidden_size
    scope = f"{layer}/attention/self"
    if config.use_qkv_split:
        kernels = [weight(params, f"{scope}/{p}/kernel", dtype) for p in parts]
        kernel = kernels[0] if len(kernels) == 1 else tf.concat(kernels, 1)
    else:
        kernel = weight(params, f"{scope}/kernel/qkv_weight", dtype)
        if len(parts) < len(QKV):
            first = QKV.index(parts[0]) * h
            kernel = kernel[:, first : first + len(parts) * h]
    y = tf.matmul(x2d, kernel)  # [N, len(parts)*H]
    if config.use_qkv_bias:
        biases = [weight(params, f"{scope}/{p}/bias", dtype) for p in parts]
        y = tf.nn.bias_add(y, biases[0] if len(biases) == 1 else tf.concat(biases, 0))
    return y


def split_heads(y, seq_length, parts, heads):
    """y [B*S, parts*H] -> a list of `parts` tensors [B,N,S,d] (N = heads, d = H / N)."""
    head_size = y.shape[-1] // (parts * heads)
    y = tf.reshape(y, [-1, seq_length, parts, heads, head_size])  # [B,S,parts,N,d]
    return tf.unstack(tf.transpose(y, [2, 0, 3, 1, 4]))  # parts x [B,N,S,d]
