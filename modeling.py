"""BERT as plain functions over explicit float32 `tf.Variable`s named like Google BERT's checkpoints.

The model is a dict `params {name: tf.Variable}` whose keys are the TF1 checkpoint names
(`bert/encoder/layer_0/attention/self/query/kernel`, ...), built by `BertModel`, and a few pure
functions that read it: `embeddings`, `attention_mask`, `encoder_layer`, `bert_encoder`,
`pretraining_heads` and `pretraining_loss`. No Keras layers: Keras 3 keeps only leaf names.

Semantics follow the reference app (Graphcore's TF1 BERT): post-LN encoder, LayerNorm epsilon 1e-3,
additive attention mask (1 - mask) * -1000, tied MLM projection evaluated only at the masked
positions, MLM loss sum(w * CE) / (sum(w) + 1e-5), and the optional "static mask" (remask) layout.

Precision: variables are float32 masters. `compute_dtype` (float32, bfloat16 or float16) casts
weights and activations at use; matmuls run in the compute dtype, while LayerNorm (with its
residual add and dropout), softmax, activations, logits and losses are computed in float32.
float64 is also accepted (then those run in float64 too), which is what gradient tests use.

Speed (CPU): the elementwise chains between matmuls run as fused XLA kernels even when the step
is not XLA-compiled (`_xla_kernel`), dropout masks come from a cheap counter-based hash instead
of Philox, and `BertModel` evaluates the last encoder layer only at the rows its heads read.
"""

import functools
import math
import zlib

import tensorflow as tf

from common.hashing import fmix32
from model_config import ACTIVATION_NAMES, BertConfig  # noqa: F401 (BertConfig: modeling.BertConfig)

ATTENTION_MASK_VALUE = -1000.0  # reference value; representable in bf16 and fp16
MLM_WEIGHT_EPSILON = 1e-5  # MLM loss denominator: sum(weights) + this


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


# ----------------------------------------------------------------------------- variables


