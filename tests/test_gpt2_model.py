"""modeling_gpt2 against Hugging Face's GPT2LMHeadModel (PyTorch, float32, eval mode): logits,
loss and the gradient of every variable, plus causality, dropout determinism, recomputation,
bfloat16, the name map and the shipped configs. Odd tiny sizes (vocab 99, E 36, 3 heads, MLP 37,
seq 7) so that swapped axes fail."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import modeling_gpt2
from common.errors import UserError
from model_config_gpt2 import GPT2Config
from objectives.causal_lm import causal_lm_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "gpt2")
SEQ = 7
TOL = 1e-5


def tiny(**overrides):
    fields = dict(vocab_size=99, n_positions=11, n_embd=36, n_layer=2, n_head=3, n_inner=37)
    fields.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(**{**fields, **overrides})


def randomized(config, seed=0):
    """A model whose every variable (biases and LayerNorms too) holds random values."""
    model = modeling_gpt2.GPT2Model(config, seed=seed)
    rng = np.random.default_rng(seed)
    for name, var in model.params.items():
        value = rng.normal(size=var.shape) * 0.2
        if name.endswith("ln_1/weight") or name.endswith("ln_2/weight") or "ln_f/weight" in name:
            value += 1.0
        var.assign(value.astype(np.float32))
    return model


def inputs(batch=3, seed=1):
    """ids [B,7] and a padding mask: row 0 full, row 1 right-padded, row 2 left-padded."""
    ids = np.random.default_rng(seed).integers(0, 99, size=(batch, SEQ)).astype(np.int32)
    mask = np.ones((batch, SEQ), np.int32)
    mask[1, -2:] = 0
    mask[2, :2] = 0
    return ids, mask


def torch_twin(model):
    """Hugging Face's GPT2LMHeadModel (eager attention, eval mode) holding our variables."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(**model.config.to_hf_dict(), attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    copied = set()
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            ours = modeling_gpt2.ours_name(name)
            if ours is not None:
                tensor.copy_(torch.from_numpy(model.params[ours].numpy()))
                copied.add(ours)
    assert copied == set(model.params)
    return hf


def torch_forward(hf, ids, mask, labels=None):
    import torch

    return hf(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.long),
    )


def max_diff_at_tokens(ours, theirs, mask):
    real = mask.astype(bool)
    return float(np.max(np.abs(ours[real] - theirs[real])))


# ----------------------------------------------------------------------------- names


def test_variable_names_are_hf_state_dict_names():
    model = modeling_gpt2.GPT2Model(tiny(n_layer=1))
    assert list(model.params) == [
        "transformer/wte/weight",
        "transformer/wpe/weight",
        "transformer/h/0/ln_1/weight",
        "transformer/h/0/ln_1/bias",
        "transformer/h/0/attn/c_attn/weight",
        "transformer/h/0/attn/c_attn/bias",
        "transformer/h/0/attn/c_proj/weight",
        "transformer/h/0/attn/c_proj/bias",
        "transformer/h/0/ln_2/weight",
        "transformer/h/0/ln_2/bias",
        "transformer/h/0/mlp/c_fc/weight",
        "transformer/h/0/mlp/c_fc/bias",
        "transformer/h/0/mlp/c_proj/weight",
        "transformer/h/0/mlp/c_proj/bias",
        "transformer/ln_f/weight",
        "transformer/ln_f/bias",
    ]
    assert model.params["transformer/h/0/attn/c_attn/weight"].shape == (36, 108)  # [in, out]
    assert model.params["transformer/h/0/mlp/c_proj/weight"].shape == (37, 36)
    for name, var in model.params.items():
        assert var.name == name + ":0"
        assert modeling_gpt2.ours_name(modeling_gpt2.hf_name(name)) == name
    ours = modeling_gpt2.ours_name
    assert ours("lm_head.weight") == "transformer/wte/weight"
    assert ours("h.3.mlp.c_fc.bias") == "transformer/h/3/mlp/c_fc/bias"  # GPT2Model, no prefix
    assert ours("transformer.h.0.attn.masked_bias") is None
    assert ours("h.0.attn.bias") is None
    for bad in ("transformer.h.0.attn.c_attn.kernel", "score.weight", "h.x.ln_1.weight"):
        with pytest.raises(ValueError):
            ours(bad)


