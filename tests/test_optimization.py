"""Optimizers and loss scaling against NumPy implementations written here from the formulas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections import OrderedDict

import numpy as np
import pytest
import tensorflow as tf

import optimization
import options
from common.errors import UserError

H = 5  # hidden size: the fused qkv kernel is [5, 15]
QKV = "bert/encoder/layer_0/attention/self/kernel/qkv_weight"
ZERO_W = "bert/encoder/layer_1/output/dense/kernel"  # starts at 0: ||w|| = 0 on the first step
ZERO_G = "cls/seq_relationship/output_weights"  # always a zero gradient: ||u|| = 0 without wd
FROZEN = "bert/encoder/layer_0/attention/self/key/bias"  # trainable=False, as in the reference
SHAPES = OrderedDict(
    [
        ("bert/embeddings/word_embeddings", (9, H)),
        ("bert/embeddings/LayerNorm/gamma", (H,)),
        ("bert/embeddings/LayerNorm/beta", (H,)),
        (QKV, (H, 3 * H)),
        (FROZEN, (H,)),
        ("bert/encoder/layer_0/attention/self/query/bias", (H,)),
        ("bert/encoder/layer_0/intermediate/dense/kernel", (H, 7)),
        ("bert/encoder/layer_0/intermediate/dense/bias", (7,)),
        (ZERO_W, (7, H)),
        ("bert/encoder/layer_1/output/LayerNorm/gamma", (H,)),
        (ZERO_G, (2, H)),
    ]
)
TRAINABLE = [n for n in SHAPES if n != FROZEN]
GAMMAS = {"bert/embeddings/LayerNorm/gamma", "bert/encoder/layer_1/output/LayerNorm/gamma"}
BETAS = {"bert/embeddings/LayerNorm/beta"}
BIASES = {
    "bert/encoder/layer_0/attention/self/query/bias",
    "bert/encoder/layer_0/intermediate/dense/bias",
}
# Hand-written exclusion sets (the reference's regex lists applied to the names above).
LAMB_NO_WD = BETAS | BIASES
LAMB_NO_WD_GROUPBERT = BETAS | BIASES | GAMMAS
LAMB_NO_ADAPTATION = BETAS | BIASES | GAMMAS
ADAMW_NO_WD = BETAS | BIASES | GAMMAS  # LayerNorm/* and bias
# Stage of each variable for `custom`: embeddings 0, layer_i i + 1, heads last (= 3 here).
STAGES = {n: 0 for n in TRAINABLE if "embeddings" in n}
STAGES.update({n: 1 for n in TRAINABLE if "layer_0" in n})
STAGES.update({n: 2 for n in TRAINABLE if "layer_1" in n})
STAGES[ZERO_G] = 3

LRS = [0.01, 0.02, 0.005, 0.03, 0.01, 0.02]
GRAD_SCALES = [0.05, 3.0, 0.2, 1.5, 0.02, 4.0]  # global norm on both sides of the 1.0 clip


def make_optimizer(opts, params, xla=False):
    """optimization.make_optimizer from a dict of optimizer options (schema defaults elsewhere);
    "groupbert" selects GroupBERT's LAMB weight-decay exclusions."""
    opts = dict(opts)
    groupbert = opts.pop("groupbert", False)
    exclude = optimization.LAMB_WD_EXCLUDE_GROUPBERT if groupbert else None
    settings = options.defaults("optimizer", **opts)
    return optimization.make_optimizer(settings, params, exclude, xla=xla)


def initial_weights():
    rng = np.random.default_rng(7)
    weights = OrderedDict((n, rng.normal(size=s).astype(np.float32)) for n, s in SHAPES.items())
    weights[ZERO_W][:] = 0.0
    # Q, K and V blocks with different norms, so one ratio for the whole kernel would be wrong.
    weights[QKV] *= np.repeat(np.array([0.5, 1.0, 3.0], np.float32), H)
    return weights


def gradient_steps():
    rng = np.random.default_rng(11)
    steps = []
    for scale in GRAD_SCALES:
        grads = OrderedDict(
            (n, (scale * rng.normal(size=SHAPES[n]) / 4).astype(np.float32)) for n in TRAINABLE
        )
        grads[ZERO_G][:] = 0.0
        steps.append(grads)
    return steps


def make_params(weights):
    return OrderedDict(
        (n, tf.Variable(w, name=n, trainable=n != FROZEN)) for n, w in weights.items()
    )


