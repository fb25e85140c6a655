"""GroupBERT: variables, grouped ops and the encoder vs NumPy references written here, gradients vs
finite differences, every pretraining config for 10 steps, loss on real data, native reload and
the research <-> app checkpoint converters."""

import glob
import json
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import convert_ckpt
import interop
import modeling
import modeling_groupbert as gb
import options
import run_pretraining
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "groupbert")
PRETRAIN_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "pretrain_*.json")))
STEP_LINE = re.compile(r"^step: (\d+), .*mlm_loss: ([\d.]+), nsp_loss: ([\d.]+)", re.M)

# Odd sizes where the roles differ: H 36 = 3 heads x 12 = 9 conv groups x 4 = 3 FFN groups x 12,
# I 39 = 3 FFN groups x 13, kernel 5, sequence 7.
H, HEADS, INTER, VOCAB, SEQ, K, GROUP, FFN_GROUPS = 36, 3, 39, 99, 7, 5, 4, 3


def tiny_config(**changes):
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=16,
        use_qkv_bias=True,
        groupbert=True,
        groupbert_ffn_output_groups=FFN_GROUPS,
        groupbert_conv_kernel_size=K,
        groupbert_conv_group_size=GROUP,
    )
    fields.update(changes)
    return modeling.BertConfig(**fields)


def randomize(params, seed=0):
    """Every variable (biases, LayerNorms, the frozen key bias too) gets random values."""
    rng = np.random.default_rng(seed)
    for name, var in params.items():
        scale = 0.5 if name.endswith(("gamma", "beta", "bias")) else 0.3
        value = rng.normal(size=var.shape.as_list()) * scale
        var.assign(value + 1.0 if name.endswith("gamma") else value)
    return {n: v.numpy().astype(np.float64) for n, v in params.items()}


def features(batch=2, seq=SEQ, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int32)
    mask[1, seq - 2 :] = 0  # padding at the end of the second sequence
    return {
        "input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int32),
        "segment_ids": (np.arange(seq)[None, :] >= 3).repeat(batch, 0).astype(np.int32),
        "input_mask": mask,
    }


def encode(params, config, f, training=False, dropout_seed=None, compute_dtype=tf.float32):
    """The GroupBERT encoder's output [B,S,H] (the model's sequence output)."""
    assert config.groupbert
    return modeling.bert_encoder(params, config, f, training, dropout_seed, compute_dtype)[0]


# ----------------------------------------------------------------------------- NumPy reference


