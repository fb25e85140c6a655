"""Learning-rate schedules against tables worked out by hand from the reference formulas."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from common.errors import UserError
from lr_schedules import make_lr_schedule, parse_lr_power, parse_warmup

FLOOR = 1e-7

# (name, opts, total_steps, {step: expected lr})
CASES = [
    (
        # W = int(10 * 0.2) = 2; linear decay quirk lr * (T - step - 1) / (T - W).
        "polynomial_decay",
        {"base_learning_rate": 0.01, "warmup": 0.2},
        10,
        {0: FLOOR, 1: 0.005, 2: 0.01, 3: 0.0075, 5: 0.005, 8: 0.00125, 9: FLOOR, 12: FLOOR},
    ),
    (
        # Integer warm-up (steps), lr_power given as the scalar 1.0: same quirk.
        "polynomial_decay",
        {"base_learning_rate": 1.0, "warmup": 4, "lr_power": 1.0},
        8,
        {0: FLOOR, 1: 0.25, 4: 1.0, 5: 0.5, 6: 0.25, 7: FLOOR},
    ),
    (
        # GroupBERT [0.5, 1]: sqrt warm-up, then (lr - 1e-7)(1 - (s - W)/(T - W)) + 1e-7.
        "polynomial_decay",
        {"base_learning_rate": 1e-3, "warmup": 4.0, "lr_power": [0.5, 1]},
        12,
        {
            0: FLOOR,
            1: 5e-4,
            2: 1e-3 * math.sqrt(0.5),
            4: 1e-3,
            6: (1e-3 - FLOOR) * 0.75 + FLOOR,
            10: (1e-3 - FLOOR) * 0.25 + FLOOR,
            12: FLOOR,
            15: FLOOR,
        },
    ),
    (
        # Scalar power 2: quadratic warm-up and quadratic decay towards 1e-7.
        "polynomial_decay",
        {"base_learning_rate": 1.0, "warmup": 2, "lr_power": 2},
        6,
        {1: 0.25, 2: 1.0, 3: (1 - FLOOR) * 0.5625 + FLOOR, 4: (1 - FLOOR) * 0.25 + FLOOR},
    ),
    (
        # No warm-up: step 0 is already on the decay line, lr * (T - 1) / T.
        "polynomial_decay",
        {"base_learning_rate": 1.0, "warmup": 0},
        4,
        {0: 0.75, 1: 0.5, 2: 0.25, 3: FLOOR},
    ),
    (
        "cosine_decay",
        {"base_learning_rate": 1.0, "warmup": 2},
        6,
        {
            0: FLOOR,
            1: 0.5,
            2: 1.0,
            3: 0.5 * (1 + math.cos(math.pi / 4)),
            4: 0.5,
            5: 0.5 * (1 + math.cos(3 * math.pi / 4)),
            6: FLOOR,
            9: FLOOR,
        },
    ),
    (
        "cosine_decay",
        {"base_learning_rate": 2.0, "warmup": 0.5, "lr_power": [0.5, 3]},
        8,
        {1: 1.0, 4: 2.0, 6: 1.0},
    ),
    (
        # floor((step - 2) / 3) stairs of exp(-0.5); no 1e-7 floor, so step 0 is exactly 0.
        "natural_exponential",
        {"base_learning_rate": 0.1, "warmup": 2, "decay_steps": 3, "decay_rate": 0.5},
        20,
        {0: 0.0, 1: 0.05, 2: 0.1, 4: 0.1, 5: 0.1 * math.exp(-0.5), 11: 0.1 * math.exp(-1.5)},
    ),
    (
        "custom",
        {"base_learning_rate": 9.0, "lr_schedule_by_step": {"0": 1e-3, "20": 1e-4, "10": 5e-4}},
        30,
        {0: 1e-3, 9: 1e-3, 10: 5e-4, 19: 5e-4, 20: 1e-4, 100: 1e-4},
    ),
]


@pytest.mark.parametrize("name, opts, total, table", CASES)
def test_schedule_table(name, opts, total, table):
    schedule = make_lr_schedule(name, opts, total)
    for step, want in table.items():
        assert schedule.get_at_step(step) == pytest.approx(want, rel=1e-9, abs=1e-15), step


@pytest.mark.parametrize("name, opts, total, table", CASES)
def test_tf_at_step_equals_get_at_step(name, opts, total, table):
    import tensorflow as tf

    schedule = make_lr_schedule(name, opts, total)
    step = tf.Variable(0, dtype=tf.int64)
    graph = tf.function(lambda: schedule.tf_at_step(step), jit_compile=True)
    for s in range(total + 3):
        step.assign(s)
        assert graph().numpy() == pytest.approx(schedule.get_at_step(s), rel=1e-6, abs=1e-12)
    assert graph.experimental_get_tracing_count() == 1


def test_warmup_parsing():
    assert parse_warmup(5, 100) == 5
    assert parse_warmup(5.0, 100) == 5  # integer-valued float: steps
    assert parse_warmup(0.25, 10) == 2  # int(10 * 0.25)
    assert parse_warmup(0.1, 1000) == 100
    assert parse_warmup(0, 100) == 0
    for bad in (1.5, -3, -0.1, "0.1", None, True):
        with pytest.raises(UserError, match="warmup"):
            parse_warmup(bad, 100)


def test_lr_power_parsing():
    assert parse_lr_power(None) == (1.0,)
    assert parse_lr_power(2) == (2.0,)
    assert parse_lr_power([0.5, 1]) == (0.5, 1.0)
    assert parse_lr_power("[0.5, 1]") == (0.5, 1.0)
    for bad in ([], [1, 2, 3], "x", [1, "a"]):
        with pytest.raises(UserError, match="lr_power"):
            parse_lr_power(bad)


def test_polynomial_alias():
    schedule = make_lr_schedule("polynomial", {"base_learning_rate": 0.01, "warmup": 0.2}, 10)
    assert schedule.get_at_step(3) == pytest.approx(0.0075)


def test_errors_are_one_line_user_errors():
    base = {"base_learning_rate": 0.1, "warmup": 2}
    checks = [
        ("exponential", base, "unknown schedule"),
        ("natural_exponential", base, "decay_steps"),
        ("natural_exponential", {**base, "decay_steps": 3}, "decay_rate"),
        ("custom", base, "lr_schedule_by_step"),
        ("custom", {"lr_schedule_by_step": {"5": 0.1}}, "step 0"),
        ("polynomial_decay", {"warmup": 2}, "base_learning_rate"),
        ("polynomial_decay", {**base, "warmup": 2.5}, "warmup"),
    ]
    for name, opts, words in checks:
        with pytest.raises(UserError) as err:
            make_lr_schedule(name, opts, 10)
        assert words in str(err.value) and "\n" not in str(err.value), name
