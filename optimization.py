"""Optimizers (sgd, momentum, adam, adamw, mpadamw, lamb, custom) and loss scaling.

Contract shared by every optimizer:
  - `params` is the model's ordered dict `{google_name: tf.Variable}` of float32 master weights.
    Only variables with `trainable=True` get slots and updates.
  - Every piece of optimizer state is a tf.Variable named like the reference's TF1 checkpoints,
    listed in the ordered dict `optimizer.slots {name: tf.Variable}` (created eagerly, so a
    checkpoint can be restored before the first step):
      lamb     `{var}/lamb_m`, `{var}/lamb_v`, `lamb_step_counter` (int32 [1], starts at 1; only
               with use_debiasing or use_nvlamb)
      adamw    `{var}/adam_m`, `{var}/adam_v`, `adam_step_counter` (int32 [1], starts at 1; only
               with use_debiasing); mpadamw the same
      adam     `{var}/Adam`, `{var}/Adam_1`, `beta1_power`, `beta2_power` (TF1 AdamOptimizer)
      momentum `{var}/Momentum` (TF1 MomentumOptimizer); custom the same; sgd none.
  - `apply_gradients(grads, learning_rate)` is traceable once by tf.function. Gradients arrive
    unscaled (loss scale removed) and already reduced over accumulation and replicas, so the
    reference's scale-down factor `f` does not appear here and clipping is at norm 1.0.
  - All arithmetic is float32, which is what the reference's `use_lr_fp32` and
    `increase_optimiser_precision` asked for; both options are accepted and have no effect.
  - Under tf.distribute, build the optimizer inside `strategy.scope()`; slots use
    `VariableAggregation.ONLY_FIRST_REPLICA` so an update in replica context is legal (every
    replica computes the same update from the same reduced gradients).

Non-finite gradients: the global-norm clip (adamw, mpadamw, lamb with use_mpclip) turns every
gradient into NaN when the norm is not finite, as the reference did; applying that step writes NaN
into weights and moments. The training loop computes the global norm once, skips the step when it
is not finite (e.g. through `DynamicLossScale.update`) and passes it to `apply_gradients(...,
norm)`; `all_finite(grads)` is the element-wise check for callers without a norm.
"""

import contextlib
import re
from collections import OrderedDict

import tensorflow as tf

from common.errors import UserError
from lr_schedules.custom import PiecewiseConstant

OPTIMIZER_NAMES = ("sgd", "momentum", "adam", "adamw", "mpadamw", "lamb", "custom")

# Regexes searched in the variable name (reference values).
LAMB_WD_EXCLUDE = ("bias", "beta")
LAMB_WD_EXCLUDE_GROUPBERT = ("bias", "beta", "gamma")
LAMB_ADAPTATION_EXCLUDE = ("bias", "beta", "gamma")
ADAMW_WD_EXCLUDE = ("GroupNorm", "Group_Norm", "LayerNorm", "Layer_Norm", "bias")
# GPT-2 (the reference's parameter groups): every 1-D tensor is exempt, i.e. the biases and the
# LayerNorm scales (Hugging Face names "ln_1", "ln_2", "ln_f").
WD_EXCLUDE_1D = ("/bias$", "/ln_[^/]+/weight$")

# NVLAMB divides gradients by max(global norm, this); mp-clip clips the global norm to it.
CLIP_NORM = 1.0


def _matches(name, patterns):
    return any(re.search(pattern, name) for pattern in patterns)


def euclidean_norm(x, axis=None, xla=False):
    """Euclidean norm of `x` over `axis` (None: all of it). Outside XLA one reduction kernel
    (EuclideanNorm: no squared copy of x); XLA has no such kernel: there, sqrt(sum(x * x)), which
    it fuses anyway. `xla`: whether the calling function is XLA-compiled."""
    if xla:
        return tf.sqrt(tf.reduce_sum(tf.square(x), axis))
    return tf.math.reduce_euclidean_norm(x, axis)


def global_norm(tensors, xla=False):
    """sqrt(sum of squares of every element of every tensor), as a tf.float32 scalar.
    `xla`: whether the calling function is XLA-compiled (see `euclidean_norm`). A tensor whose own norm
    overflows float32 gives inf, as the sum of squares would."""
    with tf.name_scope("global_norm"):
        norms = [euclidean_norm(tf.cast(t, tf.float32), xla=xla) for t in tensors]
        return tf.sqrt(tf.add_n([tf.square(n) for n in norms])) if norms else tf.constant(0.0)


