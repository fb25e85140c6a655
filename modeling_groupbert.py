"""GroupBERT (arXiv 2106.05822) encoder layers, as the reference app's `GroupBertModel`.

Enabled by `BertConfig.groupbert`: `modeling.BertModel` keeps the BERT embeddings, pooler and
MLM/NSP heads and takes its encoder from here. Each layer is pre-norm with four residual modules,
x <- x + dropout(module(LayerNorm(x))), in this order:

1. convolution: GLU (values * sigmoid(gates), two dense H->H with bias); padding slots zeroed
   with input_mask; grouped 1-D convolution along the sequence (kernel [k, group_size, H], SAME
   padding, no bias; output channel o reads the input channels of its group o // group_size);
   LayerNorm; swish; dense H->H with bias.
2. feed_forward_1: dense H->I with bias and hidden_act; grouped down-projection I->H; if groups
   G > 1, a dense "mixer" H->H with bias.
3. attention: multi-head self-attention as BERT's (same Q/K/V layouts and biases, additive mask
   from input_mask), projection dense (bias if use_attention_projection_bias).
4. feed_forward_2: as feed_forward_1, own weights.
After the last layer: a final LayerNorm (top-level scope `LayerNorm`, as in the reference).

Grouped down-projection, as read from the reference (a 1x1 conv1d of [B,S,I] with filter
[1, I/G, H]): kernel [I/G, H]; input channels split in G contiguous blocks of I/G, output
channels in G contiguous blocks of H/G, and block c of the output is block c of the input times
kernel[:, c*H/G:(c+1)*H/G]. So each group maps I/G inputs to H/G outputs; the bias [H] is
initialised from the truncated normal like the kernels. The convolution kernel is initialised
Glorot-uniform (TF's default, which the reference used); every other kernel truncated normal
(initializer_range), biases 0, LayerNorm gamma 1 and beta 0.

Variable names (the reference app's; L = bert/encoder/layer_{i}, F in feed_forward_1/2):
  L/convolution/prenorm/LayerNorm/{beta,gamma}       [H]
  L/convolution/pre/glu/values/dense/{kernel,bias}   [H,H], [H]
  L/convolution/pre/glu/gates/dense/{kernel,bias}    [H,H], [H]
  L/convolution/dwconv/weight                        [k, group_size, H]
  L/convolution/dwconv/LayerNorm/{beta,gamma}        [H]
  L/convolution/post/dense/{kernel,bias}             [H,H], [H]
  L/F/prenorm/LayerNorm/{beta,gamma}                 [H]
  L/F/intermediate/dense/{kernel,bias}               [H,I], [I]
  L/F/output/dense/{kernel,bias}                     [I/G, H], [H]
  L/F/output/mixer/dense/{kernel,bias}               [H,H], [H]   (only if G > 1)
  L/attention/prenorm/LayerNorm/{beta,gamma}         [H]
  L/attention/self/{query,key,value}/kernel          [H,H]  (use_qkv_split; else one
  L/attention/self/kernel/qkv_weight                 [H,3H]  fused kernel, as BERT)
  L/attention/self/{query,key,value}/bias            [H]    (use_qkv_bias; key not trainable)
  L/attention/projection/dense/{kernel,bias}         [H,H],[H] (bias: use_attention_projection_bias)
  LayerNorm/{beta,gamma}                             [H]    (final LayerNorm)

Precision as BERT: matmuls and the convolution in the compute dtype; LayerNorms, GLU, swish,
GELU and softmax in float32. The residual stream between modules is kept in float32 (a pre-norm
model adds every module into it). GroupBERT needs the standard data layout (input_mask), not the
static-mask (remask) one.

Speed (CPU, measured): outside XLA the grouped convolution is oneDNN's grouped conv1d and the
grouped projection is G matmuls on column splits; inside an XLA-compiled step (whose grouped
convolution gradient is very slow on CPU) they are k shifted grouped products and one einsum.
The caller says which: `xla` (`modeling.BertModel(..., xla=)`) is the jit_compile of the
function that runs the model.

Built from `modeling_ops`' primitives; `modeling` imports this module (never the reverse) and
supplies the embeddings, pooler and heads.
"""