def add_variable(params, name, shape, initializer="normal", stddev=0.02, seed=0, trainable=True):
    """Create a float32 `tf.Variable` whose name is exactly `name` and store it in `params[name]`.

    Used by `BertModel` and by task code that adds heads (`cls/squad/output_weights`, ...).

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
      The new tf.Variable.
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
    with tf.init_scope(), tf.name_scope(""):
        var = tf.Variable(value, name=name, trainable=trainable, dtype=tf.float32)
    if var.name != name + ":0":
        raise ValueError(f"variable {name} was created as {var.name}")
    params[name] = var
    return var


def _add_dense(params, scope, n_in, n_out, config, seed, bias=True):
    add_variable(
        params, f"{scope}/kernel", [n_in, n_out], stddev=config.initializer_range, seed=seed
    )
    if bias:
        add_variable(params, f"{scope}/bias", [n_out], "zeros")


def _add_layer_norm(params, scope, size):
    add_variable(params, f"{scope}/beta", [size], "zeros")
    add_variable(params, f"{scope}/gamma", [size], "ones")


class BertModel(tf.Module):
    """BERT parameters (Google checkpoint names) plus the heads for pretraining.

    Attributes:
      config: BertConfig.
      heads: tuple, a subset of ("mlm", "nsp").
      params: ordered dict {checkpoint name: float32 tf.Variable}. Other code may add heads with
        `add_variable(model.params, ...)`.
    """

    HEADS = ("mlm", "nsp")

    def __init__(self, config, heads=("mlm", "nsp"), seed=0):
        super().__init__(name="bert_model")
        unknown = set(heads) - set(self.HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; known: {self.HEADS}")
        self.config = config
        self.heads = tuple(heads)
        self.params = _create_params(config, self.heads, seed)

    @property
    def trainable_names(self):
        """Names of the trainable variables, in creation order (the key bias is not trainable)."""
        return [name for name, var in self.params.items() if var.trainable]

    def __call__(self, features, training=False, dropout_seed=None, compute_dtype=tf.float32):
        """Encoder plus this model's heads: see `bert_encoder` and `pretraining_heads`.

        The heads read only the masked slots and [CLS], so the last encoder layer is evaluated
        for those rows only (keys and values still span the sequence) and gives the same values.
        The full "sequence_output" is a separate branch: a traced function that does not use it
        never computes it.

        Returns:
          dict with "sequence_output" [B,S,H] and "pooled_output" [B,H] (compute dtype), plus
          "mlm_logits" [B,P,V] and/or "nsp_logits" [B,2] (float32).
        """
        c = self.config
        _, last_layer = _encode(self.params, c, features, training, dropout_seed, compute_dtype)
        sequence_output = last_layer()
        if not self.heads:
            pooled = _pooler(self.params, sequence_output[:, _cls_slot(c)])
            return {"sequence_output": sequence_output, "pooled_output": pooled}
        num_masked = c.max_predictions_per_seq
        if c.static_mask:
            rows = num_masked + 1  # the masked slots, then [CLS]
        elif "mlm" in self.heads:
            positions = tf.cast(features["masked_lm_positions"], tf.int32)  # [B,P]
            num_masked = _dim(positions, 1)
            rows = tf.pad(positions, [[0, 0], [0, 1]])  # [B,P+1]: [CLS] is slot 0
        else:
            rows, num_masked = 1, 0
        head_input = last_layer(rows)  # [B,R,H]
        pooled = _pooler(self.params, head_input[:, num_masked])
        outputs = {"sequence_output": sequence_output, "pooled_output": pooled}
        if "mlm" in self.heads:
            outputs["mlm_logits"] = _mlm_logits(self.params, c, head_input[:, :num_masked])
        if "nsp" in self.heads:
            outputs["nsp_logits"] = _nsp_logits(self.params, pooled)
        return outputs


def _add_attention(params, config, layer, seed):
    """Q/K/V kernels (split or fused), optional Q/K/V biases and the output projection."""
    c, h = config, config.hidden_size
    normal = functools.partial(add_variable, stddev=c.initializer_range, seed=seed)
    if c.use_qkv_split:
        for part in ("query", "key", "value"):
            normal(params, f"{layer}/attention/self/{part}/kernel", [h, h])
    else:
        # Columns [0:H] query, [H:2H] key, [2H:3H] value; heads are contiguous within each.
        normal(params, f"{layer}/attention/self/kernel/qkv_weight", [h, 3 * h])
    if c.use_qkv_bias:
        for part in ("query", "key", "value"):
            # The key bias adds the same value to every score of a query, so it cancels in the
            # softmax: kept (checkpoints have it) but not trained, as in the reference.
            add_variable(
                params,
                f"{layer}/attention/self/{part}/bias",
                [h],
                "zeros",
                trainable=part != "key",
            )
    _add_dense(
        params,
        f"{layer}/attention/projection/dense",
        h,
        h,
        c,
        seed,
        bias=c.use_attention_projection_bias,
    )


def _create_params(config, heads, seed):
    c = config
    h, params = c.hidden_size, {}
    normal = functools.partial(add_variable, stddev=c.initializer_range, seed=seed)
    normal(params, "bert/embeddings/word_embeddings", [c.vocab_size, h])
    normal(params, "bert/embeddings/token_type_embeddings", [c.type_vocab_size, h])
    normal(params, "bert/embeddings/position_embeddings", [c.max_position_embeddings, h])
    _add_layer_norm(params, "bert/embeddings/LayerNorm", h)
    if c.groupbert:  # its own encoder layers and final LayerNorm
        import modeling_groupbert

        modeling_groupbert.create_groupbert_params(params, c, seed)
    for i in range(0 if c.groupbert else c.num_hidden_layers):
        layer = f"bert/encoder/layer_{i}"
        _add_attention(params, c, layer, seed)
        _add_layer_norm(params, f"{layer}/attention/projection/LayerNorm", h)
        _add_dense(params, f"{layer}/intermediate/dense", h, c.intermediate_size, c, seed)
        _add_dense(params, f"{layer}/output/dense", c.intermediate_size, h, c, seed)
        _add_layer_norm(params, f"{layer}/output/LayerNorm", h)
    _add_dense(params, "bert/pooler/dense", h, h, c, seed)
    if "mlm" in heads:
        if c.use_cls_layer:
            _add_dense(params, "cls/predictions/transform/dense", h, h, c, seed)
            _add_layer_norm(params, "cls/predictions/transform/LayerNorm", h)
        if c.use_prediction_bias:
            add_variable(params, "cls/predictions/output_bias", [c.vocab_size], "zeros")
    if "nsp" in heads:
        normal(params, "cls/seq_relationship/output_weights", [2, h])
        add_variable(params, "cls/seq_relationship/output_bias", [2], "zeros")
    return params


# ----------------------------------------------------------------------------- building blocks


def _float_dtype(compute_dtype):
    """Dtype for LayerNorm, softmax, logits and losses: float64 in float64 runs, else float32."""
    return tf.float64 if compute_dtype == tf.float64 else tf.float32


def _check_compute_dtype(compute_dtype):
    dtype = tf.as_dtype(compute_dtype)
    if dtype not in (tf.float32, tf.bfloat16, tf.float16, tf.float64):
        raise ValueError(
            f"compute_dtype must be float32, bfloat16, float16 or float64, not {dtype}"
        )
    return dtype


def _dim(x, axis):
    """Static size of an axis when known (keeps shapes static for the tracer), else dynamic."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _weight(params, name, dtype):
    return tf.cast(params[name], dtype)