def clip_by_global_norm(tensors, clip_norm=CLIP_NORM, norm=None):
    """Scale all tensors by `clip_norm / max(norm, clip_norm)`; NaN if the norm is not finite.
    `norm`: their global norm when the caller has it already.

    Returns:
      (list of clipped tensors, float32 global norm before clipping).
    """
    if norm is None:
        norm = global_norm(tensors)
    scale = tf.where(tf.math.is_finite(norm), clip_norm / tf.maximum(norm, clip_norm), float("nan"))
    return [t * tf.cast(scale, t.dtype) for t in tensors], norm


def all_finite(grads):
    """tf.bool scalar: True iff no gradient holds an inf or a NaN.

    Args:
      grads: dict {name: tensor} or list of tensors; None entries are ignored.
    """
    values = grads.values() if isinstance(grads, dict) else grads
    checks = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(g))) for g in values if g is not None
    ]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def fused_kernels_apply(var):
    """Whether TF's fused update kernels (ResourceApplyAdam, ResourceApplyMomentum,
    ResourceApplyGradientDescent) can update `var` in place: a plain variable, not one of a
    tf.distribute strategy's mirrored variables (those take updates through their assign)."""
    return not isinstance(var, tf.distribute.DistributedValues)


def _safe_ratio(w_norm, u_norm):
    """Trust ratio ||w|| / ||u||, or 1 where either norm is 0 (no upper clip, as the reference)."""
    ratio = tf.where(u_norm > 0, w_norm / tf.where(u_norm > 0, u_norm, 1.0), 1.0)
    return tf.where(w_norm > 0, ratio, 1.0)