def test_initialisation_is_hf_scheme():
    config = GPT2Config(n_layer=8, n_embd=256, n_head=4, vocab_size=500, n_positions=64)
    params = modeling_gpt2.GPT2Model(config, seed=3).params
    std = {n: float(np.std(v.numpy())) for n, v in params.items()}
    assert std["transformer/wte/weight"] == pytest.approx(0.02, rel=0.02)
    assert std["transformer/h/0/attn/c_attn/weight"] == pytest.approx(0.02, rel=0.02)
    assert std["transformer/h/0/mlp/c_proj/weight"] == pytest.approx(0.02 / 4, rel=0.02)
    assert std["transformer/h/7/attn/c_proj/weight"] == pytest.approx(0.02 / 4, rel=0.03)
    # Normal, not truncated at 2 sigma as BERT's initializer.
    assert np.max(np.abs(params["transformer/wte/weight"].numpy())) > 3 * 0.02
    assert not np.any(params["transformer/h/0/attn/c_attn/bias"].numpy())
    assert np.all(params["transformer/ln_f/weight"].numpy() == 1)
    again = modeling_gpt2.GPT2Model(config, seed=3).params["transformer/h/2/mlp/c_fc/weight"]
    np.testing.assert_array_equal(again.numpy(), params["transformer/h/2/mlp/c_fc/weight"].numpy())


# ----------------------------------------------------------------------------- parity with HF


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_logits_equal_transformers(activation):
    model = randomized(tiny(activation_function=activation))
    ids, mask = inputs()
    ours = model(ids, mask)["logits"].numpy()
    theirs = torch_forward(torch_twin(model), ids, mask).logits.detach().numpy()
    assert ours.shape == (3, SEQ, 99) and ours.dtype == np.float32
    assert max_diff_at_tokens(ours, theirs, mask) < TOL
    # Without a padding mask: every slot.
    full = np.ones_like(mask)
    ours = model(ids)["logits"].numpy()
    theirs = torch_forward(torch_twin(model), ids, full).logits.detach().numpy()
    assert np.max(np.abs(ours - theirs)) < TOL


def test_activation_names_are_hugging_faces():
    """HF "gelu" is erf, "gelu_new" tanh: the two models differ, each matches its HF twin."""
    ids, mask = inputs()
    erf = randomized(tiny(activation_function="gelu"))(ids, mask)["logits"].numpy()
    tanh = randomized(tiny(activation_function="gelu_new"))(ids, mask)["logits"].numpy()
    assert np.max(np.abs(erf - tanh)) > 1e-4
    assert tiny(activation_function="gelu").activation_op == "gelu_erf"
    assert tiny(activation_function="gelu_new").activation_op == "gelu_new"


@pytest.mark.parametrize(
    "switch",
    [
        {"scale_attn_by_inverse_layer_idx": True},
        {"reorder_and_upcast_attn": True},
        {"scale_attn_weights": False},
        {"n_inner": None, "layer_norm_epsilon": 1e-3},
    ],
    ids=lambda d: ",".join(d),
)
def test_attention_switches_match_transformers(switch):
    model = randomized(tiny(n_layer=3, **switch))
    ids, mask = inputs()
    ours = model(ids, mask)["logits"].numpy()
    theirs = torch_forward(torch_twin(model), ids, mask).logits.detach().numpy()
    assert max_diff_at_tokens(ours, theirs, mask) < TOL
    plain = randomized(tiny(n_layer=3, n_inner=switch.get("n_inner", 37)))(ids, mask)["logits"]
    if "reorder_and_upcast_attn" not in switch:  # a float32 no-op, as in Hugging Face
        assert np.max(np.abs(ours - plain.numpy())) > 1e-4


def test_loss_and_every_gradient_equal_transformers():
    """Levanter-style: the shifted, padding-masked loss and d loss / d variable, all variables."""
    model = randomized(tiny())
    ids, mask = inputs()
    with tf.GradientTape() as tape:
        logits = model(ids, mask)["logits"]
        result = causal_lm_loss(logits, ids, mask)
    grads = dict(zip(model.params, tape.gradient(result["loss"], list(model.params.values()))))

    hf = torch_twin(model)
    labels = np.where(mask == 1, ids, -100)
    out = torch_forward(hf, ids, mask, labels)
    out.loss.backward()
    assert abs(float(result["loss"]) - out.loss.item()) < TOL
    assert float(result["tokens"]) == np.sum(mask[:, 1:])
    compared = set()
    for name, param in hf.named_parameters():
        ours = modeling_gpt2.ours_name(name)
        diff = np.max(np.abs(grads[ours].numpy() - param.grad.numpy()))
        assert diff < TOL, (name, diff)
        compared.add(ours)
    assert compared == set(model.params)