def _dense(params, scope, x, bias=True):
    """x [N, in] (compute dtype) -> [N, out] with `{scope}/kernel` and optional `{scope}/bias`."""
    y = tf.matmul(x, _weight(params, f"{scope}/kernel", x.dtype))
    if bias:
        y = tf.nn.bias_add(y, _weight(params, f"{scope}/bias", x.dtype))
    return y


# ----------------------------------------------------------------------------- fused kernels
#
# Around each matmul sit chains of cheap elementwise ops (bias, GELU, dropout, residual add,
# LayerNorm, softmax). Run op by op they took about a quarter of a bfloat16 training step on CPU,
# so each chain is a pure function run as one XLA kernel forward and one backward (which
# recomputes what it needs from the inputs, dropout masks included). Inside an XLA-compiled step these simply
# inline; without XLA the matmuls stay with TensorFlow's (oneDNN) kernels, which are much
# faster than XLA's in bfloat16.


def _xla_kernel(fn):
    """Wrap a pure function fn(*floats, *others, **static) -> tensor.

    Returns call(floats, others=(), **static) with fn's value, differentiable in `floats` (float
    tensors), not in `others` (tensors or None) nor in `static` (Python values).
    """
    forward = tf.function(fn, jit_compile=True, autograph=False)

    def backward_fn(floats, others, dy, **static):
        with tf.GradientTape() as tape:
            tape.watch(floats)
            y = fn(*floats, *others, **static)
        return tape.gradient(y, floats, output_gradients=dy)

    backward = tf.function(backward_fn, jit_compile=True, autograph=False)

    def call(floats, others=(), **static):
        @tf.custom_gradient
        def apply(*floats):
            def grad(dy):
                return backward(list(floats), list(others), dy, **static)

            return forward(*floats, *others, **static), grad

        return apply(*floats)

    return call


def _layer_norm_math(x, gamma, beta, epsilon):
    """LayerNorm of x over the last axis, in x's dtype."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


# Dropout draws 16-bit uniforms from a keyed integer hash of each element's index: a handful of
# elementwise integer ops that fuse into the kernels below and are recomputed in the backward
# pass, where XLA's CPU lowering of TF's Philox kernels costs more than a layer's matmuls.
def _dropout_keys(dropout_seed, salt):
    """uint32 [2] hash keys of one use of dropout, from the step's seed and the use's salt."""
    seed = tf.random.experimental.stateless_fold_in(dropout_seed, salt)
    return tf.random.stateless_uniform([2], seed, minval=None, maxval=None, dtype=tf.uint32)


def _keep_mask(index, keys, rate, dtype):
    """Dropout multipliers at flat element indices `index` (int32): see `dropout_keep_mask`."""
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


def _iota(shape):
    """int32 tensor of `shape` holding 0, 1, ... in row-major order."""
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
    keys = tf.random.stateless_uniform([2], seed, minval=None, maxval=None, dtype=tf.uint32)
    return _keep_mask(_iota(shape) if index is None else index, keys, rate, tf.float32)


def _kernel_norm(x, gamma, beta, keys=None, *, epsilon, rate, dtype):
    """dropout(LayerNorm(x)) with x, gamma, beta in the float dtype; result cast to `dtype`."""
    y = _layer_norm_math(x, gamma, beta, epsilon)
    if keys is not None:
        y *= _keep_mask(_iota(y.shape.as_list()), keys, rate, y.dtype)
    return tf.cast(y, dtype)


def _kernel_add_norm(x, a, gamma, beta, keys=None, index=None, *, epsilon, rate):
    """LayerNorm(x + dropout(a)) in gamma's dtype, cast to x's dtype (the post-LN residual)."""
    acc = gamma.dtype
    a = tf.cast(a, acc)
    if keys is not None:
        a *= _keep_mask(_iota(a.shape.as_list()) if index is None else index, keys, rate, acc)
    return tf.cast(_layer_norm_math(tf.cast(x, acc) + a, gamma, beta, epsilon), x.dtype)


def _kernel_activation(x, *, name):
    """ACTIVATIONS[name](x) computed in float32 (float64 for float64 x), cast back to x's dtype."""
    return tf.cast(ACTIVATIONS[name](tf.cast(x, _float_dtype(x.dtype))), x.dtype)


