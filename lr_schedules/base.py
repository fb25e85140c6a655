"""What every learning-rate schedule shares: the 1e-7 floor, the warm-up ramp, two evaluators.

A schedule writes its formula once, in `_formula(step, xp)`, against a namespace `xp` that is
either NumPy (host) or TensorFlow (inside the traced training step), both in float64. So
`get_at_step` and `tf_at_step` cannot drift apart. TensorFlow is imported lazily so that host-only
users (config validation) do not pay for it.
"""

import numpy as np

# Reference value: the polynomial and cosine schedules never return less than this.
LR_FLOOR = 1e-7


class Schedule:
    """Base class: subclasses implement `_formula(step, xp)` or override both evaluators."""

    def _formula(self, step, xp):
        raise NotImplementedError

    def get_at_step(self, step):
        """Learning rate at optimizer step `step` (int >= 0), as a Python float."""
        return float(self._formula(np.float64(step), np))

    def tf_at_step(self, step):
        """Graph-side twin of `get_at_step`.

        Args:
          step: scalar integer (or float) tensor, e.g. the step variable; no retracing per value.

        Returns:
          tf.float32 scalar tensor equal (to float32 rounding) to `get_at_step(step)`.
        """
        import tensorflow as tf

        return tf.cast(self._formula(tf.cast(step, tf.float64), tf), tf.float32)


def with_warmup(decayed, step, base_lr, warmup_steps, power, xp):
    """Reference warm-up: `base_lr * (step / W) ** power` for step <= W, else `decayed`.

    With W = 0 there is no warm-up at all (the reference divided 0 by 0 at step 0).
    """
    if warmup_steps == 0:
        return decayed
    ramp = base_lr * (step / float(warmup_steps)) ** power
    return xp.where(step <= warmup_steps, ramp, decayed)


def decay_length(total_steps, warmup_steps):
    """T - W, but at least 1 so that W >= T cannot divide by zero (such steps are never reached)."""
    return float(max(total_steps - warmup_steps, 1))
