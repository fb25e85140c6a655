"""Cosine decay with polynomial warm-up (the reference's `cosine_decay`)."""

import math

from .base import LR_FLOOR, Schedule, decay_length, with_warmup


class CosineDecay(Schedule):
    """Warm-up `lr * (step / W) ** p0`, then `0.5 * lr * (1 + cos(pi * (step - W) / (T - W)))`.

    Never below 1e-7. Past step T the cosine is held at its minimum instead of rising again.

    Args:
      base_learning_rate: peak learning rate (float).
      warmup_steps: W, int >= 0.
      total_steps: T, int >= 1.
      powers: tuple of one or two floats; only the first (the warm-up power) is used.
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, powers=(1.0,)):
        self.base_lr = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.powers = tuple(float(p) for p in powers)

    def _formula(self, step, xp):
        lr, warmup = self.base_lr, self.warmup_steps
        progress = xp.minimum((step - warmup) / decay_length(self.total_steps, warmup), 1.0)
        decayed = 0.5 * lr * (1.0 + xp.cos(math.pi * progress))
        value = with_warmup(decayed, step, lr, warmup, self.powers[0], xp)
        return xp.maximum(value, LR_FLOOR)
