"""The one training loop every script shares: strategy, accumulation, checkpoints, logging.

A task builds a model (a `tf.Module` with a `params` dict of Google-named variables, already
initialised: loading a checkpoint happens before the loop), a loss function
`(model, features, training, dropout_seed, compute_dtype) -> {"loss": ..., metrics...}` and a tf.data
dataset whose elements are one optimizer step: tensors [GA, micro_batch, ...]. `Trainer` holds the
optimizer and builds the compiled step: `device_iterations` optimizer steps (each: all GA
micro-batches, gradient reduction, loss scaling, the update) in one `tf.function`, traced once and
XLA-compiled when `xla` is on, under a `tf.distribute` strategy. `train()` runs it, logs, evaluates,
checkpoints, and returns a `TrainResult`.

The loop reads the run's settings from a typed config (`options.RunConfig`, passed in; this module does
not import options) and restores only its own native checkpoints (`--restore-dir`).

Determinism and resume: dropout masks come from stateless RNG seeded by (seed, step, micro-batch), the
data order from seeded tf.data ops whose iterator state is checkpointed, so a run resumed from
`ckpt-N` continues the exact trajectory of the uninterrupted run.

Damaged input (a TFRecord cut short or failing a checksum, noted by the readers of
common/tfrecords.py): the loop saves the last completed step through the usual checkpoints (data
position included) and stops with one line naming the file and byte; with skip_corrupt_records it
goes on without the rest of that file and reports what was skipped.
"""

import dataclasses
import datetime
import os
import re
import shutil
import signal
import tempfile
import time

import tensorflow as tf

import checkpoints
import lr_schedules
import modeling_ops as ops
import optimization
import runlog
from common import cluster
from common.errors import UserError

DEFAULT_DYNAMIC_SCALE = 2.0**15  # initial dynamic loss scale when loss_scaling is not set


def make_strategy(replicas, collective_timeout=None, placement=None):
    """The data-parallel strategy of this process.

    With pipeline stages (`placement`, a `pipeline.Placement`): the default strategy, one
    replica, after naming the stage devices (GPUs, or the CPU split into logical devices);
    --replicas > 1 or several workers are refused with one line.

    Alone: the default strategy for one replica; MirroredStrategy over GPUs, or over logical CPUs
    when the machine has no GPU (data parallelism that runs anywhere, e.g. to test it).
    One of several workers (TF_CONFIG or Slurm, `common.cluster`): MultiWorkerMirroredStrategy over
    this worker's GPUs (all visible ones, `replicas` of them) or its CPU (one replica), collectives
    by NCCL on GPUs and RING on CPUs, each bounded by `collective_timeout` seconds.
    """
    found = cluster.current()
    if placement is not None:
        import pipeline

        pipeline.check_alone(placement, replicas, found.workers if found else 1)
        n = placement.num_devices
        placement.names = local_devices(
            n, f"pipeline stages on {n} devices", "map the stages onto fewer, or drop the mapping"
        )
        return tf.distribute.get_strategy()
    if found is not None:
        return _multi_worker_strategy(found, replicas, collective_timeout)
    if replicas <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(local_devices(replicas, f"--replicas {replicas}"))


def local_devices(n, what, hint=None):
    """Names of n devices of this process: its GPUs when it has any, else the CPU split into n
    logical devices (before TensorFlow starts). `what` (and `hint`) word the one-line error when
    the machine has fewer GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and len(gpus) < n:
        raise UserError(
            f"{what} needs {n} GPUs; this machine has {len(gpus)}" + (f": {hint}" if hint else "")
        )
    if not gpus:
        split_cpu(n, what)
    kind = "GPU" if gpus else "CPU"
    return [d.name for d in tf.config.list_logical_devices(kind)[:n]]


def _multi_worker_strategy(found, replicas, collective_timeout):
    gpus = tf.config.list_physical_devices("GPU")
    if replicas != (len(gpus) or 1):  # every visible GPU, or the CPU as one replica
        where = f"{len(gpus)} visible GPUs" if gpus else "no GPU (one CPU replica per worker)"
        raise UserError(
            f"--replicas {replicas} per worker, but this worker ({found.source} task "
            f"{found.index}) has {where}: set --replicas to that, or CUDA_VISIBLE_DEVICES"
        )
    comm = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=comm.NCCL if gpus else comm.RING, timeout_seconds=collective_timeout
    )
    resolver = (
        tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if found.source == "TF_CONFIG"
        else tf.distribute.cluster_resolver.SlurmClusterResolver()
    )
    return tf.distribute.MultiWorkerMirroredStrategy(resolver, communication_options=options)


def split_cpu(n, what):
    """Expose the CPU as n logical devices (data parallelism or pipeline stages without GPUs);
    `what` names the setting in the error when TensorFlow has already started."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError:
        raise UserError(
            f"{what} on CPU must be set before TensorFlow starts (it has already)"
        ) from None