import functools
import math
import os
import zlib

import tensorflow as tf

import modeling_ops as ops
from common.errors import UserError

FINAL_NORM = "LayerNorm"
MODULES = ("convolution", "feed_forward_1", "attention", "feed_forward_2")  # in layer order
# Dropout salt uses of each layer (modeling_ops.layer_salt): 0 attention probabilities (as BERT),
# then one per residual module; BERT's own uses are 0-2.
_RESIDUAL_SALT = {"convolution": 3, "feed_forward_1": 4, "attention": 5, "feed_forward_2": 6}


def check_config(config):
    """Raise UserError if `config` cannot build GroupBERT (layout, divisibility)."""
    c = config
    if c.static_mask:
        raise UserError(
            "GroupBERT needs the standard data layout (input_mask), not static_mask: set "
            "static_mask false and use data made without --remask"
        )
    if c.hidden_size % c.groupbert_conv_group_size:
        raise UserError(
            f"GroupBERT: hidden_size {c.hidden_size} is not divisible by "
            f"groupbert_conv_group_size {c.groupbert_conv_group_size}; change one of them"
        )
    groups = c.groupbert_ffn_output_groups
    for name in ("hidden_size", "intermediate_size"):
        if getattr(c, name) % groups:
            raise UserError(
                f"GroupBERT: {name} {getattr(c, name)} is not divisible by "
                f"groupbert_ffn_output_groups {groups}; change one of them"
            )


# ----------------------------------------------------------------------------- variables


def _glorot_uniform(name, seed):
    """Initializer(shape): Glorot-uniform with TF's fans for a conv kernel [k, in, out]; values
    depend only on (seed, name), like `modeling_ops.add_variable`'s normal initializer."""

    def init(shape):
        receptive = math.prod(shape[:-2])
        limit = math.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
        name_hash = zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
        stateless_seed = tf.constant([seed, name_hash], tf.int64)
        return tf.random.stateless_uniform(shape, stateless_seed, -limit, limit)

    return init


