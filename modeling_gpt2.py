"""GPT-2 (Hugging Face's GPT2LMHeadModel) as plain functions over named float32 `tf.Variable`s.

Names: a variable's name is its Hugging Face state-dict name with "/" for "." and the
`transformer.` prefix kept: `transformer/h/0/attn/c_attn/weight` is `transformer.h.0.attn.c_attn.weight`.
`hf_name` and `ours_name` map one to the other. Layouts are Hugging Face's too: Conv1D weights are
[in, out] (y = x W + b, no transpose), embeddings [rows, E], LayerNorm `weight`/`bias`. The LM head
has no variable of its own: `lm_head.weight` is `transformer/wte/weight` (tied).

Architecture (pre-LN): h = wte[ids] + wpe[0..S-1], dropout; per block
h += dropout(c_proj(attention(ln_1(h)))), h += dropout(mlp.c_proj(act(c_fc(ln_2(h))))); then ln_f
and logits = ln_f(h) wte^T. Attention is causal; the fused c_attn output's columns [0:E] are the
queries, [E:2E] the keys, [2E:3E] the values, heads contiguous within each. Scores are multiplied
by 1/sqrt(head size) (scale_attn_weights) and 1/(i + 1) in block i
(scale_attn_by_inverse_layer_idx). reorder_and_upcast_attn computes q.k in float32 (it changes
nothing in a float32 run, as in Hugging Face).

Precision: variables are float32 masters. Matmuls run in the compute dtype (float32, bfloat16 or
float16; float64 for gradient tests); the residual stream, LayerNorm, softmax, activations and the
logits are float32 (float64 in float64 runs). The dropouts are modeling_ops' stateless hash
dropout, so masks depend only on (dropout_seed, salt) and recomputation draws the same ones.
"""

import functools
import math
import zlib

import tensorflow as tf

import modeling_ops as ops
from model_config_gpt2 import GPT2Config  # noqa: F401 (modeling_gpt2.GPT2Config)

# Additive score of a hidden key. Softmax and mask are float32 (or float64), where -1e9 makes
# exp() exactly 0, like Hugging Face's finfo.min; a fully hidden row (a left-padding query) gets
# uniform weights in both.
MASK_VALUE = -1e9

# Dropout salts (see modeling_ops.layer_salt): embeddings 1; block i uses layer_salt(i, use) with
# use 0 attention probabilities, 1 attention output, 2 MLP output.
_SALT_EMBEDDINGS = 1


# ----------------------------------------------------------------------------- names


def hf_name(ours):
    """Hugging Face state-dict name of one of our variable names: "/" -> "."."""
    return ours.replace("/", ".")


def ours_name(hf):
    """Our variable name for a Hugging Face GPT-2 state-dict name, or None for names without a
    variable of ours: the causal-mask buffers `attn.bias` / `attn.masked_bias` of old checkpoints.

    Accepts GPT2LMHeadModel names (`transformer.h.0.ln_1.weight`), GPT2Model names without the
    `transformer.` prefix (`h.0.ln_1.weight`), and `lm_head.weight`, which is the tied
    `transformer/wte/weight`. Raises ValueError for any other name.
    """
    if hf == "lm_head.weight":
        return "transformer/wte/weight"
    parts = hf.split(".")
    if parts[0] == "transformer":
        parts = parts[1:]
    if (
        len(parts) == 4
        and parts[0] == "h"
        and parts[2] == "attn"
        and parts[3] in ("bias", "masked_bias")
    ):
        return None
    name = "/".join(["transformer", *parts])
    if not _is_variable_name(name):
        raise ValueError(f"{hf} is not a GPT-2 LM weight name")
    return name


def _is_variable_name(name):
    parts = name.split("/")
    if len(parts) == 3:
        return parts[1] in ("wte", "wpe", "ln_f") and parts[2] in ("weight", "bias")
    return (
        len(parts) in (5, 6)
        and parts[1] == "h"
        and parts[2].isdigit()
        and "/".join(parts[3:-1]) in _BLOCK_MODULES
        and parts[-1] in ("weight", "bias")
    )