def measured_peak_flops(dtype, seconds=0.5):
    """Matmul FLOP/s of this machine in `dtype` (a 2048-square product, best of a short loop)."""
    n = 2048
    a = tf.random.stateless_normal([n, n], [1, 2], dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[0, :1], tf.float32)))
    product(a).numpy()
    best, start = 0.0, time.time()
    while time.time() - start < seconds:
        t = time.perf_counter()
        product(a).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def compiles_with_xla(loop, strategy, placement=None):
    """Whether the training step is XLA-compiled: `xla` on, one replica and no pipeline stages
    (XLA compiles for one device; tf.distribute does not compile across devices). Models whose
    ops pick a method by it are told this."""
    return bool(loop.xla) and strategy.num_replicas_in_sync == 1 and placement is None


def new_run_dir(save_path, task, optimizer):
    """`save_path/<task>_<optimizer>_<YYYYmmdd_HHMMSS.mmm>`, the reference's run-directory name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S.%f")[:-3]
    return os.path.join(save_path or "checkpoints", f"{task}_{optimizer}_{stamp}")


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits 0."""

    def __init__(self):
        self.requested = None

    def __enter__(self):
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in self.previous:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Trainer:
    """The optimizer, loss scaling, LR schedule and compiled step of one model and loss.

    Args:
      cfg: the run's typed config (`options.RunConfig`): reads cfg.loop, cfg.optimizer,
        cfg.schedule and cfg.checkpoint.
      strategy: tf.distribute strategy the model was built under.
      model: tf.Module with `params` {name: tf.Variable}.
      loss_fn: (model, features, training, dropout_seed, compute_dtype) -> dict of float32 scalars
        with "loss".
      tokens_fn: optional micro-batch features -> number of real tokens (traced), for tokens/s.
      wd_exclude: weight-decay exclusions (regexes) of AdamW/LAMB, e.g. GroupBERT's or GPT-2's;
        default BERT's.
      clip_norm: AdamW's gradient clip (global norm; None = none), default BERT's 1.0.
    """

    def __init__(
        self,
        cfg,
        strategy,
        model,
        loss_fn,
        tokens_fn=None,
        wd_exclude=None,
        clip_norm=optimization.CLIP_NORM,
    ):
        loop = cfg.loop
        self.loop = loop
        self.tokens_fn = tokens_fn
        self.strategy = strategy
        self.model = model
        self.loss_fn = loss_fn
        self.compute_dtype = tf.as_dtype(loop.compute_dtype)
        self.ga = loop.gradient_accumulation_count
        self.iterations = loop.device_iterations
        self.save_slots = cfg.checkpoint.save_optimiser_to_checkpoint
        fp16 = loop.precision == "16"
        self.placement = getattr(model, "placement", None)
        self.xla = compiles_with_xla(loop, strategy, self.placement)  # the single-replica step
        with strategy.scope():
            self.optimizer = optimization.make_optimizer(
                cfg.optimizer, model.params, wd_exclude, clip_norm, self.xla
            )
            self.global_step = tf.Variable(
                tf.constant(0, tf.int64),
                name="global_step",
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.dynamic = None
            if loop.dynamic_loss_scaling:
                # loss_scaling, when set, is where automatic loss scaling starts.
                initial = loop.loss_scaling if cfg.is_explicit("loss_scaling") else None
                self.dynamic = optimization.DynamicLossScale(initial or DEFAULT_DYNAMIC_SCALE)
        schedule = dataclasses.asdict(cfg.schedule)
        self.schedule = lr_schedules.make_lr_schedule(
            schedule["lr_schedule"], schedule, loop.num_train_steps
        )
        # Static loss scaling only matters for float16; in fp32/bf16 it would be a no-op.
        self.static_scale = optimization.LossScalingScheduler(
            loop.loss_scaling if fp16 else 1.0, loop.loss_scaling_by_step if fp16 else None
        )
        self.train_names = [n for n, v in model.params.items() if v.trainable]
        self.seed = int(loop.seed) % (2**31)
        self._step_fns = {}
        if self.placement is not None:
            print(
                f"pipeline: {len(self.placement.stages)} stages on "
                f"{self.placement.num_devices} devices, {self.ga} micro-batches per step "
                "(GPipe: every micro-batch's stage inputs are kept for the backward)",
                flush=True,
            )
            for line in self.placement.report(model.params, self.optimizer.slots):
                print(line, flush=True)

    @property
    def state(self):
        """Every variable a checkpoint holds, by name."""
        state = dict(self.model.params)
        if self.save_slots:
            state.update(self.optimizer.slots)
        state["global_step"] = self.global_step
        if self.dynamic is not None:
            state.update(self.dynamic.state)
        return state

    @property
    def required_state(self):
        """Names a checkpoint must hold to resume: the weights and the step."""
        return [*self.model.params, "global_step"]

    def _loss_scale(self, step):
        if self.dynamic is not None:
            return self.dynamic.loss_scale.read_value()
        return self.static_scale.tf_at_step(step)

    def _dropout_seed(self, step, index):
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        # Stateless dropout seed: (seed, global micro-batch number, replica) fully determine the masks.
        micro = (step * self.ga + tf.cast(index, tf.int64)) * replicas
        micro += tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64), micro])

    def _forward(self, features, step, index):
        """One training micro-batch's metrics ("loss", ..., and "tokens" when counted)."""
        seed = self._dropout_seed(step, index)
        metrics = self.loss_fn(self.model, features, True, seed, self.compute_dtype)
        if self.tokens_fn is not None:
            metrics["tokens"] = tf.cast(self.tokens_fn(features), tf.float32)
        return metrics

    def _micro(self, features, step, index, scale, names):
        variables = [self.model.params[n] for n in names]
        with tf.GradientTape() as tape:
            metrics = self._forward(features, step, index)
            scaled = metrics["loss"] * scale
        return tape.gradient(scaled, variables), metrics

    def _pipelined(self, batch, step, scale):
        """The GA micro-batches unrolled through the stages (see `pipeline`), so they overlap, and
        one `tf.gradients`, which puts each gradient op on its forward op's device. -> (names,
        summed scaled gradients, summed metrics)."""
        p = self.placement
        variables = [self.model.params[n] for n in self.train_names]
        total, sums = [], {}
        with ops.placed(p), tf.device(p.device("mlm")):
            for i in range(self.ga):
                m = self._forward({k: v[i] for k, v in batch.items()}, step, i)
                total.append(m["loss"] * scale)
                sums = {k: sums[k] + v if k in sums else v for k, v in m.items()}
        names, grads = _used(self.train_names, tf.gradients(tf.add_n(total), variables))
        return names, grads, sums

    def _accumulate(self, batch):
        """Replica context: gradients summed over the GA micro-batches (still loss-scaled)."""
        step = self.global_step.read_value()
        scale = self._loss_scale(step)
        if self.placement is not None:
            names, grads, metrics = self._pipelined(batch, step, scale)
            return self._averaged(names, grads, metrics, scale)
        first = {k: v[0] for k, v in batch.items()}
        grads, metrics = self._micro(first, step, 0, scale, self.train_names)
        names, grads = _used(self.train_names, grads)
        if self.ga > 1:

            def body(i, acc, sums):
                features = {k: v[i] for k, v in batch.items()}
                g, m = self._micro(features, step, i, scale, names)
                acc = [a + tf.convert_to_tensor(b) for a, b in zip(acc, g)]
                return i + 1, acc, {k: sums[k] + m[k] for k in sums}

            _, grads, metrics = tf.while_loop(
                lambda i, *_: i < self.ga, body, (tf.constant(1), grads, metrics)
            )
        return self._averaged(names, grads, metrics, scale)

    def _averaged(self, names, grads, metrics, scale):
        """Sums over the GA micro-batches -> unscaled gradients (mean or sum) and mean metrics."""
        divisor = scale * (self.ga if self.loop.reduction_type == "mean" else 1.0)
        metrics = {k: v if k == "tokens" else v / self.ga for k, v in metrics.items()}
        return names, [g / divisor for g in grads], metrics

    def _apply(self, names, grads, metrics):
        """Unscaled, reduced gradients -> (conditional) update; returns the step's metrics."""
        step = self.global_step.read_value()
        # Finite iff every gradient is (or the square sum overflows): one pass, two uses.
        norm = optimization.global_norm(grads, self.xla)
        finite = tf.logical_and(tf.math.is_finite(norm), tf.math.is_finite(metrics["loss"]))
        scale = self._loss_scale(step)
        apply = self.dynamic.update(finite) if self.dynamic is not None else finite
        lr = self.schedule.tf_at_step(step)
        update = lambda: self.optimizer.apply_gradients(dict(zip(names, grads)), lr, norm)  # noqa: E731
        grad_norm = tf.cond(apply, update, lambda: norm)
        self.global_step.assign_add(1)
        metrics = dict(metrics, learning_rate=lr, loss_scaling=scale, grad_norm=grad_norm)
        metrics["applied"] = tf.cast(apply, tf.float32)
        return metrics

    def _one_step(self, batch, with_grads):
        """One optimizer step on one replica's element (single-replica strategies)."""
        names, grads, metrics = self._accumulate(batch)
        metrics = self._apply(names, grads, metrics)
        return metrics, (dict(zip(names, grads)) if with_grads else {})

    def step_function(self, with_grads=False):
        """The compiled call: `device_iterations` optimizer steps -> (metrics, gradients).

        Its argument is a list of `device_iterations` step inputs (see `train`). It returns
        {name: float32 [device_iterations]} metrics of every step and, with `with_grads`, the last
        step's unscaled reduced gradients {variable name: tensor} (for histograms).

        One replica: the steps are a `tf.while_loop` in one function, XLA-compiled when `xla` is
        on. Several replicas: each accumulates its share in replica context; gradients are reduced
        across replicas (mean, or sum with reduction_type sum) and the update runs once in
        cross-replica context on the mirrored variables (no XLA there: tf.distribute does not
        compile across devices); the steps of one call are unrolled.
        """
        if with_grads in self._step_fns:
            return self._step_fns[with_grads]
        strategy, n = self.strategy, self.iterations
        if strategy.num_replicas_in_sync == 1:

            def single(batches):
                if n == 1:
                    metrics, grads = self._one_step(batches[0], with_grads)
                    return {k: v[tf.newaxis] for k, v in metrics.items()}, grads
                stacked = {k: tf.stack([b[k] for b in batches]) for k in batches[0]}
                return self._iterate(stacked, with_grads)

            fn = tf.function(single, jit_compile=self.xla)
        else:
            fn = tf.function(lambda batches: self._distributed(batches, with_grads))
        self._step_fns[with_grads] = fn
        return fn

    def _iterate(self, stacked, with_grads):
        """`device_iterations` steps in a tf.while_loop over stacked inputs [N, GA, mb, ...]."""
        n = self.iterations
        metrics, grads = self._one_step({k: v[0] for k, v in stacked.items()}, with_grads)
        arrays = {k: tf.TensorArray(v.dtype, size=n).write(0, v) for k, v in metrics.items()}

        def body(i, arrays, grads):
            m, g = self._one_step({k: v[i] for k, v in stacked.items()}, with_grads)
            return i + 1, {k: a.write(i, m[k]) for k, a in arrays.items()}, g

        _, arrays, grads = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(1), arrays, grads))
        return {k: a.stack() for k, a in arrays.items()}, grads

    def _distributed(self, batches, with_grads):
        strategy = self.strategy
        sum_op, mean_op = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
        grad_op = mean_op if self.loop.reduction_type == "mean" else sum_op
        holder, steps, grads = {}, [], {}

        def replica(batch):
            names, g, m = self._accumulate(batch)
            holder["names"] = names
            return g, m

        for batch in batches:
            g, m = strategy.run(replica, args=(batch,))
            g = [strategy.reduce(grad_op, x, axis=None) for x in g]
            m = {
                k: strategy.reduce(sum_op if k == "tokens" else mean_op, v, axis=None)
                for k, v in m.items()
            }
            steps.append(self._apply(holder["names"], g, m))
            grads = dict(zip(holder["names"], g)) if with_grads else {}
        return {k: tf.stack([s[k] for s in steps]) for k in steps[0]}, grads