def _kernel_attention_probs(scores, mask=None, keys=None, index=None, *, scale, rate, acc):
    """dropout(softmax(scores * scale + mask)) computed in `acc`, cast to the scores' dtype."""
    s = tf.cast(scores, acc) * scale
    if mask is not None:
        s += tf.cast(mask, acc)
    probs = tf.nn.softmax(s, axis=-1)
    if keys is not None:
        probs *= _keep_mask(
            _iota(probs.shape.as_list()) if index is None else index, keys, rate, acc
        )
    return tf.cast(probs, scores.dtype)


_fused_norm = _xla_kernel(_kernel_norm)
_fused_add_norm = _xla_kernel(_kernel_add_norm)
_fused_activation = _xla_kernel(_kernel_activation)
_fused_attention_probs = _xla_kernel(_kernel_attention_probs)


def _norm_params(params, scope, dtype):
    return _weight(params, f"{scope}/gamma", dtype), _weight(params, f"{scope}/beta", dtype)


def layer_norm(params, scope, x, epsilon):
    """LayerNorm over the last axis with `{scope}/gamma`, `{scope}/beta`, computed in float32.

    Args:
      x: [..., H] in the compute dtype. Returns the same shape and dtype.
    """
    acc = _float_dtype(x.dtype)
    gamma, beta = _norm_params(params, scope, acc)
    return _fused_norm([tf.cast(x, acc), gamma, beta], epsilon=epsilon, rate=0.0, dtype=x.dtype)


# Dropout salts: each use of dropout folds its own number into the step's seed, so masks are a
# pure function of (dropout_seed, salt) and recomputation or a resumed run draws the same masks.
_SALT_EMBEDDINGS = 1


def _layer_salt(layer_index, use):
    """use: 0 attention probabilities, 1 attention output, 2 feed-forward output."""
    return 1000 * (layer_index + 1) + use


def _keys_if(rate, training, dropout_seed, salt):
    """Hash keys of this use of dropout, or None when it is off."""
    if not training or rate == 0.0:
        return None
    return _dropout_keys(dropout_seed, salt)