_BLOCK_MODULES = ("ln_1", "attn/c_attn", "attn/c_proj", "ln_2", "mlp/c_fc", "mlp/c_proj")


def block_scope(i):
    return f"transformer/h/{i}"


# ----------------------------------------------------------------------------- variables


def _normal(params, name, shape, stddev, seed):
    """A normal (not truncated: Hugging Face's init) variable whose values depend only on
    (seed, name)."""
    key = tf.constant([seed, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF], tf.int64)
    ops.add_variable(
        params,
        name,
        shape,
        lambda shape: tf.random.stateless_normal(shape, seed=key, stddev=stddev),
    )


def create_params(config, seed=0):
    """GPT-2's variables in Hugging Face's state-dict order, initialised as Hugging Face does.

    Weights and embeddings N(0, initializer_range); both c_proj weights of each block
    N(0, initializer_range / sqrt(2 n_layer)); biases 0; LayerNorm weight 1, bias 0.

    Returns:
      dict {name: float32 tf.Variable}.
    """
    c, e, params = config, config.n_embd, {}
    std = c.initializer_range
    proj_std = std / math.sqrt(2 * c.n_layer)
    _normal(params, "transformer/wte/weight", [c.vocab_size, e], std, seed)
    _normal(params, "transformer/wpe/weight", [c.n_positions, e], std, seed)

    def layer_norm(scope):
        ops.add_variable(params, f"{scope}/weight", [e], "ones")
        ops.add_variable(params, f"{scope}/bias", [e], "zeros")

    def conv1d(scope, n_in, n_out, stddev):
        _normal(params, f"{scope}/weight", [n_in, n_out], stddev, seed)
        ops.add_variable(params, f"{scope}/bias", [n_out], "zeros")

    for i in range(c.n_layer):
        block = block_scope(i)
        layer_norm(f"{block}/ln_1")
        conv1d(f"{block}/attn/c_attn", e, 3 * e, std)
        conv1d(f"{block}/attn/c_proj", e, e, proj_std)
        layer_norm(f"{block}/ln_2")
        conv1d(f"{block}/mlp/c_fc", e, c.inner_size, std)
        conv1d(f"{block}/mlp/c_proj", c.inner_size, e, proj_std)
    layer_norm("transformer/ln_f")
    return params


def variable_shapes(config):
    """{name: shape tuple} of `create_params`' variables, in the same order, without creating them
    (what a Hugging Face folder must hold for `config`)."""
    e, i = config.n_embd, config.inner_size
    module_shapes = {
        "ln_1": [(e,), (e,)],
        "attn/c_attn": [(e, 3 * e), (3 * e,)],
        "attn/c_proj": [(e, e), (e,)],
        "ln_2": [(e,), (e,)],
        "mlp/c_fc": [(e, i), (i,)],
        "mlp/c_proj": [(i, e), (e,)],
    }
    shapes = {
        "transformer/wte/weight": (config.vocab_size, e),
        "transformer/wpe/weight": (config.n_positions, e),
    }
    for layer in range(config.n_layer):
        for module in _BLOCK_MODULES:
            weight, bias = module_shapes[module]
            shapes[f"{block_scope(layer)}/{module}/weight"] = weight
            shapes[f"{block_scope(layer)}/{module}/bias"] = bias
    shapes["transformer/ln_f/weight"] = shapes["transformer/ln_f/bias"] = (e,)
    return shapes


def parameter_count(config):
    """Number of parameters (the tied LM head counted once): V E + P E + L (2 E I + 4 E^2 + 9 E
    + I) + 2 E; with I = 4E that is the usual V E + P E + L (12 E^2 + 13 E) + 2 E."""
    v, p, e, i = config.vocab_size, config.n_positions, config.n_embd, config.inner_size
    return v * e + p * e + config.n_layer * (2 * e * i + 4 * e * e + 9 * e + i) + 2 * e


