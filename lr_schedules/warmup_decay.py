"""Hugging Face's schedules with linear warm-up (GPT-2's `--lr-schedule constant|linear|cosine`).

Factor f(s) of the peak learning rate at optimizer step s, with W warm-up steps and N schedule
steps (transformers' get_constant_schedule_with_warmup, get_linear_schedule_with_warmup and
get_cosine_schedule_with_warmup with half a cycle):
  - s < W: s / W (so step 0 runs at 0 when W > 0);
  - then constant: 1; linear: max(0, (N - s) / max(1, N - W));
    cosine: max(0, (1 + cos(pi * (s - W) / max(1, N - W))) / 2).
There is no floor. The GPT-2 reference's `constant` ignored the warm-up (its bug 9); here it is
honoured (set the warm-up to 0 for a flat schedule).
"""

import math

from .base import Schedule

KINDS = ("constant", "linear", "cosine")


class WarmupDecay(Schedule):
    """Args: kind (one of KINDS); base_learning_rate: peak; warmup_steps W >= 0; total_steps N."""

    def __init__(self, kind, base_learning_rate, warmup_steps, total_steps):
        if kind not in KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}")
        self.kind = kind
        self.base_lr = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def _formula(self, step, xp):
        warmup, total = float(self.warmup_steps), float(self.total_steps)
        zero = step * 0.0  # a float64 zero of the step's kind (NumPy or TensorFlow)
        progress = (step - warmup) / max(1.0, total - warmup)
        if self.kind == "constant":
            after = zero + 1.0
        elif self.kind == "linear":
            after = xp.maximum(zero, (total - step) / max(1.0, total - warmup))
        else:
            after = xp.maximum(zero, 0.5 * (1.0 + xp.cos(math.pi * progress)))
        if self.warmup_steps == 0:
            return self.base_lr * after
        return self.base_lr * xp.where(step < warmup, step / warmup, after)