def np_layer_norm(x, gamma, beta, eps=1e-3):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_gelu(x):  # tanh form (Google's, the reference's)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_grouped_conv(x, w, mask):
    """Loop reference: y[b,s,o] = sum_t,i x[b, s+t-(k-1)//2, (o//g)*g+i] * w[t,i,o] (0 outside)."""
    x = x * mask[:, :, None]
    batch, seq, hidden = x.shape
    k, g, _ = w.shape
    y = np.zeros_like(x)
    for o in range(hidden):
        first = (o // g) * g
        for t in range(k):
            for s in range(seq):
                src = s + t - (k - 1) // 2
                if 0 <= src < seq:
                    y[:, s, o] += x[:, src, first : first + g] @ w[t, :, o]
    return y


def np_grouped_projection(x, w, groups):
    """Block c of the output = block c of the input (I/G wide) times w[:, block c of H]."""
    i, h = x.shape[-1] // groups, w.shape[1] // groups
    return np.concatenate(
        [x[..., c * i : (c + 1) * i] @ w[:, c * h : (c + 1) * h] for c in range(groups)], -1
    )


def np_encoder(p, config, f):
    """Embeddings, GroupBERT layers and the final LayerNorm in float64 NumPy."""
    ids, seg, mask = f["input_ids"], f["segment_ids"], f["input_mask"].astype(np.float64)
    batch, seq = ids.shape
    x = (
        p["bert/embeddings/word_embeddings"][ids]
        + p["bert/embeddings/position_embeddings"][:seq]
        + p["bert/embeddings/token_type_embeddings"][seg]
    )
    x = np_layer_norm(x, p["bert/embeddings/LayerNorm/gamma"], p["bert/embeddings/LayerNorm/beta"])

    def norm(scope, x):
        return np_layer_norm(x, p[f"{scope}/LayerNorm/gamma"], p[f"{scope}/LayerNorm/beta"])

    def dense(scope, x):
        return x @ p[f"{scope}/kernel"] + p[f"{scope}/bias"]

    heads, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    groups = config.groupbert_ffn_output_groups
    for n in range(config.num_hidden_layers):
        L = f"bert/encoder/layer_{n}"
        # convolution module
        h = norm(f"{L}/convolution/prenorm", x)
        v = dense(f"{L}/convolution/pre/glu/values/dense", h)
        g = dense(f"{L}/convolution/pre/glu/gates/dense", h)
        c = np_grouped_conv(v * np_sigmoid(g), p[f"{L}/convolution/dwconv/weight"], mask)
        c = norm(f"{L}/convolution/dwconv", c)
        x = x + dense(f"{L}/convolution/post/dense", c * np_sigmoid(c))
        for module in ("feed_forward_1", "attention", "feed_forward_2"):
            scope = f"{L}/{module}"
            h = norm(f"{scope}/prenorm", x)
            if module == "attention":
                qkv = h @ p[f"{L}/attention/self/kernel/qkv_weight"]
                qkv = qkv + np.concatenate(
                    [p[f"{L}/attention/self/{part}/bias"] for part in ("query", "key", "value")]
                )
                q, k_, v = (
                    qkv[..., j * H : (j + 1) * H]
                    .reshape(batch, seq, heads, d)
                    .transpose(0, 2, 1, 3)
                    for j in range(3)
                )
                scores = q @ k_.transpose(0, 1, 3, 2) / math.sqrt(d)
                scores = scores + (1 - mask)[:, None, None, :] * -1000.0
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, H)
                y = dense(f"{L}/attention/projection/dense", ctx)
            else:
                u = np_gelu(dense(f"{scope}/intermediate/dense", h))
                y = np_grouped_projection(u, p[f"{scope}/output/dense/kernel"], groups)
                y = dense(f"{scope}/output/mixer/dense", y + p[f"{scope}/output/dense/bias"])
            x = x + y
    return np_layer_norm(x, p["LayerNorm/gamma"], p["LayerNorm/beta"])


# ----------------------------------------------------------------------------- variables

LAYER_SUFFIXES = [  # the reference app's names (REFERENCE_APP.md §5.4, §7)
    *[f"convolution/prenorm/LayerNorm/{p}" for p in ("beta", "gamma")],
    *[
        f"convolution/pre/glu/{g}/dense/{p}"
        for g in ("values", "gates")
        for p in ("kernel", "bias")
    ],
    "convolution/dwconv/weight",
    *[f"convolution/dwconv/LayerNorm/{p}" for p in ("beta", "gamma")],
    *[f"convolution/post/dense/{p}" for p in ("kernel", "bias")],
    *[f"attention/prenorm/LayerNorm/{p}" for p in ("beta", "gamma")],
    *[f"attention/projection/dense/{p}" for p in ("kernel", "bias")],
    *[
        f"feed_forward_{n}/{s}"
        for n in (1, 2)
        for s in (
            "prenorm/LayerNorm/beta",
            "prenorm/LayerNorm/gamma",
            "intermediate/dense/kernel",
            "intermediate/dense/bias",
            "output/dense/kernel",
            "output/dense/bias",
            "output/mixer/dense/kernel",
            "output/mixer/dense/bias",
        )
    ],
]


