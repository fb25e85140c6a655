"""Piecewise-constant values from a `{step: value}` table (the reference's `custom` schedule).

The same table logic serves `loss_scaling_by_step` (see optimization.LossScalingScheduler).
"""

import bisect
import json
import numbers

from common.errors import UserError

from .base import Schedule


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class PiecewiseConstant(Schedule):
    """Value of the largest key <= step.

    Args:
      table: dict `{step: value}`; keys may be JSON strings ("100") or ints; a JSON object string
        is also accepted. A key <= 0 must exist, so every step has a value (the reference crashed
        on `min()` of an empty dict instead).
      option: name of the option the table came from, used in error messages.
      positive: require every value > 0 (loss scales).

    Raises:
      UserError: a non-integer key, a non-numeric value, or no key <= 0.
    """

    def __init__(self, table, option, positive=False):
        if isinstance(table, str):
            try:
                table = json.loads(table)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{option}: not a JSON object ({err}); write e.g. '{{\"0\": 1}}'"
                ) from None
        if not isinstance(table, dict) or not table:
            raise UserError(f'{option}: expected a non-empty {{step: value}} dict, e.g. {{"0": 1}}')
        entries = {}
        for key, value in table.items():
            try:
                step = int(key)
            except (TypeError, ValueError):
                step = None
            if step is None or isinstance(key, bool) or (_is_number(key) and step != key):
                raise UserError(f"{option}: key {key!r} is not an integer step")
            if not _is_number(value) or (positive and value <= 0):
                kind = "a positive number" if positive else "a number"
                raise UserError(f"{option}: value {value!r} at step {key!r} is not {kind}")
            entries[step] = float(value)
        if min(entries) > 0:
            raise UserError(
                f"{option}: no entry for step 0 (first key is {min(entries)}); "
                f'add "0": <value> so that every step has a value'
            )
        self.steps = sorted(entries)
        self.values = [entries[s] for s in self.steps]

    def get_at_step(self, step):
        index = max(bisect.bisect_right(self.steps, int(step)) - 1, 0)
        return self.values[index]

    def tf_at_step(self, step):
        import tensorflow as tf

        keys = tf.constant(self.steps, tf.int64)
        below = tf.reduce_sum(tf.cast(keys <= tf.cast(step, tf.int64), tf.int32))
        index = tf.maximum(below - 1, 0)
        return tf.cast(tf.gather(tf.constant(self.values, tf.float64), index), tf.float32)