def test_accuracy_is_the_references():
    """argmax == target over counted targets / their number (REFERENCE_GPT2 §4.2)."""
    logits = np.full((2, 4, 5), -1.0, np.float32)
    ids = np.array([[0, 1, 2, 3], [4, 4, 4, 0]], np.int32)
    # Row 0 predicts 1, 2, 9->wrong (3 wanted); row 1 predicts 4, 0 (wrong), padding.
    for b, t, v in [(0, 0, 1), (0, 1, 2), (0, 2, 0), (1, 0, 4), (1, 1, 0), (1, 2, 0)]:
        logits[b, t, v] = 5.0
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
    result = causal_lm_loss(tf.constant(logits), ids, mask)
    assert float(result["acc"]) == pytest.approx(3 / 5)
    assert float(result["tokens"]) == 5
    ce = -np.log(np.exp(5) / (np.exp(5) + 4 * np.exp(-1)))
    ce_wrong = -np.log(np.exp(-1) / (np.exp(5) + 4 * np.exp(-1)))
    assert float(result["loss"]) == pytest.approx((3 * ce + 2 * ce_wrong) / 5, rel=1e-6)
    empty = causal_lm_loss(tf.constant(logits), ids, np.zeros_like(mask))
    assert float(empty["loss"]) == 0 and float(empty["acc"]) == 0


def test_float64_forward_and_gradients():
    """float64 runs (for gradient checks): close to float32, and a finite difference holds."""
    model = randomized(tiny())
    ids, mask = inputs()
    f32 = model(ids, mask)["logits"].numpy()
    f64 = model(ids, mask, compute_dtype=tf.float64)["logits"]
    assert f64.dtype == tf.float64
    assert max_diff_at_tokens(f64.numpy(), f32, mask) < 1e-4
    var = model.params["transformer/h/1/ln_1/bias"]

    def loss():
        logits = model(ids, mask, compute_dtype=tf.float64)["logits"]
        return causal_lm_loss(logits, ids, mask)["loss"]

    with tf.GradientTape() as tape:
        value = loss()
    grad = tape.gradient(value, var).numpy()
    step = np.zeros(var.shape, np.float32)
    step[5] = 1e-2
    var.assign_add(step)
    up = float(loss())
    var.assign_sub(2 * step)
    down = float(loss())
    assert (up - down) / 2e-2 == pytest.approx(grad[5], rel=1e-3, abs=1e-6)


# ----------------------------------------------------------------------------- behaviour


def test_causal_changing_a_token_leaves_earlier_logits_alone():
    model = randomized(tiny())
    ids, _ = inputs()
    changed = ids.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 99
    before = model(ids)["logits"].numpy()
    after = model(changed)["logits"].numpy()
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert np.all(np.max(np.abs(before[:, 4:] - after[:, 4:]), axis=-1) > 0)


