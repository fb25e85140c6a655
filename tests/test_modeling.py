"""Tests for modeling.py against NumPy references written here, finite differences and tables."""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import modeling
import modeling_ops
from common.errors import UserError
from objectives.pretraining import pretraining_loss

B, S, P = 2, 7, 3
TINY = dict(
    vocab_size=99,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=11,
    max_predictions_per_seq=P,
)


def tiny_config(**overrides):
    return modeling.BertConfig(**{**TINY, **overrides})


# ----------------------------------------------------------------------------- NumPy reference

_erf = np.vectorize(math.erf)


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


NP_ACT = {
    "gelu": np_gelu_tanh,
    "gelu_erf": np_gelu_erf,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


def np_layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_visible_static(f, cfg):
    """Key visibility of the remask layout, written slot by slot."""
    vis = np.zeros((B, S))
    for b in range(B):
        k, end = int(f["mask_padding_index"][b, 0]), int(f["seq_padding_index"][b, 0])
        for j in range(S):
            vis[b, j] = float((j < k or j >= cfg.max_predictions_per_seq) and j < end)
    return vis


def np_forward(p, cfg, f):
    """Independent float64 BERT forward: loops over examples and heads."""
    act = NP_ACT[cfg.hidden_act]
    h, n = cfg.hidden_size, cfg.num_attention_heads
    d = h // n
    eps = cfg.layer_norm_eps
    ids = f["input_ids"]
    if cfg.static_mask:
        pos = np.minimum(f["input_position"], cfg.max_position_embeddings - 1)
        vis = np_visible_static(f, cfg)
    else:
        pos = np.tile(np.arange(S), (B, 1))
        vis = f["input_mask"].astype(np.float64)
    x = (
        p["bert/embeddings/word_embeddings"][ids]
        + p["bert/embeddings/position_embeddings"][pos]
        + p["bert/embeddings/token_type_embeddings"][f["segment_ids"]]
    )
    x = np_layer_norm(
        x, p["bert/embeddings/LayerNorm/gamma"], p["bert/embeddings/LayerNorm/beta"], eps
    )
    for layer in range(cfg.num_hidden_layers):
        pre = f"bert/encoder/layer_{layer}/"
        if cfg.use_qkv_split:
            wq, wk, wv = (p[pre + f"attention/self/{t}/kernel"] for t in ("query", "key", "value"))
        else:
            w = p[pre + "attention/self/kernel/qkv_weight"]
            wq, wk, wv = w[:, :h], w[:, h : 2 * h], w[:, 2 * h :]
        q, k, v = x @ wq, x @ wk, x @ wv
        if cfg.use_qkv_bias:
            q = q + p[pre + "attention/self/query/bias"]
            k = k + p[pre + "attention/self/key/bias"]
            v = v + p[pre + "attention/self/value/bias"]
        ctx = np.zeros_like(x)
        for b in range(B):
            for head in range(n):
                sl = slice(head * d, (head + 1) * d)
                scores = q[b][:, sl] @ k[b][:, sl].T / math.sqrt(d) + (1.0 - vis[b]) * -1000.0
                ctx[b][:, sl] = np_softmax(scores) @ v[b][:, sl]
        attn = ctx @ p[pre + "attention/projection/dense/kernel"]
        if cfg.use_attention_projection_bias:
            attn = attn + p[pre + "attention/projection/dense/bias"]
        ln = pre + "attention/projection/LayerNorm/"
        x = np_layer_norm(x + attn, p[ln + "gamma"], p[ln + "beta"], eps)
        mid = act(x @ p[pre + "intermediate/dense/kernel"] + p[pre + "intermediate/dense/bias"])
        out = mid @ p[pre + "output/dense/kernel"] + p[pre + "output/dense/bias"]
        x = np_layer_norm(
            x + out, p[pre + "output/LayerNorm/gamma"], p[pre + "output/LayerNorm/beta"], eps
        )
    if cfg.static_mask:
        masked = x[:, : cfg.max_predictions_per_seq]
        cls = x[:, cfg.max_predictions_per_seq]
    else:
        masked = np.stack([x[b][f["masked_lm_positions"][b]] for b in range(B)])
        cls = x[:, 0]
    if cfg.use_cls_layer:
        t = "cls/predictions/transform/"
        masked = act(masked @ p[t + "dense/kernel"] + p[t + "dense/bias"])
        masked = np_layer_norm(masked, p[t + "LayerNorm/gamma"], p[t + "LayerNorm/beta"], eps)
    mlm = masked @ p["bert/embeddings/word_embeddings"].T
    if cfg.use_prediction_bias:
        mlm = mlm + p["cls/predictions/output_bias"]
    pooled = np.tanh(cls @ p["bert/pooler/dense/kernel"] + p["bert/pooler/dense/bias"])
    nsp = (
        pooled @ p["cls/seq_relationship/output_weights"].T + p["cls/seq_relationship/output_bias"]
    )
    return mlm, nsp


# ----------------------------------------------------------------------------- inputs


def standard_features(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, S), np.int32)
    mask[1, 5:] = 0  # example 1 has 5 real tokens
    ids = rng.integers(1, 99, (B, S)).astype(np.int32) * mask
    return {
        "input_ids": ids,
        "input_mask": mask,
        "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]], np.int32),
        "masked_lm_positions": np.array([[1, 3, 5], [2, 4, 0]], np.int32),
        "masked_lm_ids": rng.integers(0, 99, (B, P)).astype(np.int32),
        "masked_lm_weights": np.array([[1, 1, 1], [1, 1, 0]], np.float32),
        "next_sentence_labels": np.array([[1], [0]], np.int32),
    }


