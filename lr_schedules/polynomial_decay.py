"""Polynomial decay with polynomial warm-up (the reference's `polynomial_decay`)."""

from .base import LR_FLOOR, Schedule, decay_length, with_warmup


class PolynomialDecay(Schedule):
    """Warm-up `lr * (step / W) ** p0` up to step W, then decay to the 1e-7 floor at step T.

    Decay, with D = T - W:
      - a single power equal to 1 (the default): `lr * (T - step - 1) / D`. This is the reference's
        linear decay, kept with its off-by-one: the last step T - 1 already reaches the floor;
      - otherwise: `(lr - 1e-7) * (1 - (step - W) / D) ** p_last + 1e-7` (e.g. GroupBERT's
        `[0.5, 1]`: square-root warm-up, then this linear form). The base is clamped at 0 past T
        (the reference produced a complex number there).
    The result is never below 1e-7, so step 0 gives 1e-7.

    Args:
      base_learning_rate: peak learning rate (float).
      warmup_steps: W, int >= 0.
      total_steps: T, int >= 1.
      powers: tuple of one or two floats, `(p,)` or `(warmup_power, decay_power)`.
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, powers=(1.0,)):
        self.base_lr = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.powers = tuple(float(p) for p in powers)

    def _formula(self, step, xp):
        lr, warmup, total = self.base_lr, self.warmup_steps, self.total_steps
        length = decay_length(total, warmup)
        if self.powers == (1.0,):
            decayed = lr * (total - step - 1.0) / length
        else:
            remaining = xp.maximum(1.0 - (step - warmup) / length, 0.0)
            decayed = (lr - LR_FLOOR) * remaining ** self.powers[-1] + LR_FLOOR
        value = with_warmup(decayed, step, lr, warmup, self.powers[0], xp)
        return xp.maximum(value, LR_FLOOR)