def dropout(x, rate, training, dropout_seed, salt, index=None):
    """Stateless dropout; identity when not training or rate is 0.

    The model's own dropouts are fused into its kernels and draw the same masks as this.

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
    keys = _keys_if(rate, training, dropout_seed, salt)
    if keys is None:
        return x
    if index is None:
        index = _iota(x.shape.as_list())
    return x * _keep_mask(index, keys, rate, x.dtype)


def _lookup(table, ids):
    """tf.gather(table, ids) whose gradient is a dense [V, H] tensor, not IndexedSlices.

    The word table also feeds the tied MLM projection; a dense gather gradient is added to that
    one directly instead of being concatenated with it as slices and scattered afterwards.

    Args:
      table: float tensor [V, H]; ids: int32 [...]. Returns [..., H].
    """

    @tf.custom_gradient
    def gather(table):
        def grad(dy):
            rows = tf.reshape(dy, [-1, table.shape[-1]])  # [N, H]
            return tf.math.unsorted_segment_sum(rows, tf.reshape(ids, [-1]), table.shape[0])

        return tf.gather(table, ids), grad

    return gather(table)


def embeddings(
    params,
    config,
    input_ids,
    segment_ids,
    positions=None,
    training=False,
    dropout_seed=None,
    compute_dtype=tf.float32,
):
    """Word + position + token-type embeddings, LayerNorm, dropout.

    Args:
      input_ids, segment_ids: int32 [B,S].
      positions: int32 [B,S] position of each slot (static-mask layout) or None for 0..S-1. Values
        >= max_position_embeddings (the remask pad value 384) are clipped: such slots are padding.
        config.position_offset is added first: slot i reads row offset + i (RoBERTa: 2 + i, as
        Hugging Face's RoBERTa for real tokens; its pad slots read row 1, but they are masked keys
        whose outputs are never used).
    Returns:
      [B,S,H] in compute_dtype.
    """
    acc = _float_dtype(compute_dtype)
    x = tf.cast(_lookup(params["bert/embeddings/word_embeddings"].read_value(), input_ids), acc)
    table = params["bert/embeddings/position_embeddings"]
    offset = config.position_offset
    if positions is None:
        x += tf.cast(table[offset : offset + _dim(input_ids, 1)], acc)  # [S,H] broadcast over B
    else:
        positions = tf.minimum(positions + offset, config.max_position_embeddings - 1)
        x += tf.cast(_lookup(table.read_value(), positions), acc)
    # One-hot times table (as Google does) gives a dense gradient for this tiny table.
    one_hot = tf.one_hot(segment_ids, config.type_vocab_size, dtype=acc)  # [B,S,T]
    token_type = _weight(params, "bert/embeddings/token_type_embeddings", acc)
    x += tf.einsum("bst,th->bsh", one_hot, token_type)
    rate = config.hidden_dropout_prob
    return _fused_norm(
        [x, *_norm_params(params, "bert/embeddings/LayerNorm", acc)],
        [_keys_if(rate, training, dropout_seed, _SALT_EMBEDDINGS)],
        epsilon=config.layer_norm_eps,
        rate=rate,
        dtype=tf.as_dtype(compute_dtype),
    )


def attention_mask(config, features, dtype=tf.float32):
    """Additive attention mask (1 - visible) * -1000 over keys, or None when every key is visible.

    Standard layout: visible = features["input_mask"] (None when the key is absent). Static-mask
    layout: slot j is visible if (j < mask_padding_index or j >= max_predictions_per_seq) and
    j < seq_padding_index.

    Returns:
      `dtype` [B,1,1,S] (broadcasts over heads and queries), or None.
    """
    if config.static_mask:
        seq_length = _dim(features["input_ids"], 1)
        slot = tf.range(seq_length)[tf.newaxis, :]  # [1,S]
        mask_end = tf.reshape(tf.cast(features["mask_padding_index"], tf.int32), [-1, 1])  # [B,1]
        seq_end = tf.reshape(tf.cast(features["seq_padding_index"], tf.int32), [-1, 1])  # [B,1]
        visible = ((slot < mask_end) | (slot >= config.max_predictions_per_seq)) & (slot < seq_end)
    elif "input_mask" in features:
        visible = features["input_mask"]
    else:
        return None
    hidden = 1.0 - tf.cast(visible, dtype)  # [B,S]
    return (hidden * ATTENTION_MASK_VALUE)[:, tf.newaxis, tf.newaxis, :]  # [B,1,1,S]


_QKV = ("query", "key", "value")


def _qkv_projection(params, config, layer, x2d, parts):
    """x2d [N,H] times the kernel columns of `parts` (a contiguous run of _QKV): [N, len(parts)*H].

    Split kernels are concatenated at use; the fused [H,3H] kernel is sliced ([0:H] query,
    [H:2H] key, [2H:3H] value).
    """
    dtype, h = x2d.dtype, config.hidden_size
    scope = f"{layer}/attention/self"
    if config.use_qkv_split:
        kernels = [_weight(params, f"{scope}/{p}/kernel", dtype) for p in parts]
        kernel = kernels[0] if len(kernels) == 1 else tf.concat(kernels, 1)
    else:
        kernel = _weight(params, f"{scope}/kernel/qkv_weight", dtype)
        if len(parts) < len(_QKV):
            first = _QKV.index(parts[0]) * h
            kernel = kernel[:, first : first + len(parts) * h]
    y = tf.matmul(x2d, kernel)  # [N, len(parts)*H]
    if config.use_qkv_bias:
        biases = [_weight(params, f"{scope}/{p}/bias", dtype) for p in parts]
        y = tf.nn.bias_add(y, biases[0] if len(biases) == 1 else tf.concat(biases, 0))
    return y


def _split_heads(y, seq_length, parts, heads):
    """[B*S, parts*H] -> `parts` tensors [B,N,S,d]."""
    head_size = y.shape[-1] // (parts * heads)
    y = tf.reshape(y, [-1, seq_length, parts, heads, head_size])  # [B,S,parts,N,d]
    return tf.unstack(tf.transpose(y, [2, 0, 3, 1, 4]))  # parts x [B,N,S,d]


def encoder_layer(
    params, config, layer_index, x, mask, training=False, dropout_seed=None, rows=None
):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Args:
      x: [B,S,H] in the compute dtype (which the layer computes in).
      mask: additive float [B,1,1,S] from `attention_mask`, or None.
      rows: None for every slot, or the slots whose outputs are wanted: an int R (the first R
        slots) or int32 [B,R]. Keys and values still come from all S slots, and dropout masks
        are the ones the full layer would draw at those rows, so the result equals those rows
        of the full layer's output.
    Returns:
      [B,S,H] (or [B,R,H] with rows), same dtype as x.
    """
    layer = f"bert/encoder/layer_{layer_index}"
    acc = _float_dtype(x.dtype)
    batch, seq_length, hidden = _dim(x, 0), _dim(x, 1), config.hidden_size
    heads = config.num_attention_heads
    head_size = hidden // heads
    salt = functools.partial(_layer_salt, layer_index)

    x2d = tf.reshape(x, [-1, hidden])  # [B*S,H]
    hidden_index = probs_index = None
    if rows is None:
        query, key, value = _split_heads(
            _qkv_projection(params, config, layer, x2d, _QKV), seq_length, 3, heads
        )
        xq2d, num_rows = x2d, seq_length
    else:
        if isinstance(rows, int):
            xq = x[:, :rows]  # [B,R,H]
            num_rows, rows = rows, tf.range(rows)[tf.newaxis, :]  # [1,R]
        else:
            xq = tf.gather(x, rows, batch_dims=1)  # [B,R,H]
            num_rows = _dim(rows, 1)
        xq2d = tf.reshape(xq, [-1, hidden])  # [B*R,H]
        (query,) = _split_heads(
            _qkv_projection(params, config, layer, xq2d, _QKV[:1]), num_rows, 1, heads
        )  # [B,N,R,d]
        key, value = _split_heads(
            _qkv_projection(params, config, layer, x2d, _QKV[1:]), seq_length, 2, heads
        )  # [B,N,S,d] each
        if training:
            # Flat element indices in the full layer's [B*S,H] and [B,N,S,S] tensors.
            b = tf.range(batch)[:, tf.newaxis]  # [B,1]
            slot = b * seq_length + rows  # [B,R]
            hidden_index = tf.reshape(
                slot[:, :, tf.newaxis] * hidden + tf.range(hidden), [-1, hidden]
            )  # [B*R,H]
            n = tf.range(heads)[tf.newaxis, :, tf.newaxis, tf.newaxis]  # [1,N,1,1]
            query_slot = (b * heads)[:, :, tf.newaxis, tf.newaxis] + n  # [B,N,1,1]
            probs_index = (
                query_slot * seq_length + rows[:, tf.newaxis, :, tf.newaxis]
            ) * seq_length + tf.range(seq_length)  # [B,N,R,S]
    scores = tf.matmul(query, key, transpose_b=True)  # [B,N,R,S]
    rate = config.attention_probs_dropout_prob
    probs = _fused_attention_probs(
        [scores],
        [mask, _keys_if(rate, training, dropout_seed, salt(0)), probs_index],
        scale=1.0 / math.sqrt(head_size),
        rate=rate,
        acc=acc,
    )
    context = tf.matmul(probs, value)  # [B,N,R,d]
    context = tf.transpose(context, [0, 2, 1, 3])  # [B,R,N,d]
    context = tf.reshape(context, [-1, hidden])  # [B*R,H]
    attn = _dense(
        params,
        f"{layer}/attention/projection/dense",
        context,
        bias=config.use_attention_projection_bias,
    )
    rate, eps = config.hidden_dropout_prob, config.layer_norm_eps
    y = _fused_add_norm(
        [xq2d, attn, *_norm_params(params, f"{layer}/attention/projection/LayerNorm", acc)],
        [_keys_if(rate, training, dropout_seed, salt(1)), hidden_index],
        epsilon=eps,
        rate=rate,
    )
    ffn = _dense(params, f"{layer}/intermediate/dense", y)  # [B*R,I]
    ffn = _fused_activation([ffn], name=config.hidden_act)
    ffn = _dense(params, f"{layer}/output/dense", ffn)  # [B*R,H]
    y = _fused_add_norm(
        [y, ffn, *_norm_params(params, f"{layer}/output/LayerNorm", acc)],
        [_keys_if(rate, training, dropout_seed, salt(2)), hidden_index],
        epsilon=eps,
        rate=rate,
    )
    return tf.reshape(y, [-1, num_rows, hidden])  # [B,R,H]