def _used(names, grads):
    """(names, dense gradients) of the variables the loss uses (not e.g. SQuAD's pooler)."""
    kept = [(n, tf.convert_to_tensor(g)) for n, g in zip(names, grads) if g is not None]
    return [n for n, _ in kept], [g for _, g in kept]


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the last step's metrics (Python floats), the run directory, the
    last evaluation's results (or None), and whether the run stopped early on a signal."""

    metrics: dict
    run_dir: str
    evaluation: dict | None
    stopped: bool


def _format_line(step, epoch, m, samples_per_sec, tokens_per_sec, mfu, elapsed, total):
    parts = [f"step: {step}", f"epoch: {epoch:.4f}", f"lr: {m['learning_rate']:.6g}"]
    for name in ("mlm_loss", "nsp_loss"):
        if name in m:
            parts.append(f"{name}: {m[name]:.5f}")
    if "mlm_loss" not in m:
        parts.append(f"loss: {m['loss']:.5f}")
    if "acc" in m:
        parts.append(f"acc: {m['acc']:.5f}")
    for name in ("mlm_acc", "nsp_acc"):
        if name in m:
            parts.append(f"{name}: {m[name]:.5f} %")
    parts += [
        f"throughput: {samples_per_sec:.2f} samples/sec",
        f"time: {elapsed:.3f}",
        f"total_time: {total:.1f}",
        f"tokens/s: {tokens_per_sec:,.0f}",
        f"mfu: {mfu * 100:.1f} %" if mfu is not None else "mfu: n/a",
    ]
    return ", ".join(parts)