def remask_features(std, pad_position=384):
    """The static-mask ("remask") layout of the same examples, built slot by slot."""
    out = {k: np.zeros((B, S), np.int32) for k in ("input_ids", "input_position", "segment_ids")}
    out["input_position"][:] = pad_position
    out["mask_padding_index"] = np.zeros((B, 1), np.int32)
    out["seq_padding_index"] = np.zeros((B, 1), np.int32)
    for b in range(B):
        n_real = int(std["input_mask"][b].sum())
        masked = [
            int(q) for q, w in zip(std["masked_lm_positions"][b], std["masked_lm_weights"][b]) if w
        ]
        rest = [q for q in range(n_real) if q not in masked]
        slots = list(enumerate(masked)) + list(enumerate(rest, start=P))
        for slot, q in slots:
            out["input_ids"][b, slot] = std["input_ids"][b, q]
            out["segment_ids"][b, slot] = std["segment_ids"][b, q]
            out["input_position"][b, slot] = q
        out["mask_padding_index"][b] = len(masked)
        out["seq_padding_index"][b] = P + len(rest)
    for key in ("masked_lm_ids", "masked_lm_weights", "next_sentence_labels"):
        out[key] = std[key]
    return out


def to_tf(f):
    return {k: tf.constant(v) for k, v in f.items()}


def randomize(model, seed=1, scale=0.2):
    """Give every variable (biases, gamma, beta, key bias too) random values."""
    rng = np.random.default_rng(seed)
    for name, var in model.params.items():
        value = rng.normal(0.0, scale, var.shape)
        if name.endswith("gamma"):
            value += 1.0
        var.assign(value.astype(np.float32))


def np_params(model):
    return {k: v.numpy().astype(np.float64) for k, v in model.params.items()}


# ----------------------------------------------------------------------------- config


def test_config_from_dict_ignores_unknown_and_round_trips(tmp_path):
    cfg = modeling.BertConfig.from_dict({**TINY, "learning_rate": 0.1, "hidden_act": "gelu_erf"})
    assert cfg.hidden_size == 36 and cfg.hidden_act == "gelu_erf"
    # reference effective defaults
    assert cfg.use_cls_layer and cfg.use_prediction_bias and cfg.use_attention_projection_bias
    assert not (cfg.use_qkv_split or cfg.use_qkv_bias or cfg.static_mask or cfg.recompute)
    assert cfg.layer_norm_eps == 1e-3 and cfg.max_predictions_per_seq == P
    path = tmp_path / "bert_config.json"
    cfg.to_json_file(str(path))
    assert json.loads(path.read_text())["intermediate_size"] == 37
    assert modeling.BertConfig.from_json_file(str(path)) == cfg