def test_dropout_is_seeded_and_recomputation_draws_the_same_masks():
    rates = dict(resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    ids, mask = inputs()
    results = {}
    for recompute in (False, True):
        model = randomized(tiny(recompute=recompute, **rates))
        for seed in ((1, 2), (1, 2), (3, 4)):
            with tf.GradientTape() as tape:
                logits = model(ids, mask, training=True, dropout_seed=tf.constant(seed))["logits"]
                loss = causal_lm_loss(logits, ids, mask)["loss"]
            grads = tape.gradient(loss, list(model.params.values()))
            results.setdefault((recompute, seed), []).append(
                [logits.numpy()] + [g.numpy() for g in grads]
            )
        evaluated = model(ids, mask)["logits"].numpy()
    for key, runs in results.items():
        for a, b in zip(runs[0], runs[-1]):
            np.testing.assert_array_equal(a, b, err_msg=str(key))
    same = results[(False, (1, 2))][0]
    for a, b in zip(same, results[(True, (1, 2))][0]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    other = results[(False, (3, 4))][0][0]
    assert np.max(np.abs(same[0] - other)) > 1e-3
    assert np.max(np.abs(same[0] - evaluated)) > 1e-3  # dropout did something
    with pytest.raises(ValueError, match="dropout_seed"):
        model(ids, training=True)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_traced_training_step_equals_eager(jit_compile):
    """The step as the training loop will run it (tf.function, XLA or not, recomputation on)
    gives the eager loss and gradients. With dropout, only the plain tf.function draws the eager
    masks: modeling_ops.dropout_keys' stateless_uniform gives other keys under XLA (seeded and
    deterministic there too)."""
    rate = 0.0 if jit_compile else 0.1
    model = randomized(tiny(recompute=True, resid_pdrop=rate, embd_pdrop=rate, attn_pdrop=rate))
    ids, mask = inputs()
    variables = list(model.params.values())

    def step(ids, mask, seed):
        with tf.GradientTape() as tape:
            logits = model(ids, mask, training=True, dropout_seed=seed)["logits"]
            loss = causal_lm_loss(logits, ids, mask)["loss"]
        return loss, tape.gradient(loss, variables)

    seed = tf.constant([5, 6])
    want_loss, want_grads = step(tf.constant(ids), tf.constant(mask), seed)
    loss, grads = tf.function(step, jit_compile=jit_compile)(ids, mask, seed)
    assert float(loss) == pytest.approx(float(want_loss), abs=1e-6)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)


def test_bfloat16_logits_are_close_to_float32():
    model = randomized(tiny())
    ids, mask = inputs()
    f32 = model(ids, mask)["logits"].numpy()
    out = model(ids, mask, compute_dtype=tf.bfloat16)
    assert out["logits"].dtype == tf.float32 and out["hidden_states"].dtype == tf.bfloat16
    diff = max_diff_at_tokens(out["logits"].numpy(), f32, mask)
    assert diff < 0.05 * np.max(np.abs(f32)), diff
    assert diff > 0  # it really ran in bfloat16


def test_sequence_longer_than_positions_is_refused():
    with pytest.raises(ValueError, match="n_positions"):
        modeling_gpt2.GPT2Model(tiny(n_positions=5))(np.zeros((1, 6), np.int32))


# ----------------------------------------------------------------------------- configs


def test_config_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    config = tiny(activation_function="gelu", scale_attn_by_inverse_layer_idx=True)
    hf = transformers.GPT2Config(**config.to_hf_dict())
    assert GPT2Config.from_hf_dict(hf.to_dict()) == config
    # Hugging Face's own defaults (a full config.json as save_pretrained writes it) parse too.
    assert GPT2Config.from_hf_dict(transformers.GPT2Config().to_dict()) == GPT2Config()
    assert GPT2Config.from_hf_dict({"n_vocab": 7, "n_embd": 6, "n_head": 2}).vocab_size == 7


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_embd": 10, "n_head": 3}, "not divisible by n_head"),
        ({"activation_function": "gelu_erf"}, "unknown activation_function 'gelu_erf'"),
        ({"n_layers": 2}, "unknown key 'n_layers'; did you mean n_layer?"),
        ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False is not supported"),
        ({"attn_pdrop": 1.0}, "attn_pdrop must be in [0, 1)"),
        ({"n_head": True}, "n_head is True, expected a positive integer"),
        ({"model_type": "bert"}, "model_type is 'bert'"),
    ],
)
def test_bad_configs_are_one_line_errors(bad, message):
    with pytest.raises(UserError) as err:
        GPT2Config.from_hf_dict(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


# name: (n_embd, n_head, n_layer, n_positions, vocab_size, parameters); counts from
# REFERENCE_GPT2 §3.1 at vocab 50257 (large at its 512 positions: 774,030,080 - 512 * 1280).
SHIPPED = {
    "gpt2-test": (768, 4, 4, 128, 20256, 44_007_936),
    "gpt2": (768, 12, 12, 1024, 50257, 124_439_808),
    "gpt2-medium": (1024, 16, 24, 1024, 50257, 354_823_168),
    "gpt2-large": (1280, 20, 36, 512, 50257, 773_374_720),
    "gpt2-xl": (1600, 25, 48, 1024, 50257, 1_557_611_200),
}


def test_shipped_configs_parse_with_the_references_sizes():
    paths = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.json")))
    assert {os.path.basename(p)[:-5] for p in paths} == set(SHIPPED)
    for path in paths:
        name = os.path.basename(path)[:-5]
        config = GPT2Config.from_json_file(path)
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        assert "vocab" in raw["_comment"]
        e, heads, layers, positions, vocab, count = SHIPPED[name]
        got = (config.n_embd, config.n_head, config.n_layer, config.n_positions)
        assert got + (config.vocab_size,) == (e, heads, layers, positions, vocab), name
        assert config.activation_function == "gelu"  # the reference's (exact erf)
        assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.1, 0.1, 0.1)
        assert (config.layer_norm_epsilon, config.initializer_range) == (1e-5, 0.02)
        assert raw["bos_token_id"] == raw["eos_token_id"] < vocab
        assert modeling_gpt2.parameter_count(config) == count, name


def test_parameter_count_and_flops_formulas():
    transformers = pytest.importorskip("transformers")
    for config in (tiny(), tiny(n_inner=None)):
        model = modeling_gpt2.GPT2Model(config)
        ours = sum(int(np.prod(v.shape)) for v in model.params.values())
        assert modeling_gpt2.parameter_count(config) == ours
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config.to_hf_dict()))
        assert hf.num_parameters() == ours
    # Kaplan et al.: 6 N + 12 L S E per token, N = matmul weights (blocks + tied head).
    gpt2, s = GPT2Config(), 1024
    n = gpt2.n_layer * 12 * gpt2.n_embd**2 + gpt2.vocab_size * gpt2.n_embd
    want = 6 * n + 12 * gpt2.n_layer * s * gpt2.n_embd
    assert modeling_gpt2.flops_per_token(gpt2, s) == want == 854_438_400
