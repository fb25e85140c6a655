"""The one training loop every script shares: strategy, accumulation, checkpoints, logging.

A script gives `train()` a model (a `tf.Module` with a `params` dict of Google-named variables), a loss
function `(model, features, training, dropout_seed, compute_dtype) -> {"loss": ..., metrics...}` and a
tf.data dataset whose elements are one optimizer step: tensors [GA, micro_batch, ...]. The optimizer step
(all GA micro-batches, gradient reduction, loss scaling, the update) is one `tf.function`, traced once and
XLA-compiled when `xla` is on, built under a `tf.distribute` strategy.

Determinism and resume: dropout masks come from stateless RNG seeded by (seed, step, micro-batch), the
data order from seeded tf.data ops whose iterator state is checkpointed, so a run resumed from
`ckpt-N` continues the exact trajectory of the uninterrupted run.
"""

import datetime
import os
import signal
import time

import tensorflow as tf

import checkpoints
import lr_schedules
import optimization
import runlog
from common.errors import UserError

COMPUTE_DTYPES = {"32": tf.float32, "16": tf.float16, "bf16": tf.bfloat16}


def make_strategy(replicas):
    """Default strategy for one replica; MirroredStrategy over GPUs, or over logical CPUs when the
    machine has no GPU (data parallelism that runs anywhere, e.g. to test it)."""
    if replicas <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and len(gpus) < replicas:
        raise UserError(
            f"--replicas {replicas} needs {replicas} GPUs; this machine has {len(gpus)}"
        )
    if not gpus:
        split_cpu(replicas)
    kind = "GPU" if gpus else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)[:replicas]]
    return tf.distribute.MirroredStrategy(devices)