_TAGS = (
    ("mlm_loss", "loss/MLM"),
    ("nsp_loss", "loss/NSP"),
    ("mlm_acc", "accuracy/MLM"),
    ("nsp_acc", "accuracy/NSP"),
    ("loss", "loss/total"),
    ("acc", "accuracy/train"),
    ("learning_rate", "learning_rate"),
    ("loss_scaling", "loss_scaling"),
    ("grad_norm", "grad_norm"),
)


def _step_tags(m):
    return {tag: m[key] for key, tag in _TAGS if key in m}


def _flops_peak(flops_per_sample, trainer, precision, run):
    if not flops_per_sample:
        return None
    peak = measured_peak_flops(trainer.compute_dtype)
    run.log(f"matmul peak of this machine ({precision}): {peak / 1e9:.0f} GFLOP/s")
    return peak


def _restore(cfg, trainer, iterator, run):
    """--restore-dir: exact resume from our own checkpoint (weights, optimizer, step, data)."""
    prefix = checkpoints.resolve(cfg.checkpoint.restore_dir)
    checkpoints.restore(prefix, trainer.state, required=trainer.required_state)
    resumed_data = checkpoints.restore_iterator(prefix, iterator)
    run.log(
        f"resumed from {prefix} at step {int(trainer.global_step.numpy())}"
        + ("" if resumed_data else " (no data position saved: data restarts)")
    )
    return prefix