def run_tf(opts, jit_compile=False):
    """Run the optimizer for every step inside one tf.function; return weights, slots, tracings."""
    params = make_params(initial_weights())
    opt = make_optimizer(opts, params, xla=jit_compile)
    step = tf.function(opt.apply_gradients, jit_compile=jit_compile)
    for lr, grads in zip(LRS, gradient_steps()):
        step({n: tf.constant(g) for n, g in grads.items()}, tf.constant(lr, tf.float32))
    weights = {n: v.numpy() for n, v in params.items()}
    slots = {n: v.numpy() for n, v in opt.slots.items()}
    return weights, slots, step.experimental_get_tracing_count(), opt


# ---- NumPy references, float64 --------------------------------------------------------------


def norm(x):
    return float(np.sqrt(np.sum(np.square(x))))


def trust(w_norm, u_norm):
    return w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0


def ref_lamb(cfg):
    b1, b2, eps, wd = cfg["beta1"], cfg["beta2"], cfg["epsilon"], cfg["weight_decay_rate"]
    no_wd = LAMB_NO_WD_GROUPBERT if cfg.get("groupbert") else LAMB_NO_WD
    w = {n: x.astype(np.float64) for n, x in initial_weights().items()}
    m = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    v = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    t = 1
    for lr, grads in zip(LRS, gradient_steps()):
        g = {n: x.astype(np.float64) for n, x in grads.items()}
        if cfg.get("use_mpclip"):
            total = np.sqrt(sum(np.sum(x**2) for x in g.values()))
            g = {n: x / max(total, 1.0) for n, x in g.items()}
        if cfg.get("use_nvlamb"):
            total = np.sqrt(sum(np.sum(x**2) for x in g.values()))
            g = {n: x / max(total, 1.0) for n, x in g.items()}
        for n in TRAINABLE:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            m_hat, v_hat = m[n], v[n]
            if cfg.get("use_debiasing"):
                m_hat, v_hat = m[n] / (1 - b1**t), v[n] / (1 - b2**t)
            u = m_hat / (np.sqrt(np.abs(v_hat)) + eps)
            if wd and n not in no_wd:
                u = u + wd * w[n]
            if n in LAMB_NO_ADAPTATION:
                w[n] = w[n] - lr * u
            elif n == QKV:
                new = w[n].copy()
                for k in range(3):
                    cols = slice(k * H, (k + 1) * H)
                    new[:, cols] -= lr * trust(norm(w[n][:, cols]), norm(u[:, cols])) * u[:, cols]
                w[n] = new
            else:
                w[n] = w[n] - lr * trust(norm(w[n]), norm(u)) * u
        t += 1
    slots = {f"{n}/lamb_m": m[n] for n in TRAINABLE} | {f"{n}/lamb_v": v[n] for n in TRAINABLE}
    return w, slots


def ref_adamw(cfg):
    b1, b2, eps, wd = cfg["beta1"], cfg["beta2"], cfg["epsilon"], cfg["weight_decay_rate"]
    w = {n: x.astype(np.float64) for n, x in initial_weights().items()}
    m = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    v = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    t = 1
    for lr, grads in zip(LRS, gradient_steps()):
        total = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in grads.values()))
        c = np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1)) if cfg.get("use_debiasing") else 1.0
        for n in TRAINABLE:
            g = grads[n] / max(total, 1.0)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g**2
            u = m[n] / (np.sqrt(v[n]) + eps)
            if n not in ADAMW_NO_WD:
                u = u + wd * w[n]
            w[n] = w[n] - lr * u * c
        t += 1
    slots = {f"{n}/adam_m": m[n] for n in TRAINABLE} | {f"{n}/adam_v": v[n] for n in TRAINABLE}
    return w, slots


def ref_adam(cfg):
    b1, b2, eps = cfg["beta1"], cfg["beta2"], cfg["epsilon"]
    w = {n: x.astype(np.float64) for n, x in initial_weights().items()}
    m = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    v = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    for t, (lr, grads) in enumerate(zip(LRS, gradient_steps()), start=1):
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        for n in TRAINABLE:
            m[n] = b1 * m[n] + (1 - b1) * grads[n]
            v[n] = b2 * v[n] + (1 - b2) * grads[n] ** 2
            w[n] = w[n] - lr_t * m[n] / (np.sqrt(v[n]) + eps)
    slots = {f"{n}/Adam": m[n] for n in TRAINABLE} | {f"{n}/Adam_1": v[n] for n in TRAINABLE}
    slots |= {"beta1_power": b1 ** len(LRS) * b1, "beta2_power": b2 ** len(LRS) * b2}
    return w, slots


