"""Staircase natural-exponential decay with linear warm-up (the reference's `natural_exponential`)."""

from .base import Schedule, with_warmup


class NaturalExponential(Schedule):
    """Warm-up `lr * step / W`, then `lr * exp(-decay_rate * floor((step - W) / decay_steps))`.

    As in the reference there is no 1e-7 floor here, so step 0 gives exactly 0 when W > 0.

    Args:
      base_learning_rate: peak learning rate (float).
      warmup_steps: W, int >= 0.
      decay_steps: steps per decay stair, > 0.
      decay_rate: exponent per stair (float).
    """

    def __init__(self, base_learning_rate, warmup_steps, decay_steps, decay_rate):
        self.base_lr = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = float(decay_steps)
        self.decay_rate = float(decay_rate)

    def _formula(self, step, xp):
        stairs = xp.floor((step - self.warmup_steps) / self.decay_steps)
        decayed = self.base_lr * xp.exp(-self.decay_rate * stairs)
        return with_warmup(decayed, step, self.base_lr, self.warmup_steps, 1.0, xp)