def train(
    cfg,
    trainer,
    dataset,
    *,
    samples_per_epoch,
    flops_per_sample=None,
    evaluate=None,
    notes=(),
    line_format=None,
    damage=None,
):
    """Runs `cfg.loop.num_train_steps` optimizer steps; returns a `TrainResult`.

    Args:
      cfg: the run's typed config (options.RunConfig).
      trainer: `Trainer` of the (already initialised) model.
      dataset: tf.data.Dataset of one-step elements [GA, micro_batch, ...] (per replica).
      samples_per_epoch: number of distinct samples in one epoch (for the logged epoch).
      flops_per_sample: model FLOPs of one training sequence, for MFU.
      evaluate: optional callable(step) -> {name: float} of held-out metrics; run every
        `steps_per_eval` steps and after the last step.
      notes: lines to log once the run directory exists (e.g. what was loaded before the loop).
      line_format: optional callable(step, epoch, metrics, samples/s, tokens/s, mfu or None,
        step seconds, total seconds) -> the console line (default: BERT's reference line).
      damage: the common.tfrecords.DamageLog of the dataset's (and evaluation's) TFRecord
        readers, if any: damaged files it notes stop the run, or with its `skip` are reported.
    """
    if cfg.loop.compile_only:
        return _compile_only(cfg, trainer, dataset)
    restore_dir = cfg.checkpoint.restore_dir
    run_dir = restore_dir if restore_dir and os.path.isdir(restore_dir) else None
    found = cluster.current()
    if found is not None:
        check_same_run(trainer.strategy, found, cfg.flat())
    helper = found is not None and not found.chief
    if helper:
        # Only the chief writes the run directory, TensorBoard, W&B and checkpoints; the other
        # workers run the same loop (the same steps, saves included) into a temporary directory.
        run_dir = tempfile.mkdtemp(prefix=f"worker-{found.index}-")
    run = runlog.Run(
        run_dir or new_run_dir(cfg.checkpoint.save_path, cfg.task, cfg.optimizer.optimizer),
        wandb=bool(cfg.logging.wandb) and not helper,
        wandb_project=cfg.logging.wandb_project,
        wandb_name=cfg.logging.wandb_name,
        config=cfg.flat(),
    )
    try:
        loop = _Loop(cfg, trainer, dataset, run, samples_per_epoch, evaluate, line_format, damage)
        return loop.run(flops_per_sample, notes)
    except _PEER_ERRORS as err:
        if found is None:
            raise
        raise UserError(_lost_worker_line(err, found, cfg), exit_code=EX_TEMPFAIL) from None
    finally:
        run.close()
        if helper:
            shutil.rmtree(run.dir, ignore_errors=True)


def check_same_run(strategy, found, settings):
    """Every worker compares the digests of its resolved settings and of its code with the chief's
    (one all-gather before anything is written); a difference is one line naming the worker."""
    digests = {"config": cluster.config_digest(settings), "code": cluster.code_digest()}
    mine = [int(d[:15], 16) for d in digests.values()]  # 60 bits of each: fits an int64

    def value(ctx):
        return tf.constant([mine], tf.int64)

    everyone = strategy.gather(strategy.experimental_distribute_values_from_function(value), 0)
    rows = everyone.numpy()  # [replicas, 2]; the replicas of worker k are a consecutive block
    per_worker = len(rows) // found.workers
    for k in range(found.workers):
        for kind, theirs, chief in zip(digests, rows[k * per_worker], rows[0]):
            if theirs != chief:
                raise UserError(
                    f"worker {k} runs with another {kind} than the chief (worker 0): {kind} "
                    f"sha256 prefix {int(theirs):015x} vs {int(chief):015x}; start every worker "
                    f"with the same code and command"
                )


# What a collective raises when a peer worker is gone (connection reset, refused, or no answer
# within collective_timeout).
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)
EX_TEMPFAIL = 75  # os.EX_TEMPFAIL: run the same command again to resume from the last checkpoint