def ref_momentum(cfg, stages=None):
    w = {n: x.astype(np.float64) for n, x in initial_weights().items()}
    acc = {n: np.zeros(SHAPES[n]) for n in TRAINABLE}
    for lr, grads in zip(LRS, gradient_steps()):
        for n in TRAINABLE:
            factor = 1.0 if stages is None else 0.2 + 0.8 * stages[n] / 3
            momentum = cfg.get("momentum", 0.984375)
            acc[n] = momentum * factor * acc[n] + grads[n]
            w[n] = w[n] - lr * factor * acc[n]
    return w, {f"{n}/Momentum": acc[n] for n in TRAINABLE}


def ref_sgd(cfg):
    w = {n: x.astype(np.float64) for n, x in initial_weights().items()}
    for lr, grads in zip(LRS, gradient_steps()):
        for n in TRAINABLE:
            w[n] = w[n] - lr * grads[n]
    return w, {}


def assert_matches(got_w, got_slots, want_w, want_slots, rtol=1e-5, atol=1e-6):
    for n in SHAPES:
        np.testing.assert_allclose(got_w[n], want_w[n], rtol=rtol, atol=atol, err_msg=n)
    for n, want in want_slots.items():
        np.testing.assert_allclose(got_slots[n], want, rtol=rtol, atol=atol, err_msg=n)


# TF's fused Adam kernel forms 1 - beta2 in float32 (1 - float32(0.999) = 9.99987e-4, 1.3e-5 off),
# so its v, and through it the weights, drift from the float64 formula by about 1e-5 relative: 2.5e-6
# absolute after these 6 steps. A wrong term (e.g. the decay without c) is off by 1e-4 per step.
FUSED_ADAM_TOLERANCE = {"rtol": 1e-4, "atol": 5e-6}


ADAM_CFG = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-4}
LAMB_CASES = [
    {"weight_decay_rate": 0.01},
    {"weight_decay_rate": 0.01, "use_debiasing": True},
    {"weight_decay_rate": 0.0, "use_debiasing": True},
    {"weight_decay_rate": 0.01, "use_nvlamb": True},
    {"weight_decay_rate": 0.01, "use_mpclip": True, "use_debiasing": True},
    {"weight_decay_rate": 0.01, "use_mpclip": True, "use_nvlamb": True},
    {"weight_decay_rate": 0.01, "groupbert": True, "use_debiasing": True},
]


@pytest.mark.parametrize(
    "case", LAMB_CASES, ids=lambda c: "-".join(sorted(c)) + str(c["weight_decay_rate"])
)
def test_lamb_matches_numpy(case):
    cfg = {"optimizer": "lamb", **ADAM_CFG, **case}
    weights, slots, tracings, _ = run_tf(cfg)
    assert tracings == 1
    assert_matches(weights, slots, *ref_lamb(cfg))
    if "use_debiasing" in case or "use_nvlamb" in case:
        assert slots["lamb_step_counter"].tolist() == [1 + len(LRS)]
    else:
        assert "lamb_step_counter" not in slots


def test_lamb_trust_ratio_edge_cases():
    cfg = {"optimizer": "lamb", **ADAM_CFG, "weight_decay_rate": 0.0}
    weights, _, _, _ = run_tf(cfg)
    start = initial_weights()
    # u = 0 (zero gradient, no weight decay): ratio 1, weight unchanged rather than NaN.
    np.testing.assert_array_equal(weights[ZERO_G], start[ZERO_G])
    assert np.all(weights[ZERO_W] != 0)  # ||w|| = 0 at step 1: ratio 1, so the weight moved
    np.testing.assert_array_equal(weights[FROZEN], start[FROZEN])


def test_lamb_groupbert_excludes_gamma_from_weight_decay():
    # Every gradient zero: only weight decay moves weights; gammas are not adapted (ratio 1).
    params = make_params(initial_weights())
    for groupbert, decays in ((False, True), (True, False)):
        params = make_params(initial_weights())
        opt = make_optimizer(
            {"optimizer": "lamb", "weight_decay_rate": 0.1, "groupbert": groupbert}, params
        )
        opt.apply_gradients({n: tf.zeros(SHAPES[n]) for n in TRAINABLE}, 0.5)
        for n in GAMMAS:
            start = initial_weights()[n]
            want = start - 0.5 * 0.1 * start if decays else start
            np.testing.assert_allclose(params[n].numpy(), want, rtol=1e-6, err_msg=n)


# fused: TF's ResourceApplyAdam kernel (plain variables); separate ops: the path of a strategy's
# mirrored variables, forced here on plain ones.
FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate_ops"])


def _force_path(monkeypatch, fused):
    monkeypatch.setattr(optimization, "fused_kernels_apply", lambda var: fused)