class Optimizer:
    """Base class: slot bookkeeping, gradient intake, optional global-norm clipping.

    Args:
      params: ordered dict {name: tf.Variable}.
      clip_norm: if not None, gradients are clipped to this global norm before the update.

    Attributes:
      xla: whether `apply_gradients` runs in an XLA-compiled function (picks how norms are
        computed, see `euclidean_norm`; default False). `make_optimizer` sets it.
    """

    name = None
    xla = False

    def __init__(self, params, clip_norm=None):
        self.params = OrderedDict(params)
        self.train_names = [n for n, v in self.params.items() if v.trainable]
        self.clip_norm = clip_norm
        # Pipeline stages put variables on several devices: then each variable's slots and update
        # stay on its device. (Under a tf.distribute strategy, variables are its own.)
        devices = {v.device for v in self.params.values() if isinstance(v, tf.Variable)}
        self._spread = len(devices) > 1 and not tf.distribute.has_strategy()
        self.slots = OrderedDict()
        self._create_slots()

    def _on_device(self, var):
        return tf.device(var.device) if self._spread else contextlib.nullcontext()

    def _per_variable(self, grads):
        """(name, gradient, variable) of each update, run on the variable's device."""
        for name, g in grads.items():
            var = self.params[name]
            with self._on_device(var):
                yield name, g, var

    def _create_slots(self):
        """Subclasses create their state here with `_add_slot`."""

    def _add_slot(self, name, shape, dtype=tf.float32, initial=0):
        if name in self.slots:
            raise ValueError(f"optimizer slot {name} created twice")
        owner = self.params.get(name.rsplit("/", 1)[0])
        with self._on_device(owner) if owner is not None else contextlib.nullcontext():
            self.slots[name] = tf.Variable(
                tf.fill(tf.TensorShape(shape).as_list(), tf.constant(initial, dtype)),
                name=name,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        return self.slots[name]

    def _gradients_by_name(self, grads):
        if isinstance(grads, dict):
            unknown = sorted(set(grads) - set(self.train_names))
            if unknown:
                raise ValueError(f"gradients for unknown or non-trainable variables: {unknown}")
            pairs = [(n, grads.get(n)) for n in self.train_names]
        else:
            grads = list(grads)
            if len(grads) == len(self.params):
                pairs = [(n, g) for n, g in zip(self.params, grads) if n in self.train_names]
            elif len(grads) == len(self.train_names):
                pairs = list(zip(self.train_names, grads))
            else:
                raise ValueError(
                    f"{len(grads)} gradients for {len(self.params)} variables "
                    f"({len(self.train_names)} trainable)"
                )
        # A None gradient (variable unused by the loss) means no update, as in TF1.
        return OrderedDict(
            (n, tf.cast(tf.convert_to_tensor(g), tf.float32)) for n, g in pairs if g is not None
        )

    def apply_gradients(self, grads, learning_rate, norm=None):
        """Update the weights in place.

        Args:
          grads: dict {name: tensor} (missing or None = no gradient) or a list aligned with
            `params` (or with the trainable names). Any float dtype; IndexedSlices are densified.
          learning_rate: float32 scalar tensor (or Python float).
          norm: their global norm when the caller has it already (saves a pass over them).

        Returns:
          tf.float32 scalar: global norm of the gradients as received (before any clipping).
        """
        grads = self._gradients_by_name(grads)
        if norm is None:
            norm = global_norm(list(grads.values()), self.xla)
        seen_norm = norm
        if self.clip_norm is not None:
            clipped, _ = clip_by_global_norm(list(grads.values()), self.clip_norm, norm)
            grads = OrderedDict(zip(grads, clipped))
            seen_norm = norm * (self.clip_norm / tf.maximum(norm, self.clip_norm))
        self._update(grads, tf.cast(learning_rate, tf.float32), seen_norm)
        return norm

    def _update(self, grads, lr, grad_norm):
        """Apply one step. grads: OrderedDict {name: float32 tensor}; grad_norm: their norm."""
        raise NotImplementedError

    def _step_value(self, counter):
        # Counters are int32 [1] variables, as in the reference checkpoints.
        return tf.cast(counter[0], tf.float32)

    @staticmethod
    def _apply_adam(var, m, v, powers, lr, beta1, beta2, epsilon, g):
        """m, v <- Adam moments of g; var <- var - lr_t * m / (sqrt(v) + epsilon), lr_t = lr *
        sqrt(1 - powers[1]) / (1 - powers[0]). One fused kernel (three passes, no temporaries) on
        plain variables; the same arithmetic in separate ops on a strategy's mirrored variables,
        which take updates through their own assign.
        """
        if fused_kernels_apply(var):
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, beta1_power=powers[0],
                beta2_power=powers[1], lr=lr, beta1=beta1, beta2=beta2, epsilon=epsilon, grad=g,
            )  # fmt: skip
            return
        new_m = m + (g - m) * (1.0 - beta1)
        new_v = v + (tf.square(g) - v) * (1.0 - beta2)
        m.assign(new_m)
        v.assign(new_v)
        lr_t = lr * tf.sqrt(1.0 - powers[1]) / (1.0 - powers[0])
        var.assign_sub(lr_t * new_m / (tf.sqrt(new_v) + epsilon))


class SGD(Optimizer):
    """w <- w - lr * g (TF1 GradientDescentOptimizer)."""

    name = "sgd"

    def _update(self, grads, lr, grad_norm):
        for _, g, var in self._per_variable(grads):
            if fused_kernels_apply(var):
                tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=g)
            else:
                var.assign_sub(lr * g)


class Momentum(Optimizer):
    """TF1 MomentumOptimizer (no Nesterov): accum <- momentum * accum + g; w <- w - lr * accum.

    Args:
      params: ordered dict {name: tf.Variable}.
      momentum: momentum coefficient (reference default 0.984375).
    """

    name = "momentum"

    def __init__(self, params, momentum):
        self.momentum = float(momentum)
        super().__init__(params)

    def _create_slots(self):
        for n in self.train_names:
            self._add_slot(f"{n}/Momentum", self.params[n].shape)

    def _factors(self, name):
        """(learning-rate factor, momentum) for a variable; uniform here, per stage in custom."""
        return 1.0, self.momentum

    def _update(self, grads, lr, grad_norm):
        for name, g, var in self._per_variable(grads):
            accum = self.slots[f"{name}/Momentum"]
            lr_factor, momentum = self._factors(name)
            if fused_kernels_apply(var):
                tf.raw_ops.ResourceApplyMomentum(
                    var=var.handle, accum=accum.handle, lr=lr * lr_factor, grad=g,
                    momentum=tf.constant(momentum, tf.float32),
                )  # fmt: skip
                continue
            new_accum = momentum * accum + g
            accum.assign(new_accum)
            var.assign_sub(lr * lr_factor * new_accum)


