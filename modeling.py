"""BERT as plain functions over explicit float32 `tf.Variable`s named like Google BERT's checkpoints.

The model is a dict `params {name: tf.Variable}` whose keys are the TF1 checkpoint names
(`bert/encoder/layer_0/attention/self/query/kernel`, ...), built by `BertModel`, and a few pure
functions that read it: `embeddings`, `attention_mask`, `encoder_layer`, `bert_encoder`,
`pretraining_heads` (the losses are the task layer's: `objectives.pretraining`). No Keras layers: Keras 3 keeps only leaf names. The
primitives (variables, dense, LayerNorm, dropout, fused kernels, attention) are `modeling_ops`'s.

Semantics follow the reference app (Graphcore's TF1 BERT): post-LN encoder, LayerNorm epsilon 1e-3,
additive attention mask (1 - mask) * -1000, tied MLM projection evaluated only at the masked
positions, MLM loss sum(w * CE) / (sum(w) + 1e-5), and the optional "static mask" (remask) layout.
The encoder family (BERT's post-LN layers, or GroupBERT's from `modeling_groupbert` when
`config.groupbert`) is chosen in one place, `_encoder_family`; embeddings, pooler and heads are
shared.

Precision: variables are float32 masters. `compute_dtype` (float32, bfloat16 or float16) casts
weights and activations at use; matmuls run in the compute dtype, while LayerNorm (with its
residual add and dropout), softmax, activations, logits and losses are computed in float32.
float64 is also accepted (then those run in float64 too), which is what gradient tests use.

Speed (CPU): the elementwise chains between matmuls run as fused XLA kernels even when the step
is not XLA-compiled (`modeling_ops.xla_kernel`), dropout masks come from a cheap counter-based
hash instead of Philox, and `BertModel` evaluates the last encoder layer only at the rows its
heads read.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

import modeling_groupbert
import modeling_ops as ops
from model_config import BertConfig  # noqa: F401 (BertConfig: modeling.BertConfig)

ATTENTION_MASK_VALUE = -1000.0  # reference value; representable in bf16 and fp16


class BertModel(tf.Module):
    """BERT parameters (Google checkpoint names) plus the heads for pretraining.

    Args:
      config: BertConfig.
      heads: a subset of ("mlm", "nsp").
      seed: int; initial values depend only on (seed, variable name).
      xla: Python bool, True when the functions that call this model are XLA-compiled
        (`tf.function(..., jit_compile=True)`): pass the jit_compile of the step that runs it.
        It selects how GroupBERT runs its grouped convolution and projection (XLA: shifted
        products and one einsum; else oneDNN's grouped conv and split matmuls; see
        `modeling_groupbert.grouped_conv1d`). Either choice computes the same function; the
        wrong one is only slower (XLA's CPU grouped-conv gradient is very slow). BERT's own
        layers do not depend on it. Default False; `__call__` can override it per call.

    Attributes:
      config, heads (tuple), xla: as given.
      params: ordered dict {checkpoint name: float32 tf.Variable}. Other code may add heads with
        `modeling_ops.add_variable(model.params, ...)`.
    """

    HEADS = ("mlm", "nsp")

    def __init__(self, config, heads=("mlm", "nsp"), seed=0, xla=False):
        super().__init__(name="bert_model")
        unknown = set(heads) - set(self.HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; known: {self.HEADS}")
        self.config = config
        self.heads = tuple(heads)
        self.xla = bool(xla)
        self.params = _create_params(config, self.heads, seed)

    @property
    def trainable_names(self):
        """Names of the trainable variables, in creation order (the key bias is not trainable)."""
        return [name for name, var in self.params.items() if var.trainable]

    def __call__(
        self, features, training=False, dropout_seed=None, compute_dtype=tf.float32, xla=None
    ):
        """Encoder plus this model's heads: see `bert_encoder` and `pretraining_heads`.

        `xla` overrides the model's `xla` for this call (None: the model's), for a model run
        both by an XLA-compiled step and by a plain tf.function (e.g. an evaluator).

        The heads read only the masked slots and [CLS], so the last encoder layer is evaluated
        for those rows only (keys and values still span the sequence) and gives the same values.
        The full "sequence_output" is a separate branch: a traced function that does not use it
        never computes it.

        Packed features (`sequence_ids` present, see `is_packed`): the heads read the K·P
        masked slots and the K [CLS] rows at `cls_positions`, so "pooled_output" is [B,K,H] and
        "nsp_logits" [B,K,2].

        Returns:
          dict with "sequence_output" [B,S,H] and "pooled_output" [B,H] (compute dtype), plus
          "mlm_logits" [B,P,V] and/or "nsp_logits" [B,2] (float32).
        """
        c = self.config
        _, last_layer = _encode(
            self.params,
            c,
            features,
            training,
            dropout_seed,
            compute_dtype,
            self.xla if xla is None else xla,
        )
        sequence_output = last_layer()
        if not self.heads:
            with ops.stage("cls"):
                pooled = _pooler(self.params, _cls_output(c, features, sequence_output))
            return {"sequence_output": sequence_output, "pooled_output": pooled}
        packed = is_packed(features)
        num_masked = c.max_predictions_per_seq
        if c.static_mask:
            rows = num_masked + 1  # the masked slots, then [CLS]
        elif packed:
            cls = tf.cast(features["cls_positions"], tf.int32)  # [B,K]
            if "mlm" in self.heads:
                positions = tf.cast(features["masked_lm_positions"], tf.int32)  # [B,K*P]
                num_masked = ops.dim(positions, 1)
                rows = tf.concat([positions, cls], axis=1)  # [B,K*P+K]: then the K [CLS]
            else:
                rows, num_masked = cls, 0
        elif "mlm" in self.heads:
            positions = tf.cast(features["masked_lm_positions"], tf.int32)  # [B,P]
            num_masked = ops.dim(positions, 1)
            rows = tf.pad(positions, [[0, 0], [0, 1]])  # [B,P+1]: [CLS] is slot 0
        else:
            rows, num_masked = 1, 0
        head_input = last_layer(rows)  # [B,R,H]
        with ops.stage("cls"):
            # Packed: the K [CLS] rows [B,K,H]; else the one [CLS] [B,H].
            cls_rows = head_input[:, num_masked:] if packed else head_input[:, num_masked]
            pooled = _pooler(self.params, cls_rows)
        outputs = {"sequence_output": sequence_output, "pooled_output": pooled}
        if "mlm" in self.heads:
            with ops.stage("mlm"):
                outputs["mlm_logits"] = _mlm_logits(self.params, c, head_input[:, :num_masked])
        if "nsp" in self.heads:
            with ops.stage("cls"):
                outputs["nsp_logits"] = _nsp_logits(self.params, pooled)
        return outputs


def _create_params(config, heads, seed):
    c = config
    h, params = c.hidden_size, {}
    normal = functools.partial(ops.add_variable, stddev=c.initializer_range, seed=seed)
    normal(params, "bert/embeddings/word_embeddings", [c.vocab_size, h])
    normal(params, "bert/embeddings/token_type_embeddings", [c.type_vocab_size, h])
    normal(params, "bert/embeddings/position_embeddings", [c.max_position_embeddings, h])
    ops.add_layer_norm(params, "bert/embeddings/LayerNorm", h)
    _encoder_family(c).add_params(params, c, seed)
    ops.add_dense(params, "bert/pooler/dense", h, h, c.initializer_range, seed)
    if "mlm" in heads:
        if c.use_cls_layer:
            ops.add_dense(
                params, "cls/predictions/transform/dense", h, h, c.initializer_range, seed
            )
            ops.add_layer_norm(params, "cls/predictions/transform/LayerNorm", h)
        if c.use_prediction_bias:
            ops.add_variable(params, "cls/predictions/output_bias", [c.vocab_size], "zeros")
    if "nsp" in heads:
        normal(params, "cls/seq_relationship/output_weights", [2, h])
        ops.add_variable(params, "cls/seq_relationship/output_bias", [2], "zeros")
    return params


# Dropout salts (see modeling_ops): the embeddings use 1; layer i's uses are
# modeling_ops.layer_salt(i, use) with use 0 attention probabilities, 1 attention output,
# 2 feed-forward output.
_SALT_EMBEDDINGS = 1


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
    acc = ops.float_dtype(compute_dtype)
    x = tf.cast(ops.lookup(params["bert/embeddings/word_embeddings"].read_value(), input_ids), acc)
    table = params["bert/embeddings/position_embeddings"]
    offset = config.position_offset
    if positions is None:
        x += tf.cast(table[offset : offset + ops.dim(input_ids, 1)], acc)  # [S,H] broadcast over B
    else:
        positions = tf.minimum(positions + offset, config.max_position_embeddings - 1)
        x += tf.cast(ops.lookup(table.read_value(), positions), acc)
    # One-hot times table (as Google does) gives a dense gradient for this tiny table.
    one_hot = tf.one_hot(segment_ids, config.type_vocab_size, dtype=acc)  # [B,S,T]
    token_type = ops.weight(params, "bert/embeddings/token_type_embeddings", acc)
    x += tf.einsum("bst,th->bsh", one_hot, token_type)
    rate = config.hidden_dropout_prob
    return ops.fused_norm(
        [x, *ops.norm_params(params, "bert/embeddings/LayerNorm", acc)],
        [ops.keys_if(rate, training, dropout_seed, _SALT_EMBEDDINGS)],
        epsilon=config.layer_norm_eps,
        rate=rate,
        dtype=tf.as_dtype(compute_dtype),
    )


def is_packed(features):
    """Whether `features` hold packed sequences (bert_data/records.py, "packed layout")."""
    return "sequence_ids" in features


def attention_mask(config, features, dtype=tf.float32):
    """Additive attention mask (1 - visible) * -1000 over keys, or None when every key is visible.

    Standard layout: visible = features["input_mask"] (None when the key is absent). Static-mask
    layout: slot j is visible if (j < mask_padding_index or j >= max_predictions_per_seq) and
    j < seq_padding_index. Packed layout (`is_packed`): block-diagonal, key j is visible from
    query i when sequence_ids[i] == sequence_ids[j] != 0; a padding query sees no key, and the
    additive mask (not -inf) gives it a uniform softmax instead of NaN (its output is unused).
    A masked key's weight is exp(-1000 + ...) = 0 exactly in float32 and float64, so a sequence
    gets the attention it gets alone in a row.

    Returns:
      `dtype` [B,1,1,S] (broadcasts over heads and queries), [B,1,S,S] when packed, or None.
    """
    if is_packed(features):
        ids = tf.cast(features["sequence_ids"], tf.int32)  # [B,S]
        same = tf.equal(ids[:, :, tf.newaxis], ids[:, tf.newaxis, :])  # [B,S,S] query, key
        visible = same & (ids[:, tf.newaxis, :] > 0)  # [B,S,S]
        hidden = 1.0 - tf.cast(visible, dtype)
        return (hidden * ATTENTION_MASK_VALUE)[:, tf.newaxis]  # [B,1,S,S]
    if config.static_mask:
        seq_length = ops.dim(features["input_ids"], 1)
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


def encoder_layer(
    params, config, layer_index, x, mask, training=False, dropout_seed=None, rows=None
):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Args:
      x: [B,S,H] in the compute dtype (which the layer computes in).
      mask: additive float [B,1,1,S] or [B,1,S,S] (packed) from `attention_mask`, or None.
      rows: None for every slot, or the slots whose outputs are wanted: an int R (the first R
        slots) or int32 [B,R]. Keys and values still come from all S slots, and dropout masks
        are the ones the full layer would draw at those rows, so the result equals those rows
        of the full layer's output.
    Returns:
      [B,S,H] (or [B,R,H] with rows), same dtype as x.
    """
    layer = f"bert/encoder/layer_{layer_index}"
    acc = ops.float_dtype(x.dtype)
    batch, seq_length, hidden = ops.dim(x, 0), ops.dim(x, 1), config.hidden_size
    heads = config.num_attention_heads
    head_size = hidden // heads
    salt = functools.partial(ops.layer_salt, layer_index)

    x2d = tf.reshape(x, [-1, hidden])  # [B*S,H]
    hidden_index = probs_index = None
    if rows is None:
        query, key, value = ops.split_heads(
            ops.qkv_projection(params, config, layer, x2d, ops.QKV), seq_length, 3, heads
        )
        xq2d, num_rows = x2d, seq_length
    else:
        per_query = mask is not None and mask.shape[2] != 1  # packed: a mask row per query
        if isinstance(rows, int):
            xq = x[:, :rows]  # [B,R,H]
            if per_query:
                mask = mask[:, :, :rows]  # [B,1,R,S]
            num_rows, rows = rows, tf.range(rows)[tf.newaxis, :]  # [1,R]
        else:
            xq = tf.gather(x, rows, batch_dims=1)  # [B,R,H]
            if per_query:
                mask = tf.gather(mask[:, 0], rows, batch_dims=1)[:, tf.newaxis]  # [B,1,R,S]
            num_rows = ops.dim(rows, 1)
        xq2d = tf.reshape(xq, [-1, hidden])  # [B*R,H]
        (query,) = ops.split_heads(
            ops.qkv_projection(params, config, layer, xq2d, ops.QKV[:1]), num_rows, 1, heads
        )  # [B,N,R,d]
        key, value = ops.split_heads(
            ops.qkv_projection(params, config, layer, x2d, ops.QKV[1:]), seq_length, 2, heads
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
    probs = ops.fused_attention_probs(
        [scores],
        [mask, ops.keys_if(rate, training, dropout_seed, salt(0)), probs_index],
        scale=1.0 / math.sqrt(head_size),
        rate=rate,
        acc=acc,
    )
    context = tf.matmul(probs, value)  # [B,N,R,d]
    context = tf.transpose(context, [0, 2, 1, 3])  # [B,R,N,d]
    context = tf.reshape(context, [-1, hidden])  # [B*R,H]
    attn = ops.dense(
        params,
        f"{layer}/attention/projection/dense",
        context,
        bias=config.use_attention_projection_bias,
    )
    rate, eps = config.hidden_dropout_prob, config.layer_norm_eps
    y = ops.fused_add_norm(
        [xq2d, attn, *ops.norm_params(params, f"{layer}/attention/projection/LayerNorm", acc)],
        [ops.keys_if(rate, training, dropout_seed, salt(1)), hidden_index],
        epsilon=eps,
        rate=rate,
    )
    ffn = ops.dense(params, f"{layer}/intermediate/dense", y)  # [B*R,I]
    ffn = ops.fused_activation([ffn], name=config.hidden_act)
    ffn = ops.dense(params, f"{layer}/output/dense", ffn)  # [B*R,H]
    y = ops.fused_add_norm(
        [y, ffn, *ops.norm_params(params, f"{layer}/output/LayerNorm", acc)],
        [ops.keys_if(rate, training, dropout_seed, salt(2)), hidden_index],
        epsilon=eps,
        rate=rate,
    )
    return tf.reshape(y, [-1, num_rows, hidden])  # [B,R,H]


# ----------------------------------------------------------------------------- encoder families


def _add_bert_layers(params, config, seed):
    """Add every post-LN BERT encoder layer's variables (Google names) to `params`, in order."""
    c, h, std = config, config.hidden_size, config.initializer_range
    for i in range(c.num_hidden_layers):
        layer = f"bert/encoder/layer_{i}"
        ops.add_attention(params, c, layer, seed)
        ops.add_layer_norm(params, f"{layer}/attention/projection/LayerNorm", h)
        ops.add_dense(params, f"{layer}/intermediate/dense", h, c.intermediate_size, std, seed)
        ops.add_dense(params, f"{layer}/output/dense", c.intermediate_size, h, std, seed)
        ops.add_layer_norm(params, f"{layer}/output/LayerNorm", h)


def _bert_layers(params, config, x, features, mask, training, dropout_seed, xla):
    """BERT's encoder layers after the embeddings (`EncoderFamily.encode`; features and xla
    are not used: the layers read the mask only and have one XLA and non-XLA form)."""
    del features, xla

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
        with ops.stage("hid", i):
            return tf.recompute_grad(layer_fn)(x) if config.recompute else layer_fn(x)

    for i in range(config.num_hidden_layers - 1):
        x = layer(i, x)
    return x, functools.partial(layer, config.num_hidden_layers - 1, x)


def _bert_layer_flops(config, seq_length):
    """Forward matmul FLOPs of one BERT layer: QKV 6SH^2 + scores and context 4S^2H +
    projection 2SH^2 + FFN 4SHI."""
    s, h, i = seq_length, config.hidden_size, config.intermediate_size
    return 8 * s * h * h + 4 * s * s * h + 4 * s * h * i


class EncoderFamily(NamedTuple):
    """What an encoder family provides; every family has the same three signatures."""

    # (params, config, seed): add the encoder's variables to params, in checkpoint order.
    add_params: Callable
    # (params, config, x [B,S,H] embeddings in the compute dtype, features, mask [B,1,1,S] or
    # None, training, dropout_seed, xla) -> (input of the last layer [B,S,H],
    # last_layer(rows=None) -> [B,S,H], or [B,R,H] for rows an int R or int32 [B,R]).
    encode: Callable
    # (config, seq_length) -> forward matmul FLOPs of one layer for one sequence.
    layer_flops: Callable


_ENCODERS = {
    False: EncoderFamily(_add_bert_layers, _bert_layers, _bert_layer_flops),
    True: EncoderFamily(
        modeling_groupbert.create_groupbert_params,
        modeling_groupbert.encode,
        modeling_groupbert.layer_flops,
    ),
}


def _encoder_family(config):
    """The one place the encoder family is chosen: GroupBERT when config.groupbert, else BERT."""
    return _ENCODERS[bool(config.groupbert)]


def _encode(params, config, features, training, dropout_seed, compute_dtype, xla=False):
    """Embeddings and every encoder layer but the last (xla: see `BertModel`).

    Returns:
      (x [B,S,H] input of the last layer, last_layer(rows=None) -> its output).
    """
    compute_dtype = ops.check_compute_dtype(compute_dtype)
    dropout_used = config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0
    if training and dropout_used:
        if dropout_seed is None:
            raise ValueError("bert_encoder: training with dropout needs a dropout_seed")
        dropout_seed = tf.convert_to_tensor(dropout_seed)
    if config.static_mask:
        positions = features["input_position"]
    elif is_packed(features):
        positions = tf.cast(features["positions"], tf.int32)  # [B,S], 0 at each [CLS]
    else:
        positions = None
    with ops.stage("emb"):
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
        mask = attention_mask(config, features, ops.float_dtype(compute_dtype))
    encode = _encoder_family(config).encode
    return encode(params, config, x, features, mask, training, dropout_seed, xla)


def _cls_slot(config):
    """Slot of [CLS]: max_predictions_per_seq in the static-mask layout, else 0."""
    return config.max_predictions_per_seq if config.static_mask else 0


def _cls_output(config, features, sequence_output):
    """The [CLS] rows of sequence_output [B,S,H]: [B,H], or [B,K,H] at cls_positions (packed)."""
    if is_packed(features):
        cls = tf.cast(features["cls_positions"], tf.int32)  # [B,K]
        return tf.gather(sequence_output, cls, batch_dims=1)  # [B,K,H]
    return sequence_output[:, _cls_slot(config)]  # [B,H]


def _per_row(fn, x):
    """fn over [N,H] applied to x [B,H] as is, or to x [B,K,H] row by row (packed [CLS])."""
    if x.shape.rank == 2:
        return fn(x)
    y = fn(tf.reshape(x, [-1, ops.dim(x, 2)]))  # [B*K,H] -> [B*K,O]
    return tf.reshape(y, tf.concat([tf.shape(x)[:2], tf.shape(y)[1:]], 0))  # [B,K,O]


def _pooler(params, cls):
    """cls [B,H] (or [B,K,H] packed) -> tanh(dense), same shape."""
    return _per_row(lambda c: tf.tanh(ops.dense(params, "bert/pooler/dense", c)), cls)


def bert_encoder(
    params, config, features, training=False, dropout_seed=None, compute_dtype=tf.float32, xla=False
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
      xla: Python bool, whether the calling function is XLA-compiled (see `BertModel`).
    Returns:
      (sequence_output [B,S,H], pooled_output [B,H]), both in compute_dtype. The pooler reads slot 0,
      or slot max_predictions_per_seq (where [CLS] sits) in the static-mask layout; packed
      features (sequence_ids, positions, cls_positions [B,K]) give pooled_output [B,K,H].
    """
    _, last_layer = _encode(params, config, features, training, dropout_seed, compute_dtype, xla)
    x = last_layer()
    with ops.stage("cls"):
        return x, _pooler(params, _cls_output(config, features, x))


def bert_pooled_output(
    params, config, features, training=False, dropout_seed=None, compute_dtype=tf.float32, xla=False
):
    """The pooled output alone (sentence classification): the last encoder layer is evaluated
    at the [CLS] row only (keys and values still span the sequence), which gives the same values
    as `bert_encoder`'s pooled output for less work. Arguments as `bert_encoder`.

    Returns:
      [B,H] in compute_dtype; [B,K,H] for packed features (the K [CLS] rows at cls_positions).
    """
    _, last_layer = _encode(params, config, features, training, dropout_seed, compute_dtype, xla)
    if is_packed(features):
        x = last_layer(tf.cast(features["cls_positions"], tf.int32))  # [B,K,H]
        with ops.stage("cls"):
            return _pooler(params, x)
    slot = _cls_slot(config)
    x = last_layer(slot + 1)
    with ops.stage("cls"):
        return _pooler(params, x[:, slot])


def _mlm_logits(params, config, masked):
    """masked [B,P,H] (compute dtype) -> float32 [B,P,V] (float64 in float64 runs)."""
    dtype = masked.dtype
    num_masked = ops.dim(masked, 1)
    x = tf.reshape(masked, [-1, config.hidden_size])  # [B*P,H]
    if config.use_cls_layer:
        x = ops.ACTIVATIONS[config.hidden_act](
            ops.dense(params, "cls/predictions/transform/dense", x)
        )
        x = ops.layer_norm(params, "cls/predictions/transform/LayerNorm", x, config.layer_norm_eps)
    table = ops.weight(params, "bert/embeddings/word_embeddings", dtype)  # [V,H], tied
    logits = tf.matmul(x, table, transpose_b=True)  # [B*P,V]
    if config.use_prediction_bias:
        logits = tf.nn.bias_add(logits, ops.weight(params, "cls/predictions/output_bias", dtype))
    logits = tf.cast(logits, ops.float_dtype(dtype))
    return tf.reshape(logits, [-1, num_masked, config.vocab_size])  # [B,P,V]


def _nsp_logits(params, pooled):
    """pooled [B,H] (or [B,K,H] packed; compute dtype) -> float32 [B,2] (or [B,K,2]; float64
    in float64 runs)."""

    def logits(x):
        weights = ops.weight(params, "cls/seq_relationship/output_weights", x.dtype)  # [2,H]
        y = tf.matmul(x, weights, transpose_b=True)  # [N,2]
        y += ops.weight(params, "cls/seq_relationship/output_bias", x.dtype)
        return tf.cast(y, ops.float_dtype(x.dtype))

    return _per_row(logits, pooled)


def pretraining_heads(
    params, config, sequence_output, pooled_output, features, heads=("mlm", "nsp")
):
    """MLM and NSP logits, computed in the dtype of the encoder outputs, returned in float32.

    Args:
      sequence_output: [B,S,H]; pooled_output: [B,H] (from `bert_encoder`).
      features: masked_lm_positions int32 [B,P] in the standard layout (without it, P = S: every
        slot, as a served model scores them); in the static-mask layout the masked tokens are the
        first P = max_predictions_per_seq slots.
      heads: which logits to compute.
    Returns:
      {"mlm_logits": float32 [B,P,V], "nsp_logits": float32 [B,2]} (only the requested ones).
    """
    outputs = {}
    if "mlm" in heads:
        if config.static_mask:
            masked = sequence_output[:, : config.max_predictions_per_seq]  # [B,P,H]
        elif "masked_lm_positions" in features:
            positions = features["masked_lm_positions"]
            masked = tf.gather(sequence_output, positions, batch_dims=1)  # [B,P,H]
        else:
            masked = sequence_output  # [B,S,H]
        outputs["mlm_logits"] = _mlm_logits(params, config, masked)
    if "nsp" in heads:
        outputs["nsp_logits"] = _nsp_logits(params, pooled_output)
    return outputs


def span_logits(sequence_output, weights, bias):
    """SQuAD's span head: a start and an end logit for every slot.

    Args:
      sequence_output: [B,S,H] in the compute dtype.
      weights: float32 [2,H] (`cls/squad/output_weights`); bias: float32 [2].
    Returns:
      (start_logits, end_logits), float32 [B,S] each.
    """
    x = sequence_output
    logits = tf.einsum("bsh,kh->bks", x, tf.cast(weights, x.dtype))  # [B,2,S]
    logits = tf.cast(logits, tf.float32) + bias[tf.newaxis, :, tf.newaxis]
    return logits[:, 0], logits[:, 1]


def classifier_logits(pooled_output, weights, bias):
    """The GLUE classifier head (one output for a regression task such as STS-B).

    Args:
      pooled_output: [B,H] in the compute dtype.
      weights: float32 [C,H] (`glue_loss/output_weights`); bias: float32 [C].
    Returns:
      float32 [B,C].
    """
    logits = tf.matmul(pooled_output, tf.cast(weights, pooled_output.dtype), transpose_b=True)
    return tf.cast(logits, tf.float32) + bias  # [B,C]


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
    (`modeling_groupbert.layer_flops`; the family is `_encoder_family`'s).
    Embedding lookups, LayerNorm, softmax, biases and activations are not counted. BERT-base at
    S=128, P=20 (V=30522) gives about 69.9 GFLOP; GroupBERT-base (V=30400, MLM transform) about
    108.8 GFLOP.
    """
    h = config.hidden_size
    per_layer = _encoder_family(config).layer_flops(config, seq_length)
    mlm = 2 * num_masked * h * config.vocab_size
    if config.use_cls_layer:
        mlm += 2 * num_masked * h * h
    forward = config.num_hidden_layers * per_layer + mlm + 2 * h * h + 4 * h
    return 3 * forward