def _encode(params, config, features, training, dropout_seed, compute_dtype):
    """Embeddings and every encoder layer but the last.

    Returns:
      (x [B,S,H] input of the last layer, last_layer(rows=None) -> its output).
    """
    compute_dtype = _check_compute_dtype(compute_dtype)
    dropout_used = config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0
    if training and dropout_used:
        if dropout_seed is None:
            raise ValueError("bert_encoder: training with dropout needs a dropout_seed")
        dropout_seed = tf.convert_to_tensor(dropout_seed)
    positions = features["input_position"] if config.static_mask else None
    x = embeddings(
        params,
        config,
        features["input_ids"],
        features["segment_ids"],
        positions,
        training,
        dropout_seed,
        compute_dtype,
    )
    mask = attention_mask(config, features, _float_dtype(compute_dtype))
    if config.groupbert:
        import modeling_groupbert

        return modeling_groupbert.encode(params, config, x, features, mask, training, dropout_seed)

    def layer(i, x, rows=None):
        # Everything but x is closed over, so tf.recompute_grad sees a one-tensor function.
        layer_fn = functools.partial(
            encoder_layer,
            params,
            config,
            i,
            mask=mask,
            training=training,
            dropout_seed=dropout_seed,
            rows=rows,
        )
        return tf.recompute_grad(layer_fn)(x) if config.recompute else layer_fn(x)

    for i in range(config.num_hidden_layers - 1):
        x = layer(i, x)
    return x, functools.partial(layer, config.num_hidden_layers - 1, x)