@FUSED
@pytest.mark.parametrize("debias", [False, True])
@pytest.mark.parametrize("name", ["adamw", "mpadamw"])
def test_adamw_matches_numpy(name, debias, fused, monkeypatch):
    _force_path(monkeypatch, fused)
    cfg = {"optimizer": name, **ADAM_CFG, "weight_decay_rate": 0.01, "use_debiasing": debias}
    weights, slots, tracings, _ = run_tf(cfg)
    assert tracings == 1
    assert_matches(weights, slots, *ref_adamw(cfg), **(FUSED_ADAM_TOLERANCE if fused else {}))
    assert ("adam_step_counter" in slots) == debias


@FUSED
def test_adam_matches_numpy(fused, monkeypatch):
    _force_path(monkeypatch, fused)
    cfg = {"optimizer": "adam", **ADAM_CFG}
    weights, slots, tracings, _ = run_tf(cfg)
    assert tracings == 1
    assert_matches(weights, slots, *ref_adam(cfg), **(FUSED_ADAM_TOLERANCE if fused else {}))


@FUSED
def test_momentum_sgd_and_custom_match_numpy(fused, monkeypatch):
    _force_path(monkeypatch, fused)
    for cfg, ref in (
        ({"optimizer": "momentum"}, ref_momentum),
        ({"optimizer": "momentum", "momentum": 0.5}, ref_momentum),
        ({"optimizer": "sgd"}, ref_sgd),
        ({"optimizer": "custom", "momentum": 0.9}, lambda c: ref_momentum(c, STAGES)),
    ):
        weights, slots, tracings, _ = run_tf(cfg)
        assert tracings == 1
        assert_matches(weights, slots, *ref(cfg))


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_xla_compiled_step_matches_numpy(name):
    cfg = {"optimizer": name, **ADAM_CFG, "weight_decay_rate": 0.01, "use_debiasing": True}
    if name == "lamb":
        cfg |= {"use_nvlamb": True, "use_mpclip": True}
    weights, slots, tracings, _ = run_tf(cfg, jit_compile=True)
    assert tracings == 1
    tolerance = {} if name == "lamb" else FUSED_ADAM_TOLERANCE
    assert_matches(weights, slots, *(ref_lamb if name == "lamb" else ref_adamw)(cfg), **tolerance)


def test_slot_names():
    def names(opts):
        return list(make_optimizer(opts, make_params(initial_weights())).slots)

    kernel = "bert/encoder/layer_0/intermediate/dense/kernel"
    lamb = names({"optimizer": "lamb", "use_debiasing": True})
    assert lamb[:2] == [f"bert/embeddings/word_embeddings/{s}" for s in ("lamb_m", "lamb_v")]
    assert {f"{kernel}/lamb_m", f"{kernel}/lamb_v"} <= set(lamb) and lamb[-1] == "lamb_step_counter"
    assert len(lamb) == 2 * len(TRAINABLE) + 1 and not any(FROZEN in n for n in lamb)
    assert len(names({"optimizer": "lamb"})) == 2 * len(TRAINABLE)
    adamw = names({"optimizer": "adamw", "use_debiasing": True})
    assert f"{kernel}/adam_m" in adamw and adamw[-1] == "adam_step_counter"
    assert names({"optimizer": "adam"})[-2:] == ["beta1_power", "beta2_power"]
    assert f"{kernel}/Adam_1" in names({"optimizer": "adam"})
    assert names({"optimizer": "momentum"}) == [f"{n}/Momentum" for n in TRAINABLE]
    assert names({"optimizer": "custom"}) == [f"{n}/Momentum" for n in TRAINABLE]
    assert names({"optimizer": "sgd"}) == []


def test_gradients_as_list_with_none_for_frozen():
    grads = gradient_steps()[0]
    by_dict = make_params(initial_weights())
    by_list = make_params(initial_weights())
    make_optimizer({"optimizer": "sgd"}, by_dict).apply_gradients(grads, 0.1)
    as_list = [grads.get(n) for n in SHAPES]  # aligned with params, None for the frozen one
    make_optimizer({"optimizer": "sgd"}, by_list).apply_gradients(as_list, 0.1)
    for n in SHAPES:
        np.testing.assert_array_equal(by_dict[n].numpy(), by_list[n].numpy())


def test_unknown_optimizer_is_one_line_user_error():
    with pytest.raises(UserError) as err:
        make_optimizer({"optimizer": "adagrad"}, make_params(initial_weights()))
    assert "adagrad" in str(err.value) and "lamb" in str(err.value) and "\n" not in str(err.value)