def split_cpu(n):
    """Expose the CPU as n logical devices (tests of data parallelism without GPUs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError:
        raise UserError(
            f"--replicas {n} on CPU must be set before TensorFlow starts (it has already)"
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


def new_run_dir(opts):
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S.%f")[:-3]
    name = f"{opts['task']}_{opts['optimizer']}_{stamp}"
    return os.path.join(opts["save_path"] or "checkpoints", name)


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
    """Builds the compiled optimizer step for a model, loss and options."""

    def __init__(self, opts, strategy, model, loss_fn, total_steps, tokens_fn=None):
        self.opts = opts
        self.tokens_fn = tokens_fn
        self.strategy = strategy
        self.model = model
        self.loss_fn = loss_fn
        self.compute_dtype = COMPUTE_DTYPES[opts["precision"]]
        self.ga = opts["gradient_accumulation_count"]
        self.fp16 = opts["precision"] == "16"
        with strategy.scope():
            self.optimizer = optimization.make_optimizer(opts, model.params)
            self.global_step = tf.Variable(
                tf.constant(0, tf.int64),
                name="global_step",
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.dynamic = optimization.DynamicLossScale() if opts["dynamic_loss_scaling"] else None
        self.schedule = lr_schedules.make_lr_schedule(opts["lr_schedule"], opts, total_steps)
        # Static loss scaling only matters for float16; in fp32/bf16 it would be a no-op.
        self.static_scale = optimization.LossScalingScheduler(
            opts["loss_scaling"] if self.fp16 else 1.0,
            opts.get("loss_scaling_by_step") if self.fp16 else None,
        )
        self.train_names = [n for n, v in model.params.items() if v.trainable]
        self.seed = int(opts["seed"]) % (2**31)
        self._step_fn = None

    @property
    def state(self):
        """Every variable a checkpoint holds, by name."""
        state = dict(self.model.params)
        state.update(self.optimizer.slots)
        state["global_step"] = self.global_step
        if self.dynamic is not None:
            state.update(self.dynamic.state)
        return state

    def _loss_scale(self, step):
        if self.dynamic is not None:
            return self.dynamic.loss_scale.read_value()
        return self.static_scale.tf_at_step(step)

    def _micro(self, features, step, index, scale, names):
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        # Stateless dropout seed: (seed, global micro-batch number, replica) fully determine the masks.
        micro = (step * self.ga + tf.cast(index, tf.int64)) * replicas
        micro += tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), micro])
        variables = [self.model.params[n] for n in names]
        with tf.GradientTape() as tape:
            metrics = self.loss_fn(self.model, features, True, seed, self.compute_dtype)
            scaled = metrics["loss"] * scale
        grads = tape.gradient(scaled, variables)
        if self.tokens_fn is not None:
            metrics["tokens"] = tf.cast(self.tokens_fn(features), tf.float32)
        return grads, metrics

    def _accumulate(self, batch):
        """Replica context: gradients summed over the GA micro-batches (still loss-scaled)."""
        step = self.global_step.read_value()
        scale = self._loss_scale(step)
        first = {k: v[0] for k, v in batch.items()}
        grads, metrics = self._micro(first, step, 0, scale, self.train_names)
        # Variables the loss does not use (e.g. the pooler for SQuAD) get no gradient and no update.
        names = [n for n, g in zip(self.train_names, grads) if g is not None]
        grads = [tf.convert_to_tensor(g) for g in grads if g is not None]  # IndexedSlices -> dense
        if self.ga > 1:

            def body(i, acc, sums):
                features = {k: v[i] for k, v in batch.items()}
                g, m = self._micro(features, step, i, scale, names)
                acc = [a + tf.convert_to_tensor(b) for a, b in zip(acc, g)]
                return i + 1, acc, {k: sums[k] + m[k] for k in sums}

            _, grads, metrics = tf.while_loop(
                lambda i, *_: i < self.ga, body, (tf.constant(1), grads, metrics)
            )
        divisor = scale * (self.ga if self.opts["reduction_type"] == "mean" else 1.0)
        metrics = {k: v if k == "tokens" else v / self.ga for k, v in metrics.items()}
        return names, [g / divisor for g in grads], metrics

    def _apply(self, names, grads, metrics):
        """Unscaled, reduced gradients -> (conditional) update; returns the step's metrics."""
        step = self.global_step.read_value()
        finite = tf.logical_and(optimization.all_finite(grads), tf.math.is_finite(metrics["loss"]))
        scale = self._loss_scale(step)
        apply = self.dynamic.update(finite) if self.dynamic is not None else finite
        lr = self.schedule.tf_at_step(step)

        def update():
            return self.optimizer.apply_gradients(dict(zip(names, grads)), lr)

        grad_norm = tf.cond(apply, update, lambda: optimization.global_norm(grads))
        self.global_step.assign_add(1)
        metrics = dict(metrics, learning_rate=lr, loss_scaling=scale, grad_norm=grad_norm)
        metrics["applied"] = tf.cast(apply, tf.float32)
        return metrics

    def step_function(self):
        """The compiled optimizer step: dataset element -> dict of float32 scalars.

        One replica: accumulation and update are one function, XLA-compiled when `xla` is on. Several
        replicas: each accumulates its share in replica context; gradients are reduced across replicas
        (mean, or sum with reduction_type sum) and the update runs once in cross-replica context on the
        mirrored variables (no XLA there: tf.distribute does not compile across devices).
        """
        if self._step_fn is not None:
            return self._step_fn
        strategy = self.strategy
        if strategy.num_replicas_in_sync == 1:

            def single(batch):
                names, grads, metrics = self._accumulate(batch)
                return self._apply(names, grads, metrics)

            self._step_fn = tf.function(single, jit_compile=bool(self.opts["xla"]))
            return self._step_fn
        sum_op, mean_op = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
        grad_op = mean_op if self.opts["reduction_type"] == "mean" else sum_op
        holder = {}

        def replica(batch):
            names, grads, metrics = self._accumulate(batch)
            holder["names"] = names
            return grads, metrics

        @tf.function
        def multi(batch):
            grads, metrics = strategy.run(replica, args=(batch,))
            grads = [strategy.reduce(grad_op, g, axis=None) for g in grads]
            metrics = {
                k: strategy.reduce(sum_op if k == "tokens" else mean_op, v, axis=None)
                for k, v in metrics.items()
            }
            return self._apply(holder["names"], grads, metrics)

        self._step_fn = multi
        return self._step_fn


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


def _summary_tags(m, epoch, samples_per_sec, samples, tokens_per_sec, mfu, skipped):
    tags = {"epoch": epoch, "learning_rate": m["learning_rate"], "loss_scaling": m["loss_scaling"]}
    for key, tag in (
        ("mlm_loss", "loss/MLM"),
        ("nsp_loss", "loss/NSP"),
        ("mlm_acc", "accuracy/MLM"),
        ("nsp_acc", "accuracy/NSP"),
        ("loss", "loss/total"),
        ("acc", "accuracy/train"),
    ):
        if key in m:
            tags[tag] = m[key]
    tags.update(
        samples_per_sec=samples_per_sec,
        samples=samples,
        tokens_per_sec=tokens_per_sec,
        grad_norm=m["grad_norm"],
        skipped_steps=skipped,
    )
    if mfu is not None:
        tags["mfu"] = mfu
    return tags