def _add_feed_forward(params, config, scope, seed):
    c, h, i = config, config.hidden_size, config.intermediate_size
    groups = c.groupbert_ffn_output_groups
    ops.add_layer_norm(params, f"{scope}/prenorm/LayerNorm", h)
    ops.add_dense(params, f"{scope}/intermediate/dense", h, i, c.initializer_range, seed)
    for name, shape in (("kernel", [i // groups, h]), ("bias", [h])):
        ops.add_variable(
            params, f"{scope}/output/dense/{name}", shape, stddev=c.initializer_range, seed=seed
        )
    if groups > 1:
        ops.add_dense(params, f"{scope}/output/mixer/dense", h, h, c.initializer_range, seed)


def create_groupbert_params(params, config, seed):
    """Add the GroupBERT encoder variables (every layer, then the final LayerNorm) to `params`.

    Args:
      params: dict {name: tf.Variable}, updated in place (names in the module docstring).
      config: modeling.BertConfig with groupbert true.
      seed: int; initial values depend only on (seed, name).
    Raises:
      UserError: a config GroupBERT cannot run (see `check_config`).
    """
    check_config(config)
    c, h = config, config.hidden_size
    for i in range(c.num_hidden_layers):
        layer = f"bert/encoder/layer_{i}"
        conv = f"{layer}/convolution"
        ops.add_layer_norm(params, f"{conv}/prenorm/LayerNorm", h)
        for part in ("values", "gates"):
            ops.add_dense(params, f"{conv}/pre/glu/{part}/dense", h, h, c.initializer_range, seed)
        name = f"{conv}/dwconv/weight"
        shape = [c.groupbert_conv_kernel_size, c.groupbert_conv_group_size, h]
        ops.add_variable(params, name, shape, _glorot_uniform(name, seed))
        ops.add_layer_norm(params, f"{conv}/dwconv/LayerNorm", h)
        ops.add_dense(params, f"{conv}/post/dense", h, h, c.initializer_range, seed)
        _add_feed_forward(params, c, f"{layer}/feed_forward_1", seed)
        ops.add_layer_norm(params, f"{layer}/attention/prenorm/LayerNorm", h)
        ops.add_attention(params, c, layer, seed)
        _add_feed_forward(params, c, f"{layer}/feed_forward_2", seed)
    ops.add_layer_norm(params, FINAL_NORM, h)


# ----------------------------------------------------------------------------- grouped ops


def _onednn_enabled():
    """Whether TensorFlow runs oneDNN's kernels: by default only on x86 CPUs with AVX-512
    VNNI/BF16 or AMX (not on AVX2-only ones); TF_ENABLE_ONEDNN_OPTS=0/1 forces it."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API tells
    except ImportError:
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")
    return bool(_pywrap_util_port.IsMklEnabled())


def grouped_conv1d(x, weight, input_mask=None, method="auto", xla=False):
    """Grouped 1-D convolution along the sequence, SAME padding, stride 1, no bias.

    y[b, s, o] = sum_t sum_i x[b, s + t - (k-1)//2, (o // g) * g + i] * weight[t, i, o], with
    x = 0 outside [0, S) and at the slots where input_mask is 0.

    Args:
      x: [B,S,H] float (compute dtype).
      weight: [k, g, H], same dtype; g divides H (H/g groups of g channels).
      input_mask: optional int or float [B,S]; slots with 0 are zeroed before the convolution.
      method: "conv" (tf.nn.conv1d: oneDNN's grouped kernel, fastest outside XLA; float16 is
        computed in float32), "shifted" (k shifted grouped products: fast inside XLA, whose
        grouped-conv gradient is slow on CPU), or "auto": conv when not `xla` for float32,
        bfloat16 and float16 (TF has CPU gradients for these only in oneDNN), else shifted.
      xla: Python bool, whether the calling function is XLA-compiled (used by "auto" only).
    Returns:
      [B,S,H] in x's dtype.
    """
    if input_mask is not None:
        x = x * tf.cast(input_mask, x.dtype)[:, :, tf.newaxis]
    if method == "auto":
        # TF's grouped-conv gradients on CPU exist only in oneDNN's float32/bfloat16 kernels.
        conv_ok = x.dtype in (tf.float32, tf.bfloat16, tf.float16) and _onednn_enabled()
        method = "conv" if conv_ok and not xla else "shifted"
    if method == "conv":
        if x.dtype == tf.float16:  # float16 computed in float32 (no float16 filter gradient)
            y = tf.nn.conv1d(tf.cast(x, tf.float32), tf.cast(weight, tf.float32), 1, "SAME")
            return tf.cast(y, x.dtype)
        return tf.nn.conv1d(x, weight, 1, "SAME")
    if method != "shifted":
        raise ValueError(f"unknown grouped_conv1d method {method!r}")
    k, g, hidden = weight.shape
    seq_length = ops.dim(x, 1)
    before = (k - 1) // 2  # TF's SAME: the extra slot of an even kernel goes after
    padded = tf.pad(x, [[0, 0], [before, k - 1 - before], [0, 0]])  # [B,S+k-1,H]
    padded = tf.reshape(padded, [-1, seq_length + k - 1, hidden // g, g])  # [B,S+k-1,H/g,g]
    w = tf.reshape(weight, [k, g, hidden // g, g])  # [k, in i, group c, out j]
    y = tf.add_n(
        [
            tf.einsum("bsci,icj->bscj", padded[:, t : t + seq_length], w[t])  # [B,S,H/g,g]
            for t in range(k)
        ]
    )
    return tf.reshape(y, [-1, seq_length, hidden])  # [B,S,H]


def grouped_projection(x, kernel, groups, method="auto", xla=False):
    """Block-diagonal matmul: block c of the output is block c of the input times its kernel.

    Args:
      x: [N, I] float; kernel [I/G, H] (G = groups); same dtype.
      method: "split" (G matmuls on column splits, fastest outside XLA), "einsum" (one batched
        contraction, fastest inside XLA), or "auto": einsum when `xla`, else split.
      xla: Python bool, whether the calling function is XLA-compiled (used by "auto" only).
    Returns:
      [N, H]: y[:, c*H/G + j] = sum_i x[:, c*I/G + i] * kernel[i, c*H/G + j].
    """
    if method == "auto":
        method = "einsum" if xla else "split"
    if method == "split":
        blocks = zip(tf.split(x, groups, axis=1), tf.split(kernel, groups, axis=1))
        return tf.concat([tf.matmul(a, b) for a, b in blocks], axis=1)
    if method != "einsum":
        raise ValueError(f"unknown grouped_projection method {method!r}")
    width_in, hidden = kernel.shape
    xg = tf.reshape(x, [-1, groups, width_in])  # [N,G,I/G]
    kg = tf.reshape(kernel, [width_in, groups, hidden // groups])  # [I/G,G,H/G]
    return tf.reshape(tf.einsum("nci,icj->ncj", xg, kg), [-1, hidden])  # [N,H]


# ----------------------------------------------------------------------------- fused kernels


def _kernel_glu(y):
    """values * sigmoid(gates) of y = [values | gates] ([N, 2H]) in float32, cast to y's dtype."""
    values, gates = tf.split(tf.cast(y, ops.float_dtype(y.dtype)), 2, axis=-1)
    return tf.cast(values * tf.sigmoid(gates), y.dtype)


def _kernel_norm_swish(x, gamma, beta, *, epsilon):
    """swish(LayerNorm(x)) computed in gamma's dtype, cast to x's dtype."""
    y = ops.layer_norm_math(tf.cast(x, gamma.dtype), gamma, beta, epsilon)
    return tf.cast(tf.nn.silu(y), x.dtype)


def _kernel_residual(x, a, keys, *, rate):
    """x + dropout(a) in x's (float) dtype."""
    a = tf.cast(a, x.dtype)
    return x + a * ops.keep_mask(ops.iota(a.shape.as_list()), keys, rate, x.dtype)


_fused_glu = ops.xla_kernel(_kernel_glu)
_fused_norm_swish = ops.xla_kernel(_kernel_norm_swish)
_fused_residual = ops.xla_kernel(_kernel_residual)


# ----------------------------------------------------------------------------- layers


def _prenorm(params, config, scope, x, compute_dtype):
    """LayerNorm of the float residual stream x [N,H], returned in the compute dtype."""
    gamma, beta = ops.norm_params(params, f"{scope}/prenorm/LayerNorm", x.dtype)
    return ops.fused_norm(
        [x, gamma, beta], epsilon=config.layer_norm_eps, rate=0.0, dtype=compute_dtype
    )


def _convolution(params, config, scope, h, input_mask, seq_length, xla):
    """h [B*S,H] (compute dtype) -> [B*S,H]."""
    dtype, hidden = h.dtype, config.hidden_size
    glu = f"{scope}/pre/glu"
    kernel = tf.concat([ops.weight(params, f"{glu}/{p}/dense/kernel", dtype)
                        for p in ("values", "gates")], axis=1)  # fmt: skip
    bias = tf.concat([ops.weight(params, f"{glu}/{p}/dense/bias", dtype)
                      for p in ("values", "gates")], axis=0)  # fmt: skip
    y = _fused_glu([tf.nn.bias_add(tf.matmul(h, kernel), bias)])  # [B*S,H]
    y = tf.reshape(y, [-1, seq_length, hidden])  # [B,S,H]
    weight = ops.weight(params, f"{scope}/dwconv/weight", dtype)
    y = tf.reshape(grouped_conv1d(y, weight, input_mask, xla=xla), [-1, hidden])  # [B*S,H]
    acc = ops.float_dtype(dtype)
    gamma, beta = ops.norm_params(params, f"{scope}/dwconv/LayerNorm", acc)
    y = _fused_norm_swish([y, gamma, beta], epsilon=config.layer_norm_eps)
    return ops.dense(params, f"{scope}/post/dense", y)


def _feed_forward(params, config, scope, h, xla):
    """h [B*S,H] (compute dtype) -> [B*S,H]."""
    y = ops.dense(params, f"{scope}/intermediate/dense", h)  # [B*S,I]
    y = ops.fused_activation([y], name=config.hidden_act)
    kernel = ops.weight(params, f"{scope}/output/dense/kernel", h.dtype)
    y = grouped_projection(y, kernel, config.groupbert_ffn_output_groups, xla=xla)  # [B*S,H]
    y = tf.nn.bias_add(y, ops.weight(params, f"{scope}/output/dense/bias", h.dtype))
    if config.groupbert_ffn_output_groups > 1:
        y = ops.dense(params, f"{scope}/output/mixer/dense", y)
    return y


def _attention(params, config, layer, h, mask, seq_length, keys):
    """h [B*S,H] (compute dtype) -> [B*S,H]: BERT's self-attention and projection."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    query, key, value = ops.split_heads(
        ops.qkv_projection(params, config, layer, h, ops.QKV), seq_length, 3, heads
    )  # [B,N,S,d] each
    scores = tf.matmul(query, key, transpose_b=True)  # [B,N,S,S]
    probs = ops.fused_attention_probs(
        [scores],
        [mask, keys],
        scale=1.0 / math.sqrt(hidden // heads),
        rate=config.attention_probs_dropout_prob,
        acc=ops.float_dtype(h.dtype),
    )
    context = tf.matmul(probs, value)  # [B,N,S,d]
    context = tf.transpose(context, [0, 2, 1, 3])  # [B,S,N,d]
    context = tf.reshape(context, [-1, hidden])  # [B*S,H]
    return ops.dense(
        params,
        f"{layer}/attention/projection/dense",
        context,
        bias=config.use_attention_projection_bias,
    )


def groupbert_layer(
    params,
    config,
    layer_index,
    x,
    mask=None,
    input_mask=None,
    training=False,
    dropout_seed=None,
    compute_dtype=tf.float32,
    xla=False,
):
    """One GroupBERT layer: four pre-norm residual modules (see the module docstring).

    Args:
      x: float32 [B,S,H] residual stream (float64 in float64 runs).
      mask: additive float [B,1,1,S] from `modeling.attention_mask`, or None.
      input_mask: int or float [B,S] (1 = token, 0 = padding) or None; padding slots are zeroed
        before the convolution.
      training, dropout_seed: as `modeling.bert_encoder`.
      compute_dtype: dtype of the matmuls and the convolution.
      xla: Python bool, whether the calling function is XLA-compiled: picks the grouped ops'
        method (see `grouped_conv1d`).
    Returns:
      [B,S,H], x's dtype.
    """
    c, layer = config, f"bert/encoder/layer_{layer_index}"
    seq_length, hidden = ops.dim(x, 1), c.hidden_size
    rate = c.hidden_dropout_prob
    stream = tf.reshape(x, [-1, hidden])  # [B*S,H]
    for module in MODULES:
        scope = f"{layer}/{module}"
        h = _prenorm(params, c, scope, stream, compute_dtype)
        if module == "convolution":
            y = _convolution(params, c, scope, h, input_mask, seq_length, xla)
        elif module == "attention":
            keys = ops.keys_if(
                c.attention_probs_dropout_prob,
                training,
                dropout_seed,
                ops.layer_salt(layer_index, 0),
            )
            y = _attention(params, c, layer, h, mask, seq_length, keys)
        else:
            y = _feed_forward(params, c, scope, h, xla)
        salt = ops.layer_salt(layer_index, _RESIDUAL_SALT[module])
        keys = ops.keys_if(rate, training, dropout_seed, salt)
        if keys is None:
            stream = stream + tf.cast(y, stream.dtype)
        else:
            stream = _fused_residual([stream, y], [keys], rate=rate)
    return tf.reshape(stream, [-1, seq_length, hidden])  # [B,S,H]


def encode(params, config, x, features, mask, training, dropout_seed, xla=False):
    """The GroupBERT encoder after the embeddings (`modeling`'s encoder family for GroupBERT).

    Args:
      x: [B,S,H] embeddings in the compute dtype.
      features: the model's features; "input_mask" [B,S] is used when present.
      mask: additive attention mask [B,1,1,S] or None.
      training, dropout_seed: as `modeling.bert_encoder`.
      xla: as `groupbert_layer`.
    Returns:
      (input of the last layer [B,S,H], last_layer(rows=None)): last_layer returns the final
      LayerNorm's output [B,S,H] (compute dtype), or its rows `rows` (an int R: the first R
      slots; int32 [B,R]: those slots) as [B,R,H]. The full sequence is computed either way.
    """
    compute_dtype = x.dtype
    acc = ops.float_dtype(compute_dtype)
    input_mask = features.get("input_mask")

    def layer(i, x):
        # Everything but x is closed over, so tf.recompute_grad sees a one-tensor function.
        layer_fn = functools.partial(
            groupbert_layer,
            params,
            config,
            i,
            mask=mask,
            input_mask=input_mask,
            training=training,
            dropout_seed=dropout_seed,
            compute_dtype=compute_dtype,
            xla=xla,
        )
        with ops.stage("hid", i):
            return tf.recompute_grad(layer_fn)(x) if config.recompute else layer_fn(x)

    stream = tf.cast(x, acc)
    for i in range(config.num_hidden_layers - 1):
        stream = layer(i, stream)
    last_input = tf.cast(stream, compute_dtype)
    stream = layer(config.num_hidden_layers - 1, stream)
    with ops.stage("hid", config.num_hidden_layers - 1):
        gamma, beta = ops.norm_params(params, FINAL_NORM, acc)
        output = ops.fused_norm(
            [stream, gamma, beta], epsilon=config.layer_norm_eps, rate=0.0, dtype=compute_dtype
        )

    def last_layer(rows=None):
        if rows is None:
            return output
        if isinstance(rows, int):
            return output[:, :rows]  # [B,R,H]
        return tf.gather(output, rows, batch_dims=1)  # [B,R,H]

    return last_input, last_layer


# ----------------------------------------------------------------------------- FLOPs


def layer_flops(config, seq_length):
    """Forward matmul FLOPs of one GroupBERT layer for one sequence of length S (2mkn each).

    conv GLU 4SH^2 + grouped conv 2S*k*g*H + post 2SH^2
    + 2 x FFN (2SHI + 2SIH/G + mixer 2SH^2 if G > 1)
    + attention: QKV 6SH^2 + scores 2S^2H + context 2S^2H + projection 2SH^2.
    """
    s, h, i = seq_length, config.hidden_size, config.intermediate_size
    groups = config.groupbert_ffn_output_groups
    conv = (
        4 * s * h * h
        + 2 * s * config.groupbert_conv_kernel_size * (config.groupbert_conv_group_size * h)
        + 2 * s * h * h
    )
    ffn = 2 * s * h * i + 2 * s * i * h // groups + (2 * s * h * h if groups > 1 else 0)
    attention = 8 * s * h * h + 4 * s * s * h
    return conv + 2 * ffn + attention