class StageMomentum(Momentum):
    """The reference's `custom` optimizer: momentum with per-stage learning rate and momentum.

    Stages: 0 = embeddings (name contains "embeddings"), i + 1 = `layer_i`, last = everything
    else (heads: squad, pooler, cls, glue...). With K the last stage index, stage k uses
    `lr * (0.2 + 0.8 k / K)` and `momentum * (0.2 + 0.8 k / K)`. The reference hard-coded 14
    stages for 12 layers (K = 13), which is what this gives for 12 layers; it crashed on names
    outside those groups, which here join the head stage.
    """

    name = "custom"

    def __init__(self, params, momentum):
        trainable = [n for n, v in params.items() if v.trainable]
        layers = [int(m.group(1)) for m in map(re.compile(r"layer_(\d+)").search, trainable) if m]
        self.last_stage = max(layers, default=-1) + 2
        self.stage = {n: self._stage_of(n) for n in trainable}
        super().__init__(params, momentum)

    def _stage_of(self, name):
        if "embeddings" in name:
            return 0
        match = re.search(r"layer_(\d+)", name)
        if "squad" in name or match is None:
            return self.last_stage
        return int(match.group(1)) + 1

    def _factors(self, name):
        scale = 0.2 + self.stage[name] * (1.0 - 0.2) / self.last_stage
        return scale, self.momentum * scale


class Adam(Optimizer):
    """TF1 AdamOptimizer: bias correction folded into the learning rate, epsilon outside it.

    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t); m, v standard moments;
    w <- w - lr_t * m / (sqrt(v) + epsilon). beta1_power / beta2_power hold beta^t.
    """

    name = "adam"

    def __init__(self, params, beta1, beta2, epsilon):
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        super().__init__(params)

    def _create_slots(self):
        for n in self.train_names:
            self._add_slot(f"{n}/Adam", self.params[n].shape)
            self._add_slot(f"{n}/Adam_1", self.params[n].shape)
        self.beta1_power = self._add_slot("beta1_power", [], initial=self.beta1)
        self.beta2_power = self._add_slot("beta2_power", [], initial=self.beta2)

    def _update(self, grads, lr, grad_norm):
        b1, b2 = self.beta1, self.beta2
        b1_power, b2_power = self.beta1_power.read_value(), self.beta2_power.read_value()
        for name, g, var in self._per_variable(grads):
            m, v = self.slots[f"{name}/Adam"], self.slots[f"{name}/Adam_1"]
            self._apply_adam(var, m, v, (b1_power, b2_power), lr, b1, b2, self.epsilon, g)
        self.beta1_power.assign(b1_power * b1)
        self.beta2_power.assign(b2_power * b2)