def flops_per_token(config, seq_length):
    """Model FLOPs per token of a training step (forward + backward = 3 x forward matmuls).

    A matmul [m,k] x [k,n] counts 2mkn. Per block and token: c_attn 6E^2, scores and context
    4 S E (the full S x S products, causal half included, as they are computed), c_proj 2E^2,
    MLP 4 E I; LM head 2 E V. Embeddings, LayerNorm, softmax, biases and activations are not
    counted. gpt2 (E 768, L 12, V 50257) at S = 1024: 854,438,400 (0.85 GFLOP) per token.
    """
    e, s = config.n_embd, seq_length
    block = 8 * e * e + 4 * s * e + 4 * e * config.inner_size
    return 3 * (config.n_layer * block + 2 * e * config.vocab_size)


# ----------------------------------------------------------------------------- kernels


def _kernel_residual(h, a, keys=None, *, rate):
    """h + dropout(a): h [..., E] in the float dtype, a in the compute dtype; result in h's."""
    a = tf.cast(a, h.dtype)
    if keys is not None:
        a *= ops.keep_mask(ops.iota(a.shape.as_list()), keys, rate, h.dtype)
    return h + a


# fused_residual([h, a], [keys or None], rate=): h + dropout(a) in h's (float) dtype.
fused_residual = ops.xla_kernel(_kernel_residual)


def _layer_norm(params, scope, h, epsilon, dtype):
    """LayerNorm of h [..., E] (float dtype) with `{scope}/weight`, `{scope}/bias`, cast to dtype."""
    gamma = ops.weight(params, f"{scope}/weight", h.dtype)
    beta = ops.weight(params, f"{scope}/bias", h.dtype)
    return ops.fused_norm([h, gamma, beta], epsilon=epsilon, rate=0.0, dtype=dtype)


def _conv1d(params, scope, x):
    """Hugging Face's Conv1D: x [N, in] (compute dtype) @ weight [in, out] + bias -> [N, out]."""
    y = tf.matmul(x, ops.weight(params, f"{scope}/weight", x.dtype))
    return tf.nn.bias_add(y, ops.weight(params, f"{scope}/bias", x.dtype))


# ----------------------------------------------------------------------------- the model


def attention_bias(seq_length, attention_mask=None, dtype=tf.float32):
    """Additive scores bias: MASK_VALUE where a query may not see a key, else 0.

    A query at slot q sees the keys k <= q that are real tokens (attention_mask[b, k] = 1).

    Args:
      seq_length: S (int or scalar tensor).
      attention_mask: optional int/float/bool [B,S] padding mask (1 = token, 0 = padding).
    Returns:
      `dtype` [1,1,S,S], or [B,1,S,S] with attention_mask.
    """
    slot = tf.range(seq_length)
    visible = slot[tf.newaxis, :] <= slot[:, tf.newaxis]  # [S(query), S(key)]
    visible = visible[tf.newaxis, tf.newaxis]  # [1,1,S,S]
    if attention_mask is not None:
        real = tf.cast(attention_mask, tf.bool)[:, tf.newaxis, tf.newaxis, :]  # [B,1,1,S]
        visible = visible & real  # [B,1,S,S]
    return tf.where(visible, tf.constant(0.0, dtype), tf.constant(MASK_VALUE, dtype))


def embeddings(params, config, input_ids, training=False, dropout_seed=None, dtype=tf.float32):
    """wte[input_ids] + wpe[0..S-1], then embedding dropout.

    Args:
      input_ids: int32 [B,S], S <= n_positions.
      dtype: the float dtype (float32, or float64).
    Returns:
      [B,S,E] in `dtype`: the start of the residual stream.
    """
    table = params["transformer/wte/weight"].read_value()
    h = tf.cast(ops.lookup(table, input_ids), dtype)  # [B,S,E]
    seq_length = ops.dim(input_ids, 1)
    h += tf.cast(params["transformer/wpe/weight"][:seq_length], dtype)  # [S,E] over B
    return ops.dropout(h, config.embd_pdrop, training, dropout_seed, _SALT_EMBEDDINGS)