def _lost_worker_line(err, found, cfg):
    tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:(\d+)", err.message)))
    tasks = [t for t in tasks if int(t) != found.index]
    who = f"worker {', '.join(tasks)}" if tasks else "another worker"
    first = err.message.strip().splitlines()[0]
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)
    return (
        f"worker {found.index}: lost {who} ({type(err).__name__}: {first[:160]}; collective "
        f"timeout {cfg.loop.collective_timeout:g} s); the last checkpoint is intact: run the same "
        f"command on every worker with --restore-dir to resume"
    )


class _Loop:
    """One call of `train`: state shared by its steps."""

    def __init__(
        self, cfg, trainer, dataset, run, samples_per_epoch, evaluate, line_format=None, damage=None
    ):
        self.cfg, self.trainer, self.run_log, self.evaluate = cfg, trainer, run, evaluate
        self.format_line = line_format or _format_line
        self.logging = cfg.logging
        self.samples_per_epoch = max(samples_per_epoch, 1)
        self.iterator = iter(dataset)  # a plain iterator: its position goes into every checkpoint
        self.replicas = trainer.strategy.num_replicas_in_sync
        self.evaluation = None
        self.damage = damage
        self.reported = 0  # damages of `damage` already logged (skip_corrupt_records)
        self.saved = None  # (step, prefix) of the newest checkpoint
        self.stop_vote = None
        self.several_workers = cluster.current() is not None  # read once, not at every step

    def _stop_everywhere(self, stop):
        """Several workers: after every call they sum their stop flags (one tiny all-reduce), so a
        signal to any worker stops all of them at the same step boundary, after the same save."""
        if not self.several_workers:
            return
        if self.stop_vote is None:
            strategy = self.trainer.strategy
            sum_op = tf.distribute.ReduceOp.SUM
            self.stop_vote = tf.function(
                lambda flag: strategy.reduce(sum_op, strategy.run(tf.identity, (flag,)), None)
            )
        votes = float(self.stop_vote(tf.constant(1.0 if stop.requested else 0.0)))
        if votes and stop.requested is None:
            stop.requested = "a signal to another worker"

    def next_batches(self):
        """The inputs of one call: `device_iterations` step inputs."""
        trainer, out = self.trainer, []
        for _ in range(trainer.iterations):
            if self.replicas == 1:
                out.append(next(self.iterator))
                continue
            # Each element is one replica's [GA, micro_batch] share; replicas take them in turn.
            shares = [next(self.iterator) for _ in range(self.replicas)]
            out.append(
                trainer.strategy.experimental_distribute_values_from_function(
                    lambda ctx, s=shares: s[ctx.replica_id_in_sync_group]
                )
            )
        return out

    def run(self, flops_per_sample, notes):
        cfg, trainer, run = self.cfg, self.trainer, self.run_log
        loop = cfg.loop
        cfg.save(os.path.join(run.dir, "arguments.json"))
        if hasattr(trainer.model, "config"):
            name = getattr(trainer.model, "config_file", "bert_config.json")
            trainer.model.config.to_json_file(os.path.join(run.dir, name))
        run.log(f"run directory: {run.dir}")
        for line in notes:
            run.log(line)
        if cfg.checkpoint.restore_dir:
            prefix = _restore(cfg, trainer, self.iterator, run)
            self.saved = (int(trainer.global_step.numpy()) - 1, prefix)
        peak = _flops_peak(flops_per_sample, trainer, loop.precision, run)
        total, n = loop.num_train_steps, trainer.iterations
        first = int(trainer.global_step.numpy())
        if first >= total:
            run.log(f"nothing to do: the checkpoint is already at step {first}")
            return TrainResult({}, run.dir, None, False)
        if first % n:
            raise UserError(
                f"the checkpoint is at step {first}, not a multiple of device_iterations {n}: "
                f"resume with the device_iterations the run was started with"
            )
        if n > 1:
            run.log(f"device_iterations {n}: {n} optimizer steps per compiled call")
        start, metrics = time.time(), {}
        from tqdm import tqdm

        bar = tqdm(total=total, initial=first, disable=None, unit="step", leave=False)
        profiler = _Profiler(loop, run.dir)
        with _Stop() as stop:
            for call_start in range(first, total, n):
                self._check_damage()
                last_step = call_start + n - 1
                wants_grads = _due(self.logging.steps_per_tensorboard, call_start, n)
                t = time.time()
                profiler.before(call_start)
                stacked, grads = trainer.step_function(wants_grads)(self.next_batches())
                per_step = [
                    {k: float(v[i]) for k, v in stacked.items()} for i in range(n)
                ]  # host sync: the call is done
                elapsed = time.time() - t
                profiler.after(last_step)
                metrics = per_step[-1]
                self._check_finite(per_step, call_start)
                bar.update(n)
                last = last_step == total - 1
                for i, m in enumerate(per_step):
                    run.scalars(call_start + i, _step_tags(m))
                if _due(self.logging.steps_per_logs, call_start, n) or last:
                    bar.clear()
                    self._log(
                        last_step, metrics, elapsed, time.time() - start, flops_per_sample, peak
                    )
                if wants_grads:
                    self._histograms(last_step, grads)
                if self.evaluate is not None and (
                    _due(self.logging.steps_per_eval, call_start, n, every=True) and not last
                ):
                    self._evaluate(last_step)
                self._stop_everywhere(stop)
                if _due(cfg.checkpoint.steps_per_ckpts, call_start, n) or last or stop.requested:
                    prefix = checkpoints.save(
                        run.dir, last_step, trainer.state, self.iterator, cfg.checkpoint.max_to_keep
                    )
                    self.saved = (last_step, prefix)
                    if stop.requested:
                        run.log(
                            f"{stop.requested}: saved {prefix}; resume with --restore-dir {run.dir}"
                        )
                        break
                _check_skips(trainer, last_step)
        bar.close()
        profiler.close()
        self._check_damage()
        if self.evaluate is not None and not stop.requested:
            self._evaluate(total - 1)
        self._check_damage(summary=True)
        return TrainResult(metrics, run.dir, self.evaluation, bool(stop.requested))

    def _check_damage(self, summary=False):
        """Damaged TFRecords met by the readers since the last check: a line each and, at the end
        (`summary`), one summary line and the counts with skip_corrupt_records; else the run stops.

        It is called between compiled calls, so the step that completed last is clear: a call's
        whole input (device_iterations steps, each with its GA micro-batches, for every replica)
        is taken from the iterator on the host before the call starts, the call is synchronous,
        and the readers never raise (they note the damage and end that file; tf.data reads ahead,
        so the damage is met up to a shuffle buffer before its records would be trained on). So
        weights, optimizer slots, loss scale and global_step are those after the last completed
        call (global_step - 1 is its last step), no update is partly applied, and the iterator
        has given exactly the elements those steps trained on: the checkpoint saved here resumes
        like any other. Its data position is the reader's, which has left the damaged file for
        this pass (even if the file is fixed before resuming; later passes read it whole).
        """
        if self.damage is None:
            return
        if not self.damage.skip and self.damage.damages:
            self._stop(self.damage.damages[0])
        for d in self.damage.damages[self.reported :]:
            self.run_log.log(f"warning: {d.describe()}: skipping the rest of that file")
        self.reported = len(self.damage.damages)
        line = self.damage.summary()
        if summary and line:
            self.run_log.log(line)
            counts = {
                "input/damaged_files": len(self.damage.damages),
                "input/skipped_bytes": sum(d.size - d.offset for d in self.damage.damages),
            }
            self.run_log.scalars(max(int(self.trainer.global_step.numpy()) - 1, 0), counts)

    def _stop(self, damage):
        """Checkpoint the last completed step (unless saved already) and stop in one line."""
        trainer, run = self.trainer, self.run_log
        step = int(trainer.global_step.numpy()) - 1
        then = f"resume from {run.dir}"
        if step < 0:
            saved, then = "no step had completed: nothing saved", "run again"
        else:
            if self.saved is None or self.saved[0] != step:
                prefix = checkpoints.save(
                    run.dir, step, trainer.state, self.iterator, self.cfg.checkpoint.max_to_keep
                )
                self.saved = (step, prefix)
            saved = f"the last completed step {step} is saved as {self.saved[1]}"
        raise UserError(
            f"{damage.describe()}; {saved}; {then} once the file is fixed or removed, or with "
            "--skip-corrupt-records"
        )

    def _check_finite(self, per_step, call_start):
        if self.trainer.dynamic is not None:
            return
        for i, m in enumerate(per_step):
            if not m["applied"]:
                raise UserError(
                    f"loss or gradients are NaN/Inf at step {call_start + i} (loss {m['loss']}); "
                    "the update was not applied and nothing was saved: lower the learning rate, "
                    "check the data, or use precision 32"
                )

    def _log(self, step, m, elapsed, total_time, flops_per_sample, peak):
        trainer, run, gbs = self.trainer, self.run_log, self.cfg.loop.global_batch_size
        n = trainer.iterations
        sps = gbs * n / elapsed
        tps = m.get("tokens", 0.0) / (elapsed / n)
        mfu = sps * flops_per_sample / peak if peak else None
        epoch = (step + 1) * gbs / self.samples_per_epoch
        skipped = int(trainer.dynamic.skipped_steps.numpy()) if trainer.dynamic else 0
        line = self.format_line(step, epoch, m, sps, tps, mfu, elapsed, total_time)
        if trainer.dynamic is not None:
            line += f", loss_scale: {m['loss_scaling']:g}, skipped_steps: {skipped}"
        run.log(line)
        tags = dict(
            epoch=epoch,
            samples_per_sec=sps,
            samples=(step + 1) * gbs,
            tokens_per_sec=tps,
            skipped_steps=skipped,
        )
        if mfu is not None:
            tags["mfu"] = mfu
        run.scalars(step, tags)

    def _histograms(self, step, grads):
        params = self.trainer.model.params
        values = {f"weights/{n}": v.numpy() for n, v in params.items()}
        values.update({f"gradients/{n}": g.numpy() for n, g in grads.items()})
        self.run_log.histograms(step, values)

    def _evaluate(self, step):
        result = dict(self.evaluate(step))
        self._check_damage()  # before reporting a result of partial data
        count = result.pop("sequences", None)
        self.evaluation = result
        where = f"eval at step {step}" + (f" ({int(count)} sequences)" if count else "")
        self.run_log.log(f"{where}: " + ", ".join(f"{k}: {v:.5f}" for k, v in result.items()))
        self.run_log.scalars(step, {f"eval/{k}": v for k, v in result.items()})