def _cls_slot(config):
    """Slot of [CLS]: max_predictions_per_seq in the static-mask layout, else 0."""
    return config.max_predictions_per_seq if config.static_mask else 0


def _pooler(params, cls):
    """cls [B,H] -> tanh(dense) [B,H]."""
    return tf.tanh(_dense(params, "bert/pooler/dense", cls))


def bert_encoder(
    params, config, features, training=False, dropout_seed=None, compute_dtype=tf.float32
):
    """Embeddings, encoder layers and pooler.

    Args:
      params: dict {name: tf.Variable} (see `BertModel`).
      config: BertConfig.
      features: dict of int32 tensors. Standard layout: input_ids [B,S], segment_ids [B,S],
        optional input_mask [B,S]. Static-mask layout (config.static_mask): input_ids,
        input_position, segment_ids [B,S], mask_padding_index [B,1], seq_padding_index [B,1].
      training: Python bool; dropout only when True.
      dropout_seed: int32 [2] tensor, required when training with non-zero dropout. The same seed
        gives the same masks.
      compute_dtype: tf.float32, tf.bfloat16, tf.float16 (or tf.float64).
    Returns:
      (sequence_output [B,S,H], pooled_output [B,H]), both in compute_dtype. The pooler reads slot 0,
      or slot max_predictions_per_seq (where [CLS] sits) in the static-mask layout.
    """
    _, last_layer = _encode(params, config, features, training, dropout_seed, compute_dtype)
    x = last_layer()
    return x, _pooler(params, x[:, _cls_slot(config)])


def bert_pooled_output(
    params, config, features, training=False, dropout_seed=None, compute_dtype=tf.float32
):
    """The pooled output alone (sentence classification): the last encoder layer is evaluated
    at the [CLS] row only (keys and values still span the sequence), which gives the same values
    as `bert_encoder`'s pooled output for less work. Arguments as `bert_encoder`.

    Returns:
      [B,H] in compute_dtype.
    """
    _, last_layer = _encode(params, config, features, training, dropout_seed, compute_dtype)
    slot = _cls_slot(config)
    return _pooler(params, last_layer(slot + 1)[:, slot])


def _mlm_logits(params, config, masked):
    """masked [B,P,H] (compute dtype) -> float32 [B,P,V] (float64 in float64 runs)."""
    dtype = masked.dtype
    num_masked = _dim(masked, 1)
    x = tf.reshape(masked, [-1, config.hidden_size])  # [B*P,H]
    if config.use_cls_layer:
        x = ACTIVATIONS[config.hidden_act](_dense(params, "cls/predictions/transform/dense", x))
        x = layer_norm(params, "cls/predictions/transform/LayerNorm", x, config.layer_norm_eps)
    table = _weight(params, "bert/embeddings/word_embeddings", dtype)  # [V,H], tied
    logits = tf.matmul(x, table, transpose_b=True)  # [B*P,V]
    if config.use_prediction_bias:
        logits = tf.nn.bias_add(logits, _weight(params, "cls/predictions/output_bias", dtype))
    logits = tf.cast(logits, _float_dtype(dtype))
    return tf.reshape(logits, [-1, num_masked, config.vocab_size])  # [B,P,V]


def _nsp_logits(params, pooled):
    """pooled [B,H] (compute dtype) -> float32 [B,2] (float64 in float64 runs)."""
    weights = _weight(params, "cls/seq_relationship/output_weights", pooled.dtype)  # [2,H]
    logits = tf.matmul(pooled, weights, transpose_b=True)  # [B,2]
    logits += _weight(params, "cls/seq_relationship/output_bias", pooled.dtype)
    return tf.cast(logits, _float_dtype(pooled.dtype))