def restore_for_training(opts, trainer, iterator, run, init_fn=None):
    """--restore-dir (exact resume), else `init_fn(run)` if given (fine-tuning: the task loads the
    encoder and lets its head start fresh), else --init-checkpoint (weights, optimizer where
    present, step 0)."""
    if opts.get("restore_dir"):
        prefix = checkpoints.resolve(opts["restore_dir"])
        checkpoints.restore(prefix, trainer.state)
        resumed_data = checkpoints.restore_iterator(prefix, iterator)
        run.log(
            f"resumed from {prefix} at step {int(trainer.global_step.numpy())}"
            + ("" if resumed_data else " (no data position saved: data restarts)")
        )
        return
    if init_fn is not None:
        init_fn(run)
        return
    if opts.get("init_checkpoint"):
        import interop  # native, Google TF1 or Hugging Face checkpoints, converted by name

        report = interop.load_into(
            opts["init_checkpoint"],
            {**trainer.model.params, **trainer.optimizer.slots},
            required=list(trainer.model.params),
        )
        slots = [n for n in report.loaded if n in trainer.optimizer.slots]
        converted = "" if report.format == "native" else f" (converted from {report.format})"
        run.log(
            f"initialised from {report.source}{converted}: "
            f"{len(report.loaded) - len(slots)} model variables, {len(slots)} optimizer slots"
            + (f" ({len(report.missing)} optimizer slots start fresh)" if report.missing else "")
            + (
                f"; unused checkpoint tensors: {len(report.unexpected)}"
                if report.unexpected
                else ""
            )
        )


def train(
    opts,
    model,
    loss_fn,
    dataset,
    flops_per_sample=None,
    tokens_fn=None,
    evaluate=None,
    init_fn=None,
):
    """Runs `num_train_steps` optimizer steps; returns the last step's metrics (Python floats).

    Args:
      opts: resolved options (options.parse_options).
      model: tf.Module with `params` (created under `strategy.scope()` by the caller via
        `opts["_strategy"]`).
      loss_fn: (model, features, training, dropout_seed, compute_dtype) -> dict of float32 scalars
        with "loss" (+ "mlm_loss", "mlm_acc", ... for logging).
      dataset: tf.data.Dataset of one-step elements [GA, micro_batch, ...].
      flops_per_sample: model FLOPs of one training sequence, for MFU.
      tokens_fn: micro-batch features -> number of real (non-pad) tokens (traced), for tokens/s.
      evaluate: optional callable(run) run after the last step (e.g. held-out MLM accuracy).
      init_fn: optional callable(run) that initialises the model when not resuming (instead of
        the plain --init-checkpoint load).
    The run directory is left in opts["_run_dir"].
    """
    strategy = opts["_strategy"]
    total_steps = opts["num_train_steps"]
    trainer = Trainer(opts, strategy, model, loss_fn, total_steps, tokens_fn)
    if opts.get("compile_only"):
        start = time.time()
        trainer.step_function().get_concrete_function(dataset.element_spec)
        print(f"traced the training step in {time.time() - start:.1f} s (nothing was trained)")
        return {}
    run_dir = (
        opts["restore_dir"]
        if opts.get("restore_dir") and os.path.isdir(opts["restore_dir"])
        else None
    )
    run = runlog.Run(
        run_dir or new_run_dir(opts),
        wandb=bool(opts.get("wandb")),
        wandb_project=opts.get("wandb_project"),
        wandb_name=opts.get("wandb_name"),
        config={k: v for k, v in opts.items() if not k.startswith("_")},
    )
    opts["_run_dir"] = run.dir
    try:
        return _train(opts, trainer, dataset, run, flops_per_sample, evaluate, init_fn)
    finally:
        run.close()