def _due(period, call_start, n, every=False):
    """Whether a call covering steps [call_start, call_start + n) reaches a period boundary.

    Logs and checkpoints happen at steps 0, period, 2 x period, ... (the reference's rule);
    with `every`, after each `period` steps instead (evaluation: steps period-1, 2 x period-1, ...).
    """
    if not period or period <= 0:
        return False
    if every:
        return (call_start + n) % period == 0
    return any((call_start + i) % period == 0 for i in range(n))


class _Profiler:
    """execution_profile: a TensorFlow profiler trace of the steps profile_start_step ..
    profile_start_step + profile_steps - 1, written under the run's event directory (TensorBoard's
    Profile tab)."""

    def __init__(self, loop, run_dir):
        self.on = bool(loop.execution_profile)
        self.first = loop.profile_start_step
        self.last = loop.profile_start_step + loop.profile_steps - 1
        self.logdir = os.path.join(run_dir, "event")
        self.active = False

    def before(self, step):
        if self.on and not self.active and step >= self.first and step <= self.last:
            tf.profiler.experimental.start(self.logdir)
            self.active = True

    def after(self, step):
        if self.active and step >= self.last:
            self.close()

    def close(self):
        if self.active:
            tf.profiler.experimental.stop()
            self.active = False
            print(f"profile of steps {self.first}..{self.last} written under {self.logdir}")


