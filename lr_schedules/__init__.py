"""Learning-rate schedules: `make_lr_schedule(name, opts, total_steps)`.

Every schedule has `get_at_step(step) -> float` (host) and `tf_at_step(step_tensor) ->
tf.float32` (inside the traced step; no retracing as the step changes). Both agree.
"""

import json
import numbers

from common.errors import UserError

from .cosine_decay import CosineDecay
from .custom import PiecewiseConstant
from .natural_exponential import NaturalExponential
from .polynomial_decay import PolynomialDecay
from .warmup_decay import KINDS as WARMUP_DECAY_KINDS
from .warmup_decay import WarmupDecay

SCHEDULE_NAMES = ("polynomial_decay", "natural_exponential", "custom", "cosine_decay",
                  *WARMUP_DECAY_KINDS)  # fmt: skip
# Accepted on input for the reference's CLI spelling `--lr-schedule polynomial`.
_ALIASES = {"polynomial": "polynomial_decay"}


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def parse_warmup(warmup, total_steps):
    """Warm-up length in steps, as the reference reads `warmup`.

    Args:
      warmup: an integer-valued number (5, 5.0) is a step count; a float in [0, 1) is the
        fraction `int(total_steps * warmup)`.
      total_steps: total optimizer steps (int >= 1).

    Returns:
      int >= 0.

    Raises:
      UserError: anything else (negative, 1.5, a string...).
    """
    if _is_number(warmup) and warmup >= 0:
        if int(warmup) == warmup:
            return int(warmup)
        if warmup < 1:
            return int(total_steps * warmup)
    raise UserError(
        f"warmup: {warmup!r} is neither a whole number of steps nor a fraction in [0, 1); "
        "use e.g. 1000 (steps) or 0.1 (fraction of the training steps)"
    )


def parse_lr_power(lr_power):
    """`lr_power` as a tuple: a number p gives (p,); a list [warmup_power, decay_power] a pair.

    None means the reference default 1. A JSON string ("[0.5, 1]") is accepted too.

    Raises:
      UserError: anything but one or two numbers.
    """
    if lr_power is None:
        return (1.0,)
    value = lr_power
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    powers = value if isinstance(value, list | tuple) else [value]
    if not 1 <= len(powers) <= 2 or not all(_is_number(p) for p in powers):
        raise UserError(
            f"lr_power: {lr_power!r} is not a number or a list [warmup_power, decay_power]; "
            "use e.g. 1 or [0.5, 1]"
        )
    return tuple(float(p) for p in powers)


def _require(opts, key, schedule):
    value = opts.get(key)
    if not _is_number(value):
        raise UserError(f"lr_schedule {schedule}: option {key} must be a number, got {value!r}")
    return value


def make_lr_schedule(name, opts, total_steps):
    """Build the schedule `name` from the options dict.

    Args:
      name: polynomial_decay | natural_exponential | custom | cosine_decay | constant | linear |
        cosine (the last three: Hugging Face's, warmup_decay.py) ("polynomial" is an
        alias of polynomial_decay).
      opts: options dict; keys used: base_learning_rate, warmup, lr_power (polynomial/cosine),
        decay_steps and decay_rate (natural_exponential), lr_schedule_by_step (custom, whose
        values are absolute learning rates: base_learning_rate is not used, as in the reference).
      total_steps: number of optimizer steps of the run (int >= 1).

    Returns:
      A schedule with `get_at_step` and `tf_at_step`.

    Raises:
      UserError: unknown name, missing or invalid option.
    """
    name = _ALIASES.get(name, name)
    if name not in SCHEDULE_NAMES:
        raise UserError(
            f"lr_schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}"
        )
    if name == "custom":
        if not opts.get("lr_schedule_by_step"):
            raise UserError(
                'lr_schedule custom needs lr_schedule_by_step, e.g. {"0": 1e-4, "1000": 5e-5}'
            )
        return PiecewiseConstant(opts["lr_schedule_by_step"], "lr_schedule_by_step")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise UserError(f"num_train_steps: {total_steps!r} is not a positive number of steps")
    base_lr = _require(opts, "base_learning_rate", name)
    if name in WARMUP_DECAY_KINDS:  # GPT-2's: decay_steps (if set) is the schedule length
        length = opts.get("decay_steps") or total_steps
        return WarmupDecay(name, base_lr, parse_warmup(opts.get("warmup"), length), length)
    warmup_steps = parse_warmup(opts.get("warmup"), total_steps)
    if name == "natural_exponential":
        decay_steps, decay_rate = opts.get("decay_steps"), opts.get("decay_rate")
        if not (_is_number(decay_steps) and decay_steps > 0 and _is_number(decay_rate)):
            raise UserError(
                "lr_schedule natural_exponential needs decay_steps (> 0) and decay_rate, got "
                f"decay_steps={decay_steps!r}, decay_rate={decay_rate!r}; set both in the config"
            )
        return NaturalExponential(base_lr, warmup_steps, decay_steps, decay_rate)
    powers = parse_lr_power(opts.get("lr_power"))
    if name == "polynomial_decay":
        return PolynomialDecay(base_lr, warmup_steps, total_steps, powers)
    return CosineDecay(base_lr, warmup_steps, total_steps, powers)