def pretraining_heads(
    params, config, sequence_output, pooled_output, features, heads=("mlm", "nsp")
):
    """MLM and NSP logits, computed in the dtype of the encoder outputs, returned in float32.

    Args:
      sequence_output: [B,S,H]; pooled_output: [B,H] (from `bert_encoder`).
      features: needs masked_lm_positions int32 [B,P] in the standard layout; in the static-mask
        layout the masked tokens are the first P = max_predictions_per_seq slots.
      heads: which logits to compute.
    Returns:
      {"mlm_logits": float32 [B,P,V], "nsp_logits": float32 [B,2]} (only the requested ones).
    """
    outputs = {}
    if "mlm" in heads:
        if config.static_mask:
            masked = sequence_output[:, : config.max_predictions_per_seq]  # [B,P,H]
        else:
            positions = features["masked_lm_positions"]
            masked = tf.gather(sequence_output, positions, batch_dims=1)  # [B,P,H]
        outputs["mlm_logits"] = _mlm_logits(params, config, masked)
    if "nsp" in heads:
        outputs["nsp_logits"] = _nsp_logits(params, pooled_output)
    return outputs


def pretraining_loss(outputs, features):
    """Reference losses and accuracies from `pretraining_heads` outputs.

    mlm_loss = sum(w * CE) / (sum(w) + 1e-5) over the micro-batch; nsp_loss = mean CE;
    mlm_acc = sum(w * [argmax == label]) / sum(w) (0 when sum(w) is 0); nsp_acc = mean match;
    loss = mlm_loss + nsp_loss.

    Args:
      outputs: dict with "mlm_logits" [B,P,V] and/or "nsp_logits" [B,2].
      features: masked_lm_ids int32 [B,P], masked_lm_weights float [B,P], next_sentence_labels
        int32 [B,1] or [B].
    Returns:
      dict of float32 scalars (float64 for float64 logits): "loss" plus "mlm_loss", "mlm_acc" and/or "nsp_loss", "nsp_acc" for the
      heads present.
    """
    result, total = {}, []
    if "mlm_logits" in outputs:
        logits = outputs["mlm_logits"]
        labels = tf.cast(features["masked_lm_ids"], tf.int32)
        weights = tf.cast(features["masked_lm_weights"], logits.dtype)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # [B,P]
        weight_sum = tf.reduce_sum(weights)
        result["mlm_loss"] = tf.reduce_sum(weights * ce) / (weight_sum + MLM_WEIGHT_EPSILON)
        match = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), logits.dtype)
        result["mlm_acc"] = tf.math.divide_no_nan(tf.reduce_sum(weights * match), weight_sum)
        total.append(result["mlm_loss"])
    if "nsp_logits" in outputs:
        logits = outputs["nsp_logits"]
        labels = tf.reshape(tf.cast(features["next_sentence_labels"], tf.int32), [-1])  # [B]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        result["nsp_loss"] = tf.reduce_mean(ce)
        match = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        result["nsp_acc"] = tf.reduce_mean(tf.cast(match, logits.dtype))
        total.append(result["nsp_loss"])
    result["loss"] = tf.add_n(total)
    return result


def pretraining_flops_per_sequence(config, seq_length, num_masked):
    """Model FLOPs of one pretraining sequence, forward + backward (= 3 x forward matmul FLOPs).

    A matmul [m,k] x [k,n] counts 2mkn. With S = seq_length, H, I, L, V from config, P = num_masked:
      per layer: QKV 6SH^2 + scores 2S^2H + context 2S^2H + projection 2SH^2 + FFN 4SHI
      MLM: transform 2PH^2 (if use_cls_layer) + tied projection 2PHV
      pooler 2H^2 + NSP 4H
      total = 3 * (L * (8SH^2 + 4S^2H + 4SHI) + MLM + 2H^2 + 4H)
    GroupBERT (k = conv kernel size, g = conv group size, G = FFN output groups) replaces the
    per-layer term by conv GLU 4SH^2 + grouped conv 2SkgH + conv post 2SH^2 + two FFNs, each
    2SHI + 2SIH/G + mixer 2SH^2 (if G > 1), + attention 8SH^2 + 4S^2H
    (`modeling_groupbert.layer_flops`).
    Embedding lookups, LayerNorm, softmax, biases and activations are not counted. BERT-base at
    S=128, P=20 (V=30522) gives about 69.9 GFLOP; GroupBERT-base (V=30400, MLM transform) about
    108.8 GFLOP.
    """
    s, h, i = seq_length, config.hidden_size, config.intermediate_size
    per_layer = 8 * s * h * h + 4 * s * s * h + 4 * s * h * i
    if config.groupbert:
        import modeling_groupbert

        per_layer = modeling_groupbert.layer_flops(config, s)
    mlm = 2 * num_masked * h * config.vocab_size
    if config.use_cls_layer:
        mlm += 2 * num_masked * h * h
    forward = config.num_hidden_layers * per_layer + mlm + 2 * h * h + 4 * h
    return 3 * forward