def _train(opts, trainer, dataset, run, flops_per_sample, evaluate, init_fn=None):
    import options as options_module

    strategy = trainer.strategy
    options_module.save_resolved(
        {k: v for k, v in opts.items() if k not in ("_strategy", "_run_dir")},
        os.path.join(run.dir, "arguments.json"),
    )
    if hasattr(trainer.model, "config"):
        trainer.model.config.to_json_file(os.path.join(run.dir, "bert_config.json"))
    run.log(f"run directory: {run.dir}")
    iterator = iter(dataset)  # a plain iterator: its position goes into every checkpoint
    replicas = strategy.num_replicas_in_sync

    def next_batch():
        if replicas == 1:
            return next(iterator)
        # Each element is one replica's [GA, micro_batch] share; replicas take elements in turn.
        shares = [next(iterator) for _ in range(replicas)]
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: shares[ctx.replica_id_in_sync_group]
        )

    restore_for_training(opts, trainer, iterator, run, init_fn)
    step_fn = trainer.step_function()
    gbs = opts["global_batch_size"]
    samples_per_epoch = max(opts.get("_num_samples", 0) / max(opts["duplicate_factor"] or 1, 1), 1)
    peak = None
    if flops_per_sample:
        peak = opts.get("peak_tflops") and opts["peak_tflops"] * 1e12
        peak = peak or measured_peak_flops(trainer.compute_dtype)
        run.log(f"matmul peak of this machine ({opts['precision']}): {peak / 1e9:.0f} GFLOP/s")
    _round_periods(opts, run)
    first = int(trainer.global_step.numpy())
    if first >= opts["num_train_steps"]:
        run.log(f"nothing to do: the checkpoint is already at step {first}")
        return {}
    start = time.time()
    metrics = {}
    from tqdm import tqdm

    bar = tqdm(total=opts["num_train_steps"], initial=first, disable=None, unit="step", leave=False)
    with _Stop() as stop:
        for step in range(first, opts["num_train_steps"]):
            t = time.time()
            batch = next_batch()
            out = step_fn(batch)
            metrics = {k: float(v) for k, v in out.items()}
            elapsed = time.time() - t
            if not metrics["applied"] and trainer.dynamic is None:
                raise UserError(
                    f"loss or gradients are NaN/Inf at step {step} (loss {metrics['loss']}); "
                    "the update was not applied and nothing was saved: lower the learning rate, "
                    "check the data, or use precision 32"
                )
            bar.update(1)
            last = step == opts["num_train_steps"] - 1
            if step % opts["steps_per_logs"] == 0 or last:
                sps = gbs / elapsed
                tps = metrics.get("tokens", 0.0) / elapsed
                mfu = sps * flops_per_sample / peak if peak else None
                epoch = (step + 1) * gbs / samples_per_epoch
                skipped = int(trainer.dynamic.skipped_steps.numpy()) if trainer.dynamic else 0
                line = _format_line(
                    step, epoch, metrics, sps, tps, mfu, elapsed, time.time() - start
                )
                if trainer.dynamic is not None:
                    line += f", loss_scale: {metrics['loss_scaling']:g}, skipped_steps: {skipped}"
                bar.clear()
                run.log(line)
                run.scalars(
                    step, _summary_tags(metrics, epoch, sps, (step + 1) * gbs, tps, mfu, skipped)
                )
            if step % opts["steps_per_ckpts"] == 0 or last or stop.requested:
                prefix = checkpoints.save(
                    run.dir, step, trainer.state, iterator, opts["max_to_keep"]
                )
                if stop.requested:
                    run.log(
                        f"{stop.requested}: saved {prefix}; resume with --restore-dir {run.dir}"
                    )
                    break
            _check_skips(trainer, step)
    bar.close()
    if evaluate is not None and not stop.requested:
        evaluate(run)
    return metrics


def _round_periods(opts, run):
    """device_iterations (reference: steps per host call): the number of steps is rounded down and
    the log and checkpoint periods up to multiples of it, as the reference did; each step is still
    one call here."""
    di = opts["device_iterations"]
    if di <= 1:
        return
    opts["num_train_steps"] = max(di, opts["num_train_steps"] // di * di)
    for key in ("steps_per_logs", "steps_per_ckpts"):
        opts[key] = -(-opts[key] // di) * di
    run.log(
        f"device_iterations {di}: {opts['num_train_steps']} steps, logs every "
        f"{opts['steps_per_logs']}, checkpoints every {opts['steps_per_ckpts']}"
    )


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