class AdamW(Optimizer):
    """BERT-style AdamW (the reference's AdamWeightDecayOptimizer), clipped at norm `clip_norm`
    (1.0, the reference's; GPT-2 passes None: its AdamW does not clip).

    u = m / (sqrt(v) + epsilon) + wd * w (no wd for names matching `wd_exclude`, by default
    GroupNorm, Group_Norm, LayerNorm, Layer_Norm, bias); w <- w - lr * u * c. With use_debiasing,
    c = sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) with the counter t starting at 1 (so the first
    step uses power 2, and c also scales the weight-decay term: reference quirks, kept);
    otherwise c = 1. The moments themselves are never bias-corrected. Computed as
    w <- w - lr c wd w, then TF's fused Adam kernel (ResourceApplyAdam: moments and the rest of
    the step in three passes) with c as its bias correction.

    `mpadamw` is accepted as this same optimizer: the reference kept m in float16 only to save IPU
    memory, working on loss-scaled gradients; with unscaled gradients a float16 m would underflow,
    so both moments stay float32 here.
    """

    name = "adamw"

    def __init__(
        self,
        params,
        beta1,
        beta2,
        epsilon,
        weight_decay_rate,
        use_debiasing,
        wd_exclude=ADAMW_WD_EXCLUDE,
        clip_norm=CLIP_NORM,
    ):
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.weight_decay_rate = float(weight_decay_rate)
        self.use_debiasing = bool(use_debiasing)
        self.wd_exclude = tuple(wd_exclude)
        super().__init__(params, clip_norm=clip_norm)

    def _create_slots(self):
        for n in self.train_names:
            self._add_slot(f"{n}/adam_m", self.params[n].shape)
            self._add_slot(f"{n}/adam_v", self.params[n].shape)
        self.counter = None
        if self.use_debiasing:
            self.counter = self._add_slot("adam_step_counter", [1], tf.int32, initial=1)

    def _update(self, grads, lr, grad_norm):
        b1, b2 = self.beta1, self.beta2
        # c as Adam's bias correction: powers 0 give c = 1.
        powers = (tf.constant(0.0), tf.constant(0.0))
        if self.counter is not None:
            t = self._step_value(self.counter) + 1.0
            powers = (tf.pow(b1, t), tf.pow(b2, t))
        # w - lr c (a + wd w) as (w - lr c wd w) - lr c a: the decay reads w first.
        decay = lr * self.weight_decay_rate * tf.sqrt(1.0 - powers[1]) / (1.0 - powers[0])
        for name, g, var in self._per_variable(grads):
            m, v = self.slots[f"{name}/adam_m"], self.slots[f"{name}/adam_v"]
            if self.weight_decay_rate and not _matches(name, self.wd_exclude):
                var.assign_sub(var * decay)
            self._apply_adam(var, m, v, powers, lr, b1, b2, self.epsilon, g)
        if self.counter is not None:
            self.counter.assign_add([1])


class Lamb(Optimizer):
    """LAMB as in the reference (NVIDIA-derived LAMBOptimizer), all in float32.

    Per variable: g (times 1 / max(global norm, 1) with use_nvlamb); m, v standard moments;
    with use_debiasing m^ = m / (1 - beta1^t), v^ = v / (1 - beta2^t), t = lamb_step_counter
    starting at 1, else m^ = m, v^ = v; u = m^ / (sqrt(v^) + epsilon) + wd * w (the reference's
    |v^| is v^, as v >= 0) unless the name matches `wd_exclude`; trust ratio r = ||w|| / ||u|| (1
    if either is 0, no upper clip) except r = 1 for names matching bias/beta/gamma;
    w <- w - lr * r * u. A fused `...qkv...` [H, 3H] kernel gets one ratio per Q, K and V column
    block.

    Args:
      params: ordered dict {name: tf.Variable}.
      beta1, beta2, epsilon, weight_decay_rate: floats.
      use_debiasing, use_nvlamb: bools (the counter exists if either is set, as in the reference).
      wd_exclude: regexes exempt from weight decay (GroupBERT adds "gamma").
      use_mpclip: clip the global gradient norm at 1.0 before everything else.
    """

    name = "lamb"

    def __init__(
        self,
        params,
        beta1,
        beta2,
        epsilon,
        weight_decay_rate,
        use_debiasing,
        use_nvlamb,
        wd_exclude=LAMB_WD_EXCLUDE,
        use_mpclip=False,
    ):
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.weight_decay_rate = float(weight_decay_rate)
        self.use_debiasing, self.use_nvlamb = bool(use_debiasing), bool(use_nvlamb)
        self.wd_exclude = tuple(wd_exclude)
        super().__init__(params, clip_norm=CLIP_NORM if use_mpclip else None)

    def _create_slots(self):
        for n in self.train_names:
            self._add_slot(f"{n}/lamb_m", self.params[n].shape)
            self._add_slot(f"{n}/lamb_v", self.params[n].shape)
        self.counter = None
        if self.use_debiasing or self.use_nvlamb:
            self.counter = self._add_slot("lamb_step_counter", [1], tf.int32, initial=1)

    @staticmethod
    def _is_fused_qkv(name, shape):
        return "qkv" in name and shape.rank == 2 and shape[1] == 3 * shape[0]

    def _trust_ratio(self, name, w, u):
        """r broadcastable to w's shape: a scalar, or [1, 3H] for a fused qkv kernel."""

        def norm(x, axis=None):
            return euclidean_norm(x, axis, self.xla)

        if not self._is_fused_qkv(name, w.shape):
            return _safe_ratio(norm(w), norm(u))
        hidden = w.shape[0]
        # [H, 3H] -> [H, 3, H]: index 1 selects the Q, K or V column block.
        w_blocks = tf.reshape(w, [hidden, 3, hidden])
        u_blocks = tf.reshape(u, [hidden, 3, hidden])
        ratio = _safe_ratio(norm(w_blocks, axis=[0, 2]), norm(u_blocks, axis=[0, 2]))  # [3]
        return tf.repeat(ratio, hidden)[tf.newaxis, :]  # [1, 3H], block k repeated H times

    def _update(self, grads, lr, grad_norm):
        b1, b2 = self.beta1, self.beta2
        if self.use_nvlamb:
            grad_scale = 1.0 / tf.maximum(grad_norm, CLIP_NORM)
        if self.use_debiasing:
            t = self._step_value(self.counter)
            m_correction, v_correction = 1.0 - tf.pow(b1, t), 1.0 - tf.pow(b2, t)
        for name, g, var in self._per_variable(grads):
            m, v = self.slots[f"{name}/lamb_m"], self.slots[f"{name}/lamb_v"]
            if self.use_nvlamb:
                g = g * grad_scale
            new_m = b1 * m + (1.0 - b1) * g
            new_v = b2 * v + (1.0 - b2) * tf.square(g)
            m.assign(new_m)
            v.assign(new_v)
            if self.use_debiasing:
                new_m, new_v = new_m / m_correction, new_v / v_correction
            # v >= 0 by construction, so the reference's |v| is v (one pass less).
            update = new_m / (tf.sqrt(new_v) + self.epsilon)
            w = var.read_value()
            if self.weight_decay_rate and not _matches(name, self.wd_exclude):
                update += self.weight_decay_rate * w
            # ratio * (lr * u), the reference's order: folding lr into the ratio first saves a
            # pass but changes the rounding, enough to move the Quick start's NSP accuracy.
            step = lr * update
            if not _matches(name, LAMB_ADAPTATION_EXCLUDE):
                step = self._trust_ratio(name, w, update) * step
            var.assign_sub(step)
        if self.counter is not None:
            self.counter.assign_add([1])