def test_clipping_returns_norm_and_non_finite_norm_poisons_the_step():
    grads = {n: np.full(SHAPES[n], 2.0, np.float32) for n in TRAINABLE}
    want_norm = np.sqrt(sum(4.0 * np.prod(SHAPES[n]) for n in TRAINABLE))
    params = make_params(initial_weights())
    opt = make_optimizer({"optimizer": "adamw"}, params)
    assert opt.apply_gradients(grads, 0.0).numpy() == pytest.approx(want_norm, rel=1e-6)
    # Clipped: m = (1 - beta1) * g / norm.
    m = opt.slots[f"{ZERO_W}/adam_m"].numpy()
    np.testing.assert_allclose(m, 0.1 * 2.0 / want_norm, rtol=1e-5)
    # Documented behaviour: an inf gradient makes every clipped gradient NaN (reference), the
    # returned norm is inf and all_finite is False, so the loop can refuse the step.
    grads[ZERO_G][0, 0] = np.inf
    assert not optimization.all_finite(grads).numpy()
    assert not np.isfinite(opt.apply_gradients(grads, 0.1).numpy())
    assert np.all(np.isnan(params[ZERO_W].numpy()))
    assert optimization.all_finite([tf.ones(3), None]).numpy()


def test_clip_by_global_norm_keeps_small_and_zero_gradients():
    clipped, norm = optimization.clip_by_global_norm([tf.constant([0.3, 0.4])])
    np.testing.assert_allclose(clipped[0].numpy(), [0.3, 0.4], rtol=1e-6)
    assert norm.numpy() == pytest.approx(0.5)
    clipped, _ = optimization.clip_by_global_norm([tf.constant([3.0, 4.0])])
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)
    clipped, _ = optimization.clip_by_global_norm([tf.zeros([2])])
    np.testing.assert_array_equal(clipped[0].numpy(), [0.0, 0.0])


# ---- loss scaling ---------------------------------------------------------------------------


def test_loss_scaling_schedule_table():
    sched = optimization.LossScalingScheduler(1, {"0": 512, "100": 1024, "50": 256})
    table = {0: 512, 1: 512, 49: 512, 50: 256, 99: 256, 100: 1024, 5000: 1024}
    step = tf.Variable(0, dtype=tf.int64)
    graph = tf.function(lambda: sched.tf_at_step(step))
    for s, want in table.items():
        assert sched.get_at_step(s) == want
        step.assign(s)
        assert graph().numpy() == want
    assert graph.experimental_get_tracing_count() == 1
    assert optimization.LossScalingScheduler(128).get_at_step(10) == 128
    assert optimization.LossScalingScheduler(8, {}).get_at_step(10) == 8


@pytest.mark.parametrize(
    "by_step, words",
    [
        ({"10": 4}, "step 0"),
        ({"0": 0}, "positive"),
        ({"x": 4}, "integer"),
        ({"0": "a"}, "positive"),
    ],
)
def test_loss_scaling_schedule_errors(by_step, words):
    with pytest.raises(UserError) as err:
        optimization.LossScalingScheduler(1, by_step)
    assert "loss_scaling_by_step" in str(err.value) and words in str(err.value)
    with pytest.raises(UserError):
        optimization.LossScalingScheduler(0)


def test_dynamic_loss_scale_grow_backoff_skip():
    scale = optimization.DynamicLossScale(initial_scale=8.0, growth_interval=3)
    update = tf.function(scale.update)
    #           finite, apply, scale, good, skipped   (worked out by hand)
    sequence = [
        (True, True, 8.0, 1, 0),
        (True, True, 8.0, 2, 0),
        (True, True, 16.0, 0, 0),  # 3 good steps: x2
        (True, True, 16.0, 1, 0),
        (False, False, 8.0, 0, 1),  # overflow: x0.5, good count reset
        (False, False, 4.0, 0, 2),
        (False, False, 2.0, 0, 3),
        (False, False, 1.0, 0, 4),
        (False, False, 1.0, 0, 5),  # not below min_scale 1
        (True, True, 1.0, 1, 5),
    ]
    for finite, apply, want_scale, good, skipped in sequence:
        assert bool(update(tf.constant(finite)).numpy()) == apply
        assert (scale.loss_scale.numpy(), scale.good_steps.numpy()) == (want_scale, good)
        assert scale.skipped_steps.numpy() == skipped
    assert update.experimental_get_tracing_count() == 1
    assert list(scale.state) == ["loss_scale", "loss_scale/good_steps", "loss_scale/skipped_steps"]
    default = optimization.DynamicLossScale()
    assert default.loss_scale.numpy() == 2.0**15 and default.growth_interval == 2000