@pytest.mark.parametrize(
    "qkv_split, qkv_bias, projection_bias, ffn_groups",
    [(False, True, True, FFN_GROUPS), (True, False, False, 1)],
)
def test_layer_variables_names_and_count(qkv_split, qkv_bias, projection_bias, ffn_groups):
    config = tiny_config(
        num_hidden_layers=1,
        use_qkv_split=qkv_split,
        use_qkv_bias=qkv_bias,
        use_attention_projection_bias=projection_bias,
        groupbert_ffn_output_groups=ffn_groups,
    )
    params = modeling.BertModel(config).params
    layer = {n[len("bert/encoder/layer_0/") :]: v for n, v in params.items() if "layer_0/" in n}
    expected = set(LAYER_SUFFIXES)
    if ffn_groups == 1:
        expected = {s for s in expected if "/mixer/" not in s}
    if not projection_bias:
        expected.discard("attention/projection/dense/bias")
    if qkv_split:
        expected |= {f"attention/self/{p}/kernel" for p in ("query", "key", "value")}
    else:
        expected.add("attention/self/kernel/qkv_weight")
    if qkv_bias:
        expected |= {f"attention/self/{p}/bias" for p in ("query", "key", "value")}
    assert set(layer) == expected
    assert params["LayerNorm/gamma"].shape == [H] and params["LayerNorm/beta"].shape == [H]
    # Closed form: 5 LayerNorms (4 pre-norms, the convolution's), GLU, conv, post, 2 FFNs, attention
    G, I = ffn_groups, INTER  # noqa: E741
    conv = 2 * (H * H + H) + K * GROUP * H + H * H + H
    ffn = H * I + I + (I // G) * H + H + (H * H + H if G > 1 else 0)
    attention = 4 * H * H + 3 * H * qkv_bias + H * projection_bias
    count = sum(math.prod(v.shape) for v in layer.values())
    assert count == 5 * 2 * H + conv + 2 * ffn + attention
    assert params["bert/encoder/layer_0/convolution/dwconv/weight"].shape == [K, GROUP, H]
    assert params["bert/encoder/layer_0/feed_forward_1/output/dense/kernel"].shape == [I // G, H]
    if qkv_bias:  # cancels in the softmax: kept, not trained (as BERT's)
        assert not params["bert/encoder/layer_0/attention/self/key/bias"].trainable


def test_initialisers():
    config = tiny_config(num_hidden_layers=1, hidden_size=64, num_attention_heads=2,
                         intermediate_size=256, groupbert_conv_group_size=16,
                         groupbert_ffn_output_groups=4)  # fmt: skip
    params = modeling.BertModel(config, seed=3).params
    conv = params["bert/encoder/layer_0/convolution/dwconv/weight"].numpy()
    limit = math.sqrt(6 / (K * (16 + 64)))  # Glorot-uniform fans of a [k, in, out] kernel
    assert np.abs(conv).max() <= limit and np.abs(conv).max() > 0.9 * limit
    assert abs(conv.std() - limit / math.sqrt(3)) < 0.05 * limit
    bias = params["bert/encoder/layer_0/feed_forward_2/output/dense/bias"].numpy()
    assert 0.01 < bias.std() < 0.02 and np.abs(bias).max() <= 0.04  # truncated normal 0.02
    assert not params["bert/encoder/layer_0/convolution/post/dense/bias"].numpy().any()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"static_mask": True}, "static_mask"),
        ({"groupbert_conv_group_size": 5}, "groupbert_conv_group_size"),
        ({"groupbert_ffn_output_groups": 2}, "intermediate_size"),
    ],
)
def test_config_errors(change, words):
    with pytest.raises(UserError, match=words):
        modeling.BertModel(tiny_config(**change))


def test_remask_layout_is_a_one_line_error(tmp_path, capsys):
    config = os.path.join(CONFIG_DIR, "pretrain_tiny_groupbert_128.json")
    with pytest.raises(SystemExit) as exit_info:
        run_pretraining.main(
            ["--config", config, "--static-mask", "true", "--save-path", str(tmp_path)]
            + TINY_OVERRIDES
        )
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: GroupBERT needs the standard data layout")


# ----------------------------------------------------------------------------- grouped ops


@pytest.mark.parametrize("method", ["conv", "shifted"])
@pytest.mark.parametrize("k", [K, 4])  # odd and even kernels (SAME pads the extra slot after)
def test_grouped_conv_matches_numpy_loop(method, k):
    rng = np.random.default_rng(k)
    x, w = rng.normal(size=(2, SEQ, H)), rng.normal(size=(k, GROUP, H))
    mask = features()["input_mask"]
    got = gb.grouped_conv1d(tf.constant(x), tf.constant(w), tf.constant(mask), method=method)
    np.testing.assert_allclose(got.numpy(), np_grouped_conv(x, w, mask), atol=1e-12)