def attention_projections(params, config, i, h, compute_dtype):
    """ln_1 and c_attn of block i.

    Args:
      h: residual stream [B,S,E] in the float dtype.
    Returns:
      query, key, value: [B,N,S,d] each, in the compute dtype.
    """
    scope, e = block_scope(i), config.n_embd
    x = _layer_norm(params, f"{scope}/ln_1", h, config.layer_norm_epsilon, compute_dtype)  # [B,S,E]
    qkv = _conv1d(params, f"{scope}/attn/c_attn", tf.reshape(x, [-1, e]))  # [B*S,3E]
    return ops.split_heads(qkv, ops.dim(h, 1), 3, config.n_head)  # 3 x [B,N,S,d]


def block_from_projections(
    params, config, i, h, query, key, value, bias, compute_dtype, training=False, dropout_seed=None
):
    """The rest of block i once its projections are known: S queries attend over T keys (T = S in
    training; the key/value cache's slots in generation), then c_proj, residual, MLP, residual.

    Args:
      h: residual stream [B,S,E] (float dtype); query [B,N,S,d]; key, value [B,N,T,d].
      bias: additive attention bias [1 or B,1,S,T] (float dtype).
    Returns:
      [B,S,E], h's dtype.
    """
    c, scope, acc = config, block_scope(i), h.dtype
    seq_length, e = ops.dim(h, 1), c.n_embd
    salt = functools.partial(ops.layer_salt, i)
    if c.reorder_and_upcast_attn:
        query, key = tf.cast(query, acc), tf.cast(key, acc)
    scores = tf.matmul(query, key, transpose_b=True)  # [B,N,S,T]
    scale = 1.0 / math.sqrt(c.head_size) if c.scale_attn_weights else 1.0
    if c.scale_attn_by_inverse_layer_idx:
        scale /= i + 1
    probs = ops.fused_attention_probs(
        [scores],
        [bias, ops.keys_if(c.attn_pdrop, training, dropout_seed, salt(0)), None],
        scale=scale,
        rate=c.attn_pdrop,
        acc=acc,
    )  # [B,N,S,T]
    context = tf.matmul(tf.cast(probs, compute_dtype), value)  # [B,N,S,d]
    context = tf.transpose(context, [0, 2, 1, 3])  # [B,S,N,d]
    context = tf.reshape(context, [-1, e])  # [B*S,E]
    attn = _conv1d(params, f"{scope}/attn/c_proj", context)  # [B*S,E]
    attn = tf.reshape(attn, [-1, seq_length, e])  # [B,S,E]
    rate = c.resid_pdrop
    h = fused_residual([h, attn], [ops.keys_if(rate, training, dropout_seed, salt(1))], rate=rate)

    x = _layer_norm(params, f"{scope}/ln_2", h, c.layer_norm_epsilon, compute_dtype)
    y = _conv1d(params, f"{scope}/mlp/c_fc", tf.reshape(x, [-1, e]))  # [B*S,I]
    y = ops.fused_activation([y], name=c.activation_op)
    y = _conv1d(params, f"{scope}/mlp/c_proj", y)  # [B*S,E]
    y = tf.reshape(y, [-1, seq_length, e])  # [B,S,E]
    return fused_residual([h, y], [ops.keys_if(rate, training, dropout_seed, salt(2))], rate=rate)


def block(params, config, i, h, bias, compute_dtype, training=False, dropout_seed=None):
    """Block i (pre-LN): h += Attn(ln_1(h)); h += MLP(ln_2(h)), each output dropped out.

    Args:
      h: residual stream [B,S,E] in the float dtype (float32 or float64).
      bias: additive attention bias from `attention_bias` ([1 or B,1,S,S], float dtype).
      compute_dtype: dtype of the matmuls.
    Returns:
      [B,S,E], same dtype as h.
    """
    query, key, value = attention_projections(params, config, i, h, compute_dtype)
    return block_from_projections(
        params, config, i, h, query, key, value, bias, compute_dtype, training, dropout_seed
    )


def final_norm(params, config, h, compute_dtype):
    """ln_f of the residual stream h [B,S,E] (float dtype), cast to the compute dtype."""
    return _layer_norm(params, "transformer/ln_f", h, config.layer_norm_epsilon, compute_dtype)