def make_optimizer(settings, params, wd_exclude=None, clip_norm=CLIP_NORM, xla=False):
    """Build the optimizer named by `settings.optimizer` over `params`.

    Args:
      settings: the run's optimizer settings (`RunConfig.optimizer`, or any object with the
        attributes optimizer, momentum, beta1, beta2, epsilon, weight_decay_rate, use_debiasing,
        use_nvlamb, use_mpclip); their defaults live in the options schema only.
      params: ordered dict {name: tf.Variable} of the model.
      wd_exclude: regexes of names exempt from weight decay in AdamW and LAMB (default
        ADAMW_WD_EXCLUDE and LAMB_WD_EXCLUDE; GroupBERT passes LAMB_WD_EXCLUDE_GROUPBERT, GPT-2
        WD_EXCLUDE_1D).
      clip_norm: AdamW's global-norm clip (None: none).
      xla: whether its updates run in an XLA-compiled function (`Optimizer.xla`).

    Returns:
      An Optimizer with `apply_gradients(grads, learning_rate)` and `slots`.

    Raises:
      UserError: unknown optimizer name.
    """
    optimizer = _by_name(settings, params, wd_exclude, clip_norm)
    optimizer.xla = bool(xla)
    return optimizer


def _by_name(s, params, wd_exclude, clip_norm):
    name = str(s.optimizer).lower()
    if name == "sgd":
        return SGD(params)
    if name == "momentum":
        return Momentum(params, s.momentum)
    if name == "custom":
        return StageMomentum(params, s.momentum)
    adam_args = (params, s.beta1, s.beta2, s.epsilon)
    if name == "adam":
        return Adam(*adam_args)
    if name in ("adamw", "mpadamw"):
        return AdamW(
            *adam_args,
            s.weight_decay_rate,
            s.use_debiasing,
            wd_exclude or ADAMW_WD_EXCLUDE,
            clip_norm,
        )
    if name == "lamb":
        return Lamb(
            *adam_args,
            s.weight_decay_rate,
            s.use_debiasing,
            s.use_nvlamb,
            wd_exclude or LAMB_WD_EXCLUDE,
            use_mpclip=s.use_mpclip,
        )
    raise UserError(
        f"optimizer: unknown optimizer {s.optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}"
    )