def test_grouped_ops_under_xla_and_their_gradients_agree():
    """The XLA path ("auto" with xla, inside jit_compile: shifted / einsum) and the oneDNN path
    agree in value and gradient; both equal the NumPy reference."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, SEQ, H)), tf.float32)
    w = tf.constant(rng.normal(size=(K, GROUP, H)), tf.float32)
    u = tf.constant(rng.normal(size=(2 * SEQ, INTER)), tf.float32)
    kernel = tf.constant(rng.normal(size=(INTER // FFN_GROUPS, H)), tf.float32)
    mask = tf.constant(features()["input_mask"])

    def values_and_grads(x, w, u, kernel, xla):
        with tf.GradientTape() as tape:
            tape.watch([x, w, u, kernel])
            conv = gb.grouped_conv1d(x, w, mask, xla=xla)
            proj = gb.grouped_projection(u, kernel, FFN_GROUPS, xla=xla)
            loss = tf.reduce_sum(tf.sin(conv)) + tf.reduce_sum(tf.sin(proj))
        return [conv, proj, *tape.gradient(loss, [x, w, u, kernel])]

    plain = tf.function(values_and_grads)(x, w, u, kernel, False)
    xla = tf.function(values_and_grads, jit_compile=True)(x, w, u, kernel, True)
    for a, b in zip(plain, xla):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        plain[0].numpy(), np_grouped_conv(x.numpy(), w.numpy(), mask.numpy()), atol=1e-4
    )
    np.testing.assert_allclose(
        plain[1].numpy(), np_grouped_projection(u.numpy(), kernel.numpy(), FFN_GROUPS), atol=1e-4
    )


@pytest.mark.parametrize("method", ["split", "einsum"])
def test_grouped_projection_matches_numpy(method):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(5, INTER)), rng.normal(size=(INTER // FFN_GROUPS, H))
    got = gb.grouped_projection(tf.constant(x), tf.constant(w), FFN_GROUPS, method=method)
    np.testing.assert_allclose(got.numpy(), np_grouped_projection(x, w, FFN_GROUPS), atol=1e-12)


# ----------------------------------------------------------------------------- whole encoder


def test_encoder_matches_numpy_float64():
    config = tiny_config()
    model = modeling.BertModel(config, heads=())
    p = randomize(model.params)
    f = features()
    got = encode(model.params, config, f, compute_dtype=tf.float64)
    np.testing.assert_allclose(got.numpy(), np_encoder(p, config, f), rtol=1e-9, atol=1e-9)


def test_float32_paths_and_heads_match_float64():
    """Plain (oneDNN conv, split projection) and XLA (shifted, einsum) float32 runs equal the
    float64 result; bfloat16 is close; the heads read the gathered rows of the full output."""
    config = tiny_config(num_hidden_layers=1)
    model = modeling.BertModel(config)
    randomize(model.params, seed=2)
    f = {**features(), "masked_lm_positions": np.array([[1, 4], [2, 3]], np.int32)}
    ref = encode(model.params, config, f, compute_dtype=tf.float64).numpy()
    for jit in (False, True):

        def run(f, jit=jit):
            return modeling.bert_encoder(model.params, config, f, xla=jit)[0]

        out = tf.function(run, jit_compile=jit)(f)
        np.testing.assert_allclose(out.numpy(), ref, rtol=2e-4, atol=2e-4)
    bf16 = model(f, compute_dtype=tf.bfloat16)["sequence_output"]
    assert np.abs(tf.cast(bf16, tf.float64).numpy() - ref).max() < 0.15
    out = model(f, compute_dtype=tf.float64)
    direct = modeling.pretraining_heads(
        model.params, config, tf.constant(ref), out["pooled_output"], f, heads=("mlm",)
    )
    np.testing.assert_allclose(out["mlm_logits"].numpy(), direct["mlm_logits"].numpy(), atol=1e-9)


def test_gradients_match_finite_differences():
    config = tiny_config(num_hidden_layers=1)
    model = modeling.BertModel(config, heads=())
    randomize(model.params, seed=4)
    f = features()
    weights = tf.constant(np.random.default_rng(5).normal(size=(2, SEQ, H)))
    trainable = [v for n, v in model.params.items() if v.trainable and "pooler" not in n]

    def loss():
        out = encode(model.params, config, f, compute_dtype=tf.float64)
        return tf.reduce_sum(out * weights)

    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, trainable)
    # Variables are float32 masters: the step actually taken (float32-rounded) is what counts.
    rng = np.random.default_rng(6)
    start = [v.numpy() for v in trainable]
    steps = [(1e-5 * rng.normal(size=s.shape)).astype(np.float32) for s in start]
    sides, taken = [], []
    for sign in (1, -1):
        for v, s, d in zip(trainable, start, steps):
            v.assign(s + sign * d)
        taken.append([v.numpy().astype(np.float64) - s for v, s in zip(trainable, start)])
        sides.append(float(loss()))
    for v, s in zip(trainable, start):
        v.assign(s)
    predicted = sum(float(np.sum(g.numpy() * (p - m))) for g, p, m in zip(grads, *taken))
    assert abs(predicted) > 1e-5
    np.testing.assert_allclose(sides[0] - sides[1], predicted, rtol=1e-5)


def test_dropout_depends_on_the_seed_only():
    config = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    model = modeling.BertModel(config, heads=())
    f = features()

    def run(seed):
        return encode(model.params, config, f, True, tf.constant(seed)).numpy()

    eval_out = encode(model.params, config, f).numpy()
    np.testing.assert_array_equal(run([1, 2]), run([1, 2]))
    assert not np.allclose(run([1, 2]), run([1, 3])) and not np.allclose(run([1, 2]), eval_out)


def test_recompute_gives_same_loss_and_gradients():
    results = []
    for recompute in (False, True):
        config = tiny_config(num_hidden_layers=1, recompute=recompute)
        model = modeling.BertModel(config, heads=(), seed=3)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(encode(model.params, config, features()) ** 2)
        names = [n for n, v in model.params.items() if v.trainable and "pooler" not in n]
        grads = tape.gradient(loss, [model.params[n] for n in names])
        results.append([loss.numpy()] + [g.numpy() for g in grads])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lamb_of_groupbert_configs_does_not_decay_layer_norm_scales():
    """Reference: GroupBERT's LAMB excludes gamma from weight decay (REFERENCE_APP.md §6.2): with
    zero gradients only the weight decay moves a weight."""
    import optimization

    opts = options.parse_options(
        ["--config", os.path.join(CONFIG_DIR, "pretrain_tiny_groupbert_128.json")]
    )
    params = {
        "LayerNorm/gamma": tf.Variable(np.full([4], 2.0, np.float32)),
        "bert/encoder/layer_0/convolution/post/dense/kernel": tf.Variable(
            np.ones([4, 4], np.float32)
        ),
    }
    start = {n: v.numpy() for n, v in params.items()}
    lamb = optimization.make_optimizer(
        opts.optimizer,
        params,
        optimization.LAMB_WD_EXCLUDE_GROUPBERT if opts.model.groupbert else None,
    )
    lamb.apply_gradients({n: tf.zeros_like(v) for n, v in params.items()}, 0.1)
    np.testing.assert_array_equal(params["LayerNorm/gamma"].numpy(), start["LayerNorm/gamma"])
    kernel = "bert/encoder/layer_0/convolution/post/dense/kernel"
    assert (params[kernel].numpy() < start[kernel]).all()


def test_flops_formula():
    config = modeling.BertConfig(vocab_size=30400, groupbert=True)  # GroupBERT-base
    s, h, i, k, g, G, p = 128, 768, 3072, 7, 16, 4, 20
    layer = (2 * s * h * 2 * h + 2 * s * k * g * h + 2 * s * h * h  # GLU, grouped conv, post
             + 2 * (2 * s * h * i + 2 * s * (i // G) * h + 2 * s * h * h)  # two grouped FFNs
             + 3 * 2 * s * h * h + 2 * 2 * s * s * h + 2 * s * h * h)  # attention  # fmt: skip
    heads = 2 * p * h * h + 2 * p * h * 30400 + 2 * h * h + 2 * h * 2
    assert modeling.pretraining_flops_per_sequence(config, s, p) == 3 * (12 * layer + heads)


# ----------------------------------------------------------------------------- configs

# REFERENCE_APP.md §2.4: global batch (mbs x GA x replicas on the IPUs), steps, peak lr, warm-up,
# seq, masks, H, layers, heads, I, vocab, optimizer.
RECIPES = {
    "pretrain_tiny_groupbert_128":
        (512, 7032, 0.02, 2000, 128, 20, 128, 2, 2, 512, 30400, "lamb"),
    "pretrain_mini_groupbert_128_adam":
        (512, 1000, 1e-4, 10, 128, 20, 256, 4, 4, 1024, 30400, "adamw"),
    "pretrain_base_groupbert_128":
        (18 * 910 * 4, 7032, 0.012, 1000, 128, 20, 768, 12, 12, 3072, 30400, "lamb"),
    "pretrain_base_groupbert_384":
        (5 * 1640 * 4, 1355, 0.01, 177, 384, 56, 768, 12, 12, 3072, 30400, "lamb"),
    "pretrain_base_groupbert_128_adam":
        (6 * 40 * 2, 833334, 8e-4, 10000, 128, 20, 768, 12, 12, 3072, 30528, "mpadamw"),
    "pretrain_large_groupbert_128_adam":
        (4 * 120 * 2, 416667, 4e-4, 10000, 128, 20, 1024, 24, 16, 4096, 30528, "mpadamw"),
    "pretrain_medium_groupbert_128_adam":
        (24 * 20 * 2, 416667, 1.5e-3, 10000, 128, 20, 512, 8, 8, 2048, 30528, "mpadamw"),
    "pretrain_medium_groupbert_384_adam":
        (8 * 60 * 2, 103753, 1.5e-3, 10000, 384, 60, 512, 8, 8, 2048, 30528, "mpadamw"),
}  # fmt: skip
# task scope, optimizer, lr, GA, epochs, loss scale, H, layers (§2.4 and the reference files).
FINE_TUNING = {
    "glue_base": ("glue", "mpadamw", 1e-5, 30, 3, 1, 768, 12),
    "glue_base_regression": ("glue", "mpadamw", 1e-5, 30, 3, 1, 768, 12),
    # The reference's glue_large(_regression)_8IPU values (§2.4: lr, accumulation 36, scale 512).
    "glue_large": ("glue", "mpadamw", 1e-5, 36, 3, 512, 1024, 24),
    "glue_large_regression": ("glue", "mpadamw", 2e-5, 36, 3, 512, 1024, 24),
    "squad_base": ("squad", "lamb", 4e-4, 40, 2, 512, 768, 12),
    "squad_base_V2": ("squad", "mpadamw", 1.5e-4, 40, 3, 512, 768, 12),
    "squad_large": ("squad", "mpadamw", 9e-5, 260, 2, 1024, 1024, 24),
    "squad_large_V2": ("squad", "mpadamw", 1.5e-4, 40, 3, 512, 1024, 24),
}


def test_shipped_configs_are_the_recipes():
    shipped = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.json"))}
    assert shipped == set(RECIPES) | set(FINE_TUNING)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_pretraining_config_keeps_the_reference_recipe(capsys, name):
    opts = options.parse_options(["--config", os.path.join(CONFIG_DIR, f"{name}.json")])
    gbs, steps, lr, warmup, seq, masks, hidden, layers, heads, inter, vocab, opt = RECIPES[name]
    assert opts["global_batch_size"] == gbs and opts["replicas"] == 1
    assert (opts["num_train_steps"], opts["base_learning_rate"], opts["warmup"]) == (
        steps,
        lr,
        warmup,
    )
    assert (opts["seq_length"], opts["max_predictions_per_seq"]) == (seq, masks)
    assert (opts["hidden_size"], opts["num_hidden_layers"]) == (hidden, layers)
    assert (opts["num_attention_heads"], opts["intermediate_size"]) == (heads, inter)
    assert (opts["vocab_size"], opts["optimizer"], opts["precision"]) == (vocab, opt, "16")
    assert opts["groupbert"] and not opts["static_mask"]
    sizes = (
        "groupbert_ffn_output_groups",
        "groupbert_conv_group_size",
        "groupbert_conv_kernel_size",
    )
    assert [opts[k] for k in sizes] == [4, 16, 7]
    assert capsys.readouterr().err.count("\n") == 1  # the IPU-only keys: one warning line


@pytest.mark.parametrize("name", sorted(FINE_TUNING))
def test_fine_tuning_config_parses(sample_vocab, name):
    scope, opt, lr, ga, epochs, scale, hidden, layers = FINE_TUNING[name]
    opts = options.parse_options(
        ["--config", os.path.join(CONFIG_DIR, f"{name}.json"), "--vocab-file", sample_vocab],
        groups=("common", scope),
    )
    assert opts["task"] == {"glue": "GLUE", "squad": "SQuAD"}[scope] and opts["groupbert"]
    assert (opts["optimizer"], opts["base_learning_rate"]) == (opt, lr)
    assert (opts["gradient_accumulation_count"], opts["epochs"]) == (ga, epochs)
    assert (opts["loss_scaling"], opts["hidden_size"], opts["num_hidden_layers"]) == (
        scale,
        hidden,
        layers,
    )


# ----------------------------------------------------------------------------- runs

TINY_OVERRIDES = [
    "--num-hidden-layers", "1", "--hidden-size", "64", "--intermediate-size", "128",
    "--num-attention-heads", "2", "--micro-batch-size", "2", "--global-batch-size", "2",
    "--precision", "32", "--seq-length", "32", "--max-predictions-per-seq", "5",
    "--vocab-size", "128", "--xla", "false", "--steps-per-logs", "1", "--generated-data",
    "--pipeline-stages", '[["emb", "pos"], ["hid"], ["mlm", "nsp"]]',
]  # fmt: skip


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS, ids=os.path.basename)
def test_ten_steps_of_each_pretraining_config(tmp_path, capsys, config):
    code = run_pretraining.main(
        ["--config", config, "--num-train-steps", "10", "--save-path", str(tmp_path)]
        + TINY_OVERRIDES
    )
    out = capsys.readouterr().out
    assert code == 0
    steps = STEP_LINE.findall(out)
    assert [int(s[0]) for s in steps] == list(range(10))
    assert all(np.isfinite(float(s[1])) and np.isfinite(float(s[2])) for s in steps)
    (run_dir,) = glob.glob(os.path.join(str(tmp_path), "pretraining_*"))
    with open(os.path.join(run_dir, "bert_config.json")) as f:
        saved = json.load(f)
    assert saved["groupbert"] and saved["hidden_size"] == 64


def test_tiny_config_loss_falls_and_run_reloads(tmp_path, capsys, sample_vocab, sample_records):
    config = os.path.join(CONFIG_DIR, "pretrain_tiny_groupbert_128.json")
    code = run_pretraining.main([
        "--config", config, "--train-file", sample_records["standard"], "--vocab-file",
        sample_vocab, "--micro-batch-size", "8", "--global-batch-size", "8", "--precision", "32",
        "--xla", "false", "--num-train-steps", "30", "--warmup", "5", "--steps-per-logs", "1",
        "--save-path", str(tmp_path), "--seed", "7",
    ])  # fmt: skip
    assert code == 0
    losses = [float(s[1]) for s in STEP_LINE.findall(capsys.readouterr().out)]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.4, (first, last)  # seen: 6.38 -> 5.76
    # The native checkpoint (final LayerNorm at top-level "LayerNorm/...") loads strictly by name,
    # as --init-checkpoint does, and gives the saved model's outputs.
    (run_dir,) = glob.glob(os.path.join(str(tmp_path), "pretraining_*"))
    opts = options.parse_options(["--config", config, "--vocab-file", sample_vocab])
    model = modeling.BertModel(modeling.BertConfig(**options.bert_config_fields(opts)))
    report = interop.load_into(run_dir, model.params)
    assert sorted(report.loaded) == sorted(model.params) and not report.unexpected
    saved = tf.train.load_checkpoint(interop.resolve_tf_checkpoint(run_dir))
    for name in ("LayerNorm/gamma", "bert/encoder/layer_1/convolution/dwconv/weight"):
        np.testing.assert_array_equal(model.params[name].numpy(), saved.get_tensor(name))


# ----------------------------------------------------------------------------- converters


def research_tensors(layers=2, seed=0):
    """A random checkpoint in Graphcore's research GroupBERT names (REFERENCE_APP.md §7)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    t = {
        "all/bert/embeddings/word_embeddings": r(VOCAB, H),
        "all/bert/embeddings/position_embeddings": r(16, H),
        "all/bert/embeddings/token_type_embeddings": r(2, H),
        "all/bert/embeddings/GroupNorm/gamma": r(H),
        "all/bert/embeddings/GroupNorm/beta": r(H),
        "all/bert/encoder/post_layers/GroupNorm/gamma": r(H),
        "all/bert/encoder/post_layers/GroupNorm/beta": r(H),
        "all/bert/pooler/dense/kernel": r(H, H),
        "all/bert/pooler/dense/bias": r(H),
        "all/cls/predictions/transform/dense/kernel": r(H, H),
        "all/cls/predictions/transform/dense/bias": r(H),
        "all/cls/predictions/transform/GroupNorm/gamma": r(H),
        "all/cls/predictions/transform/GroupNorm/beta": r(H),
        "all/cls/predictions/output_bias": r(VOCAB),
        "all/cls/seq_relationship/output_weights": r(2, H),
        "all/cls/seq_relationship/output_bias": r(2),
    }
    for n in range(layers):
        L = f"all/bert/encoder/layer_{n}"
        t.update({
            f"{L}/conv/prenorm/GroupNorm/gamma": r(H), f"{L}/conv/prenorm/GroupNorm/beta": r(H),
            f"{L}/conv/pre/weight": r(H, 2 * H), f"{L}/conv/pre/bias": r(2 * H),
            f"{L}/conv/dwconv/weight": r(K, GROUP, H),
            f"{L}/conv/dwconv/GroupNorm/gamma": r(H), f"{L}/conv/dwconv/GroupNorm/beta": r(H),
            f"{L}/conv/post/weight": r(H, H), f"{L}/conv/post/bias": r(H),
            f"{L}/attention/prenorm/GroupNorm/gamma": r(H),
            f"{L}/attention/prenorm/GroupNorm/beta": r(H),
            f"{L}/attention/qkv/weight": r(H, 3 * H),
            f"{L}/attention/qkv/query/bias": r(H), f"{L}/attention/qkv/value/bias": r(H),
            f"{L}/attention/output/weight": r(H, H), f"{L}/attention/output/bias": r(H),
        })  # fmt: skip
        for b in ("boom1", "boom2"):
            t.update({
                f"{L}/{b}/prenorm/GroupNorm/gamma": r(H), f"{L}/{b}/prenorm/GroupNorm/beta": r(H),
                f"{L}/{b}/up/weight": r(H, INTER), f"{L}/{b}/up/bias": r(INTER),
                f"{L}/{b}/down/weight": r(INTER // FFN_GROUPS, H), f"{L}/{b}/down/bias": r(H),
                f"{L}/{b}/mixer/weight": r(H, H), f"{L}/{b}/mixer/bias": r(H),
            })  # fmt: skip
    return t


def test_research_to_apps_to_research_round_trip_is_bitwise(tmp_path):
    research = research_tensors()
    src = tmp_path / "research"
    src.mkdir()
    interop.write_tf_checkpoint(str(src / "model.ckpt-5"), research)
    config = tiny_config(max_position_embeddings=16)
    (src / "bert_config.json").write_text(json.dumps(config.to_dict()))
    apps_dir, back_dir = tmp_path / "apps", tmp_path / "back"
    assert convert_ckpt.main(["research2apps", str(src / "model.ckpt-5"),
                              "--output-dir", str(apps_dir), "--fuse-qkv"]) == 0  # fmt: skip
    apps = dict(interop.read_tf_checkpoint(str(apps_dir / "model.ckpt-5")))
    L = "bert/encoder/layer_1"
    pre = research[f"all/{L}/conv/pre/weight"]
    np.testing.assert_array_equal(apps[f"{L}/convolution/pre/glu/values/dense/kernel"], pre[:, :H])
    np.testing.assert_array_equal(apps[f"{L}/convolution/pre/glu/gates/dense/kernel"], pre[:, H:])
    np.testing.assert_array_equal(
        apps[f"{L}/attention/self/kernel/qkv_weight"], research[f"all/{L}/attention/qkv/weight"]
    )
    np.testing.assert_array_equal(
        apps["LayerNorm/beta"], research["all/bert/encoder/post_layers/GroupNorm/beta"]
    )
    np.testing.assert_array_equal(
        apps[f"{L}/feed_forward_2/output/mixer/dense/bias"], research[f"all/{L}/boom2/mixer/bias"]
    )
    assert not apps[f"{L}/attention/self/key/bias"].any()  # research has none: zero, same model
    # The app checkpoint is exactly our model's variables: strict load, then a forward pass.
    written = modeling.BertConfig.from_json_file(str(apps_dir / "bert_config.json"))
    assert written.groupbert and not written.use_qkv_split
    model = modeling.BertModel(written)
    report = interop.load_into(str(apps_dir), model.params)
    assert sorted(report.loaded) == sorted(model.params)
    assert np.isfinite(encode(model.params, written, features()).numpy()).all()
    assert convert_ckpt.main(["apps2research", str(apps_dir),
                              "--output-dir", str(back_dir)]) == 0  # fmt: skip
    back = interop.read_tf_checkpoint(str(back_dir / "model.ckpt-5"))
    assert set(back) == set(research)
    for name, value in research.items():
        assert back[name].dtype == value.dtype and back[name].tobytes() == value.tobytes(), name


def test_research_converter_refuses_unknown_tensors(tmp_path, capsys):
    research = research_tensors(layers=1)
    research["all/bert/encoder/layer_0/conv/extra/weight"] = np.zeros(3, np.float32)
    interop.write_tf_checkpoint(str(tmp_path / "ckpt-1"), research)
    with pytest.raises(SystemExit) as exit_info:
        convert_ckpt.main(["research2apps", str(tmp_path / "ckpt-1"), "--output-dir",
                           str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code != 0
    assert "conv/extra/weight" in capsys.readouterr().err