def gpt2_forward(
    params,
    config,
    input_ids,
    attention_mask=None,
    training=False,
    dropout_seed=None,
    compute_dtype=tf.float32,
    with_logits=True,
):
    """GPT-2's logits and final hidden states (see `GPT2Model.__call__` for the arguments).

    Returns:
      (logits float32 [B,S,V] (float64 in float64 runs; None unless with_logits), hidden states
      after ln_f [B,S,E] in the compute dtype).
    """
    c = config
    compute_dtype = ops.check_compute_dtype(compute_dtype)
    acc = ops.float_dtype(compute_dtype)
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    seq_length = ops.dim(input_ids, 1)
    if isinstance(seq_length, int) and seq_length > c.n_positions:
        raise ValueError(f"sequence length {seq_length} exceeds n_positions {c.n_positions}")
    if training and max(c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) > 0:
        if dropout_seed is None:
            raise ValueError("gpt2_forward: training with dropout needs a dropout_seed")
        dropout_seed = tf.convert_to_tensor(dropout_seed)
    with ops.stage("emb"):
        h = embeddings(params, c, input_ids, training, dropout_seed, acc)  # [B,S,E]
        bias = attention_bias(seq_length, attention_mask, acc)  # [1 or B,1,S,S]
    for i in range(c.n_layer):
        # Everything but h is closed over, so tf.recompute_grad sees a one-tensor function.
        block_fn = functools.partial(
            block,
            params,
            c,
            i,
            bias=bias,
            compute_dtype=compute_dtype,
            training=training,
            dropout_seed=dropout_seed,
        )
        with ops.stage("hid", i):
            h = tf.recompute_grad(block_fn)(h) if c.recomputes(i) else block_fn(h)
    with ops.stage("mlm"):
        x = final_norm(params, c, h, compute_dtype)
        if not with_logits:
            return None, x
        table = ops.weight(params, "transformer/wte/weight", compute_dtype)  # [V,E], tied head
        logits = tf.matmul(tf.reshape(x, [-1, c.n_embd]), table, transpose_b=True)  # [B*S,V]
        logits = tf.reshape(tf.cast(logits, acc), [-1, seq_length, c.vocab_size])  # [B,S,V]
        return logits, x


class GPT2Model(tf.Module):
    """GPT2LMHeadModel's parameters under Hugging Face's names ("/" for "."), and its forward.

    Args:
      config: model_config_gpt2.GPT2Config.
      seed: int; initial values depend only on (seed, variable name).

    Attributes:
      config: as given.
      params: dict {name: float32 tf.Variable} in Hugging Face's state-dict order (`create_params`).
    """

    config_file = "config.json"  # what the training loop writes the config as (Hugging Face's)

    def __init__(self, config, seed=0):
        super().__init__(name="gpt2_model")
        self.config = config
        self.params = create_params(config, seed)

    @property
    def trainable_names(self):
        return [name for name, var in self.params.items() if var.trainable]

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        training=False,
        dropout_seed=None,
        compute_dtype=tf.float32,
        with_logits=True,
    ):
        """Next-token logits.

        Args:
          input_ids: int32 [B,S], S <= n_positions; positions are 0..S-1 in every row.
          attention_mask: optional [B,S] padding mask (1 token, 0 padding; any numeric or bool
            dtype): padded keys are hidden from every query. Causality needs no mask.
          training: Python bool; dropout only when True.
          dropout_seed: int32/int64 [2] tensor, required when training with non-zero dropout; the
            same seed draws the same masks (with or without recomputation).
          compute_dtype: tf.float32, tf.bfloat16, tf.float16 (or tf.float64).
          with_logits: False skips the LM head (logits None), for a loss that computes it in
            chunks (objectives.causal_lm.serialized_lm_loss).
        Returns:
          {"logits": float32 [B,S,V] (float64 in float64 runs), "hidden_states": [B,S,E] after
          ln_f, in compute_dtype}.
        """
        logits, hidden = gpt2_forward(
            self.params,
            self.config,
            input_ids,
            attention_mask,
            training,
            dropout_seed,
            compute_dtype,
            with_logits,
        )
        return {"logits": logits, "hidden_states": hidden}