@pytest.mark.parametrize(
    "change, words",
    [
        ({"num_attention_heads": 5}, "divisible"),
        ({"hidden_act": "gelu_fast"}, "hidden_act"),
        ({"hidden_size": "36"}, "hidden_size"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
    ],
)
def test_config_errors_are_one_line(change, words):
    with pytest.raises(UserError) as err:
        modeling.BertConfig.from_dict({**TINY, **change})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        modeling.BertConfig.from_json_file(str(bad))
    with pytest.raises(UserError, match="missing.json"):
        modeling.BertConfig.from_json_file(str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="vocab_size"):
        modeling.BertConfig.from_dict({"hidden_size": 36})


def test_gelu_names_pin_tanh_versus_erf():
    x = np.linspace(-5, 5, 201)
    tanh_form, erf_form = np_gelu_tanh(x), np_gelu_erf(x)
    for name in ("gelu", "gelu_new"):  # Google / reference meaning
        np.testing.assert_allclose(
            modeling_ops.ACTIVATIONS[name](x).numpy(), tanh_form, rtol=1e-6, atol=1e-9
        )
    for name in ("gelu_erf", "gelu_exact"):  # Hugging Face's "gelu"
        np.testing.assert_allclose(
            modeling_ops.ACTIVATIONS[name](x).numpy(), erf_form, rtol=1e-6, atol=1e-9
        )
    assert np.abs(tanh_form - erf_form).max() > 1e-4  # the forms really differ
    np.testing.assert_allclose(modeling_ops.ACTIVATIONS["swish"](x).numpy(), x / (1 + np.exp(-x)))


# ----------------------------------------------------------------------------- variables

LAYER_FUSED = [
    "attention/self/kernel/qkv_weight",
    "attention/projection/dense/kernel",
    "attention/projection/dense/bias",
    "attention/projection/LayerNorm/gamma",
    "attention/projection/LayerNorm/beta",
    "intermediate/dense/kernel",
    "intermediate/dense/bias",
    "output/dense/kernel",
    "output/dense/bias",
    "output/LayerNorm/gamma",
    "output/LayerNorm/beta",
]
EXPECTED_DEFAULT = [
    "bert/embeddings/word_embeddings",
    "bert/embeddings/position_embeddings",
    "bert/embeddings/token_type_embeddings",
    "bert/embeddings/LayerNorm/gamma",
    "bert/embeddings/LayerNorm/beta",
    *[f"bert/encoder/layer_0/{n}" for n in LAYER_FUSED],
    *[f"bert/encoder/layer_1/{n}" for n in LAYER_FUSED],
    "bert/pooler/dense/kernel",
    "bert/pooler/dense/bias",
    "cls/predictions/transform/dense/kernel",
    "cls/predictions/transform/dense/bias",
    "cls/predictions/transform/LayerNorm/gamma",
    "cls/predictions/transform/LayerNorm/beta",
    "cls/predictions/output_bias",
    "cls/seq_relationship/output_weights",
    "cls/seq_relationship/output_bias",
]
EXPECTED_SPLIT = [
    "bert/embeddings/LayerNorm/beta",
    "bert/embeddings/LayerNorm/gamma",
    "bert/embeddings/position_embeddings",
    "bert/embeddings/token_type_embeddings",
    "bert/embeddings/word_embeddings",
    "bert/encoder/layer_0/attention/projection/LayerNorm/beta",
    "bert/encoder/layer_0/attention/projection/LayerNorm/gamma",
    "bert/encoder/layer_0/attention/projection/dense/kernel",
    "bert/encoder/layer_0/attention/self/key/bias",
    "bert/encoder/layer_0/attention/self/key/kernel",
    "bert/encoder/layer_0/attention/self/query/bias",
    "bert/encoder/layer_0/attention/self/query/kernel",
    "bert/encoder/layer_0/attention/self/value/bias",
    "bert/encoder/layer_0/attention/self/value/kernel",
    "bert/encoder/layer_0/intermediate/dense/bias",
    "bert/encoder/layer_0/intermediate/dense/kernel",
    "bert/encoder/layer_0/output/LayerNorm/beta",
    "bert/encoder/layer_0/output/LayerNorm/gamma",
    "bert/encoder/layer_0/output/dense/bias",
    "bert/encoder/layer_0/output/dense/kernel",
    "bert/encoder/layer_1/attention/projection/LayerNorm/beta",
    "bert/encoder/layer_1/attention/projection/LayerNorm/gamma",
    "bert/encoder/layer_1/attention/projection/dense/kernel",
    "bert/encoder/layer_1/attention/self/key/bias",
    "bert/encoder/layer_1/attention/self/key/kernel",
    "bert/encoder/layer_1/attention/self/query/bias",
    "bert/encoder/layer_1/attention/self/query/kernel",
    "bert/encoder/layer_1/attention/self/value/bias",
    "bert/encoder/layer_1/attention/self/value/kernel",
    "bert/encoder/layer_1/intermediate/dense/bias",
    "bert/encoder/layer_1/intermediate/dense/kernel",
    "bert/encoder/layer_1/output/LayerNorm/beta",
    "bert/encoder/layer_1/output/LayerNorm/gamma",
    "bert/encoder/layer_1/output/dense/bias",
    "bert/encoder/layer_1/output/dense/kernel",
    "bert/pooler/dense/bias",
    "bert/pooler/dense/kernel",
    "cls/seq_relationship/output_bias",
    "cls/seq_relationship/output_weights",
]


def test_variable_names_default_fused():
    model = modeling.BertModel(tiny_config())
    assert sorted(model.params) == sorted(EXPECTED_DEFAULT)
    assert [v.name for v in model.params.values()] == [n + ":0" for n in model.params]
    assert model.trainable_names == list(model.params)
    shapes = {n: tuple(v.shape) for n, v in model.params.items()}
    assert shapes["bert/embeddings/word_embeddings"] == (99, 36)
    assert shapes["bert/embeddings/position_embeddings"] == (11, 36)
    assert shapes["bert/encoder/layer_1/attention/self/kernel/qkv_weight"] == (36, 108)
    assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == (36, 37)
    assert shapes["cls/predictions/output_bias"] == (99,)
    assert shapes["cls/seq_relationship/output_weights"] == (2, 36)
    assert all(v.dtype == tf.float32 for v in model.params.values())


def test_variable_names_split_with_qkv_bias():
    cfg = tiny_config(
        use_qkv_split=True,
        use_qkv_bias=True,
        use_attention_projection_bias=False,
        use_cls_layer=False,
        use_prediction_bias=False,
    )
    with tf.name_scope("outer_scope"):  # must not leak into the names
        model = modeling.BertModel(cfg)
    assert sorted(model.params) == EXPECTED_SPLIT
    assert [v.name for v in model.params.values()] == [n + ":0" for n in model.params]
    frozen = sorted(set(model.params) - set(model.trainable_names))
    assert frozen == [f"bert/encoder/layer_{i}/attention/self/key/bias" for i in (0, 1)]
    assert tuple(model.params["bert/encoder/layer_0/attention/self/key/kernel"].shape) == (36, 36)


def test_initialisation_and_added_head():
    a = modeling.BertModel(tiny_config(initializer_range=0.05), seed=3)
    b = modeling.BertModel(tiny_config(initializer_range=0.05), seed=3)
    c = modeling.BertModel(tiny_config(initializer_range=0.05), seed=4)
    for name, var in a.params.items():
        value = var.numpy()
        np.testing.assert_array_equal(value, b.params[name].numpy())
        if name.endswith("gamma"):
            np.testing.assert_array_equal(value, 1.0)
        elif name.endswith(("beta", "bias")):
            np.testing.assert_array_equal(value, 0.0)
        else:
            assert np.abs(value).max() <= 2 * 0.05 + 1e-7  # truncated at 2 stddev
            assert 0.03 < value.std() < 0.05  # truncation shrinks the stddev to ~0.88x
            assert not np.array_equal(value, c.params[name].numpy())
    var = modeling_ops.add_variable(a.params, "cls/squad/output_weights", [2, 36], stddev=0.02)
    assert (
        var.name == "cls/squad/output_weights:0" and "cls/squad/output_weights" in a.trainable_names
    )
    with pytest.raises(ValueError):
        modeling_ops.add_variable(a.params, "cls/squad/output_weights", [2, 36])


# ----------------------------------------------------------------------------- forward vs NumPy

SWITCHES = [
    {},
    dict(
        use_qkv_split=True,
        use_qkv_bias=True,
        use_cls_layer=False,
        use_prediction_bias=False,
        use_attention_projection_bias=False,
        hidden_act="gelu_erf",
    ),
    dict(use_qkv_bias=True, use_prediction_bias=False, hidden_act="gelu_erf"),
    dict(use_qkv_split=True, use_cls_layer=False, hidden_act="relu", layer_norm_eps=1e-12),
]


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("switches", SWITCHES)
def test_logits_match_numpy(switches, static):
    cfg = tiny_config(static_mask=static, **switches)
    model = modeling.BertModel(cfg)
    randomize(model)
    std = standard_features()
    f = remask_features(std) if static else std
    out = model(to_tf(f))
    mlm, nsp = np_forward(np_params(model), cfg, f)
    assert out["mlm_logits"].dtype == tf.float32 and out["mlm_logits"].shape == (B, P, 99)
    np.testing.assert_allclose(out["mlm_logits"].numpy(), mlm, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["nsp_logits"].numpy(), nsp, atol=1e-5, rtol=0)


def test_static_mask_layout_equals_standard_layout():
    """Same examples in both layouts: same logits at the real masked tokens and for NSP."""
    std = standard_features()
    cfg_std = tiny_config(use_qkv_bias=True)
    cfg_static = tiny_config(use_qkv_bias=True, static_mask=True)
    model = modeling.BertModel(cfg_std)
    randomize(model, seed=5)
    a = modeling.pretraining_heads(
        model.params, cfg_std, *modeling.bert_encoder(model.params, cfg_std, to_tf(std)), to_tf(std)
    )
    rem = to_tf(remask_features(std))
    b = modeling.pretraining_heads(
        model.params, cfg_static, *modeling.bert_encoder(model.params, cfg_static, rem), rem
    )
    real = std["masked_lm_weights"] > 0  # masked tokens keep their order in the first slots
    np.testing.assert_allclose(
        b["mlm_logits"].numpy()[real], a["mlm_logits"].numpy()[real], atol=1e-5
    )
    np.testing.assert_allclose(b["nsp_logits"].numpy(), a["nsp_logits"].numpy(), atol=1e-5)


def test_attention_mask_values():
    std = standard_features()
    mask = modeling.attention_mask(tiny_config(), to_tf(std)).numpy()
    assert mask.shape == (B, 1, 1, S)
    np.testing.assert_array_equal(mask[:, 0, 0], (1 - std["input_mask"]) * -1000.0)
    rem = remask_features(std)
    cfg = tiny_config(static_mask=True)
    mask = modeling.attention_mask(cfg, to_tf(rem)).numpy()
    np.testing.assert_array_equal(mask[:, 0, 0], (1 - np_visible_static(rem, cfg)) * -1000.0)
    no_mask = {k: v for k, v in std.items() if k != "input_mask"}
    assert modeling.attention_mask(tiny_config(), to_tf(no_mask)) is None


# ----------------------------------------------------------------------------- losses


def np_log_softmax(x):
    return (
        x
        - x.max(-1, keepdims=True)
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
    )


def test_losses_and_accuracies_match_numpy():
    rng = np.random.default_rng(7)
    mlm_logits = rng.normal(0, 3, (B, P, 99)).astype(np.float32)
    nsp_logits = rng.normal(0, 3, (B, 2)).astype(np.float32)
    labels = rng.integers(0, 99, (B, P)).astype(np.int32)
    labels[0, 0] = mlm_logits[0, 0].argmax()  # one hit with weight 1
    labels[1, 2] = mlm_logits[1, 2].argmax()  # one hit with weight 0: must not count
    weights = np.array([[1, 1, 0.5], [1, 1, 0]], np.float32)
    nsp_labels = np.array([nsp_logits[0].argmax(), 1 - nsp_logits[1].argmax()], np.int32)
    outputs = {"mlm_logits": tf.constant(mlm_logits), "nsp_logits": tf.constant(nsp_logits)}
    for nsp_shape in [(B, 1), (B,)]:
        f = {
            "masked_lm_ids": labels,
            "masked_lm_weights": weights,
            "next_sentence_labels": nsp_labels.reshape(nsp_shape),
        }
        got = {k: v.numpy() for k, v in pretraining_loss(outputs, to_tf(f)).items()}
        ce = -np.take_along_axis(
            np_log_softmax(mlm_logits.astype(np.float64)), labels[..., None], -1
        )[..., 0]
        mlm_loss = (weights * ce).sum() / (weights.sum() + 1e-5)
        nsp_ce = -np_log_softmax(nsp_logits.astype(np.float64))[np.arange(B), nsp_labels]
        hits = (mlm_logits.argmax(-1) == labels).astype(np.float64)
        np.testing.assert_allclose(got["mlm_loss"], mlm_loss, rtol=1e-6)
        np.testing.assert_allclose(got["nsp_loss"], nsp_ce.mean(), rtol=1e-6)
        np.testing.assert_allclose(got["loss"], mlm_loss + nsp_ce.mean(), rtol=1e-6)
        np.testing.assert_allclose(
            got["mlm_acc"], (weights * hits).sum() / weights.sum(), rtol=1e-6
        )
        assert got["nsp_acc"] == 0.5
        assert all(v.dtype == np.float32 for v in got.values())


# ----------------------------------------------------------------------------- gradients


def _loss_fn(model, cfg, f, seed, dtype=tf.float64):
    seq, pooled = modeling.bert_encoder(model.params, cfg, f, True, seed, dtype)
    heads = modeling.pretraining_heads(model.params, cfg, seq, pooled, f)
    return pretraining_loss(heads, f)["loss"]


def test_gradients_match_finite_differences():
    cfg = tiny_config(use_qkv_bias=True, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    model = modeling.BertModel(cfg)
    randomize(model, seed=2, scale=0.1)
    f = to_tf(standard_features())
    seed = tf.constant([3, 4], tf.int32)  # dropout on: masks are a function of the seed
    variables = list(model.params.values())
    with tf.GradientTape() as tape:
        tape.watch(variables)  # includes the non-trainable key bias
        loss = _loss_fn(model, cfg, f, seed)
    assert loss.dtype == tf.float64
    grads = dict(zip(model.params, tape.gradient(loss, variables)))
    grads = {k: tf.convert_to_tensor(g).numpy() for k, g in grads.items()}
    # The key bias cancels in the softmax.
    np.testing.assert_allclose(grads["bert/encoder/layer_0/attention/self/key/bias"], 0, atol=1e-12)

    rng = np.random.default_rng(0)
    base = {k: v.numpy() for k, v in model.params.items()}

    def loss_at(shift):
        for k, v in model.params.items():
            v.assign(base[k] + shift.get(k, 0.0))
        actual = {k: model.params[k].numpy().astype(np.float64) - base[k] for k in shift}
        return _loss_fn(model, cfg, f, seed).numpy(), actual

    # A random direction over every variable, then single coordinates.
    direction = {k: (1e-5 * rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()}
    singles = []
    for name, index in [
        ("bert/encoder/layer_0/attention/self/kernel/qkv_weight", (3, 40)),
        ("bert/encoder/layer_1/output/LayerNorm/gamma", (5,)),
        ("bert/embeddings/word_embeddings", (int(f["input_ids"][0, 2]), 7)),  # lookup + tied MLM
        ("cls/predictions/transform/dense/bias", (11,)),
    ]:
        shift = np.zeros(base[name].shape, np.float32)
        shift[index] = 1e-3
        singles.append({name: shift})
    for shift in [direction, *singles]:
        plus, d_plus = loss_at(shift)
        minus, d_minus = loss_at({k: -v for k, v in shift.items()})
        predicted = sum((grads[k] * (d_plus[k] - d_minus[k])).sum() for k in shift)
        assert abs(predicted) > 1e-7
        np.testing.assert_allclose(plus - minus, predicted, rtol=1e-5, atol=1e-12)
    loss_at({})


def test_recompute_gives_same_loss_and_gradients():
    f = to_tf(standard_features())
    seed = tf.constant([5, 6], tf.int32)
    results = []
    for recompute in (False, True):
        cfg = tiny_config(recompute=recompute)
        model = modeling.BertModel(cfg, seed=11)

        @tf.function
        def step(model=model, cfg=cfg):
            with tf.GradientTape() as tape:
                loss = _loss_fn(model, cfg, f, seed, tf.float32)
            return loss, tape.gradient(loss, [model.params[n] for n in model.trainable_names])

        loss, grads = step()
        results.append((loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-6
    assert len(grads_a) == len(grads_b) == len(EXPECTED_DEFAULT)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- dropout, precision


def test_dropout_is_a_function_of_the_seed():
    cfg = tiny_config()
    model = modeling.BertModel(cfg)
    f = to_tf(standard_features())

    def logits(training, seed=None):
        return model(f, training=training, dropout_seed=seed)["mlm_logits"].numpy()

    a = logits(True, tf.constant([1, 2]))
    np.testing.assert_array_equal(a, logits(True, tf.constant([1, 2])))
    assert np.abs(a - logits(True, tf.constant([1, 3]))).max() > 1e-3
    eval_a = logits(False)
    np.testing.assert_array_equal(eval_a, logits(False, tf.constant([9, 9])))
    assert np.abs(a - eval_a).max() > 1e-3
    no_dropout = modeling.BertModel(
        tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    for name, var in no_dropout.params.items():
        var.assign(model.params[name])
    np.testing.assert_array_equal(
        no_dropout(f, training=True, dropout_seed=tf.constant([1, 2]))["mlm_logits"].numpy(), eval_a
    )
    with pytest.raises(ValueError, match="dropout_seed"):
        logits(True)


@pytest.mark.parametrize("dtype, tol", [(tf.bfloat16, 0.05), (tf.float16, 0.01)])
def test_reduced_precision_is_close_to_float32(dtype, tol):
    cfg = tiny_config()
    model = modeling.BertModel(cfg)
    randomize(model, seed=3, scale=0.05)
    f = to_tf(standard_features())
    ref = model(f)
    low = model(f, compute_dtype=dtype)
    assert low["sequence_output"].dtype == dtype
    for key in ("mlm_logits", "nsp_logits"):
        assert low[key].dtype == tf.float32
        scale = np.abs(ref[key].numpy()).max()
        assert np.abs(low[key].numpy() - ref[key].numpy()).max() <= tol * scale
    losses = pretraining_loss(low, f)
    assert all(v.dtype == tf.float32 for v in losses.values())
    assert model.params["bert/pooler/dense/kernel"].dtype == tf.float32


# ----------------------------------------------------------------------------- FLOPs


def test_flops_bert_base():
    cfg = modeling.BertConfig(vocab_size=30522)
    s, h, i, v, p, n_layers = 128, 768, 3072, 30522, 20, 12
    attention = 2 * s * h * (3 * h) + 2 * (2 * s * s * h) + 2 * s * h * h
    ffn = 2 * s * h * i + 2 * s * i * h
    heads = 2 * p * h * h + 2 * p * h * v + 2 * h * h + 2 * h * 2
    expected = 3 * (n_layers * (attention + ffn) + heads)
    got = modeling.pretraining_flops_per_sequence(cfg, s, p)
    assert got == expected
    assert 60e9 <= got <= 80e9
    no_cls = modeling.BertConfig(vocab_size=30522, use_cls_layer=False)
    assert got - modeling.pretraining_flops_per_sequence(no_cls, s, p) == 3 * 2 * p * h * h