class LossScalingScheduler:
    """Static loss scale, optionally changing by step (the reference's loss_scaling_schedule).

    Args:
      base: the scale when `by_step` is empty (`loss_scaling`, > 0).
      by_step: optional dict {step: scale} (`loss_scaling_by_step`; keys may be JSON strings):
        the scale is the value of the largest key <= step. It must have a key <= 0.

    Raises:
      UserError: non-positive scale, bad key or value, or no key <= 0.
    """

    def __init__(self, base, by_step=None):
        if isinstance(base, bool) or not isinstance(base, int | float) or base <= 0:
            raise UserError(f"loss_scaling: {base!r} is not a positive number")
        self.base = float(base)
        self.table = (
            PiecewiseConstant(by_step, "loss_scaling_by_step", positive=True) if by_step else None
        )

    def get_at_step(self, step):
        """Loss scale at `step` as a Python float."""
        return self.table.get_at_step(step) if self.table else self.base

    def tf_at_step(self, step):
        """Graph-side twin of `get_at_step` (tf.float32 scalar) for a scalar step tensor."""
        return self.table.tf_at_step(step) if self.table else tf.constant(self.base, tf.float32)


class DynamicLossScale(tf.Module):
    """Overflow-driven loss scale for float16 training (not in the reference, which ran IPUs).

    After each step call `update(finite)` (finite: the gradients' global norm is): a finite
    step counts as good and every `growth_interval` good steps the scale is multiplied by
    `growth_factor` (up to `max_scale`); a non-finite step multiplies it by `backoff_factor` (not
    below `min_scale`), resets the good count and increments `skipped_steps`. The caller must not apply a skipped step.

    State (tf.Variables, listed in `state` for checkpoints): `loss_scale` (float32),
    `loss_scale/good_steps` and `loss_scale/skipped_steps` (int64).
    """

    def __init__(
        self,
        initial_scale=2.0**15,
        growth_interval=2000,
        growth_factor=2.0,
        backoff_factor=0.5,
        min_scale=1.0,
        max_scale=2.0**24,
    ):
        super().__init__(name="dynamic_loss_scale")
        if not (0 < min_scale <= initial_scale <= max_scale and growth_interval >= 1):
            raise ValueError(
                "need 0 < min_scale <= initial_scale <= max_scale, growth_interval >= 1"
            )
        if not (growth_factor >= 1.0 and 0.0 < backoff_factor <= 1.0):
            raise ValueError("need growth_factor >= 1 and 0 < backoff_factor <= 1")
        self.growth_interval = int(growth_interval)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        kwargs = {"trainable": False, "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
        self.loss_scale = tf.Variable(float(initial_scale), name="loss_scale", **kwargs)
        self.good_steps = tf.Variable(
            tf.constant(0, tf.int64), name="loss_scale/good_steps", **kwargs
        )
        self.skipped_steps = tf.Variable(
            tf.constant(0, tf.int64), name="loss_scale/skipped_steps", **kwargs
        )

    @property
    def state(self):
        """Ordered dict {checkpoint name: tf.Variable}."""
        return OrderedDict(
            [
                ("loss_scale", self.loss_scale),
                ("loss_scale/good_steps", self.good_steps),
                ("loss_scale/skipped_steps", self.skipped_steps),
            ]
        )

    def update(self, grads_are_finite):
        """Advance the state after one step.

        Args:
          grads_are_finite: tf.bool scalar (e.g. `tf.math.is_finite(global_norm(grads))`).

        Returns:
          tf.bool scalar: whether to apply this step (= grads_are_finite).
        """
        finite = tf.convert_to_tensor(grads_are_finite, tf.bool)
        good = tf.where(finite, self.good_steps + 1, tf.constant(0, tf.int64))
        grow = good >= self.growth_interval
        scale = self.loss_scale.read_value()
        grown = tf.where(grow, tf.minimum(scale * self.growth_factor, self.max_scale), scale)
        backed_off = tf.maximum(scale * self.backoff_factor, self.min_scale)
        self.loss_scale.assign(tf.where(finite, grown, backed_off))
        self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), good))
        self.skipped_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        return finite