def _compile_only(cfg, trainer, dataset):
    """--compile-only: trace and compile the step (XLA when on), report time and memory, exit."""
    spec = [dataset.element_spec] * trainer.iterations
    fn = trainer.step_function()
    start = time.time()
    concrete = fn.get_concrete_function(spec)
    traced = time.time() - start
    how = "traced (no XLA)"
    if compiles_with_xla(cfg.loop, trainer.strategy, trainer.placement):
        # Compiles without running: zeros stand for the inputs.
        zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)
        fn.experimental_get_compiler_ir(zeros)(stage="optimized_hlo")
        how = "compiled with XLA"
    seconds = time.time() - start
    memory = memory_estimate(trainer, dataset.element_spec, concrete)
    print(f"Compile time: {seconds:.1f} s ({how}; tracing {traced:.1f} s)")
    print(
        "memory estimate: "
        + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in memory.items())
        + " (activations: every float tensor of one step's graph, an upper bound)"
    )
    print("Training graph successfully compiled; nothing was trained")
    return TrainResult({}, None, None, False)


def _nbytes(shape, dtype):
    return shape.num_elements() * dtype.size if shape.is_fully_defined() else 0


def memory_estimate(trainer, element_spec, concrete):
    """Bytes of the step's persistent state, its input and its intermediate tensors.

    Returns:
      {"weights", "optimizer state", "input", "activations", "total"}: weights and optimizer state
      are exact; activations sum every floating-point output of the traced step's ops (without
      buffer reuse, so an upper bound).
    """
    weights = sum(_nbytes(v.shape, v.dtype) for v in trainer.model.params.values())
    slots = sum(_nbytes(v.shape, v.dtype) for v in trainer.optimizer.slots.values())
    inputs = sum(_nbytes(s.shape, s.dtype) for s in tf.nest.flatten(element_spec))
    inputs *= trainer.iterations
    activations = 0
    for op in concrete.graph.get_operations():
        for out in op.outputs:
            if out.dtype.is_floating:
                activations += _nbytes(out.shape, out.dtype)
    total = weights + slots + inputs + activations
    return {
        "weights": weights,
        "optimizer state": slots,
        "input": inputs,
        "activations": activations,
        "total": total,
    }


def _check_skips(trainer, step, limit=0.5):
    """fp16 with dynamic scaling: stop if most steps are being skipped (USER_NEEDS #3)."""
    if trainer.dynamic is None or step < 100:
        return
    skipped = int(trainer.dynamic.skipped_steps.numpy())
    if skipped > limit * (step + 1):
        raise UserError(
            f"{skipped} of {step + 1} steps skipped for float16 overflow: the run is not training; "
            "use precision bf16 or 32, or a lower learning rate"
        )
