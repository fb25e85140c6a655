"""The task layer: one module per task, each holding its inputs, heads, loss and metrics,
evaluation and prediction.

- `pretraining`: BERT masked LM + next-sentence prediction, and RoBERTa-style masked LM;
- `squad`: SQuAD 1.1/2.0 span prediction; `glue`: GLUE classification and regression;
- `finetuning`: what the two fine-tuning tasks share (model from a checkpoint, heads, prediction).

A run script reads its config (`options.parse_options`), builds its task, and hands the model, the
loss and the data to the one training loop (`training.train`) through `objectives.fit`; what it
writes after the loop goes through `objectives.chief_only` (on several workers, the chief writes).
Training and evaluation use the same loss functions. (The name is not `tasks/`: GPT-2's reference
app keeps its evaluation scripts there.)
"""

from common.errors import UserError


def initialise(cfg, trainer, path):
    """Load `path` (any checkpoint format) into the trainer's model and optimizer, before the loop.

    Every model variable must be present; optimizer slots are loaded where the checkpoint has
    them, unless restore_optimiser_from_checkpoint is false. Returns the lines to log.
    """
    import interop

    model_params = trainer.model.params
    variables = dict(model_params)
    if cfg.checkpoint.restore_optimiser_from_checkpoint:
        variables.update(trainer.optimizer.slots)
    report = interop.load_into(path, variables, required=list(model_params))
    slots = [n for n in report.loaded if n in trainer.optimizer.slots]
    converted = "" if report.format == "native" else f" (converted from {report.format})"
    line = (
        f"initialised from {report.source}{converted}: "
        f"{len(report.loaded) - len(slots)} model variables, {len(slots)} optimizer slots"
    )
    if report.missing:
        line += f" ({len(report.missing)} optimizer slots start fresh)"
    if report.unexpected:
        line += f"; unused checkpoint tensors: {len(report.unexpected)}"
    return [line]


_TRAINER_KEYWORDS = ("tokens_fn", "wd_exclude", "clip_norm")  # fit's keywords for training.Trainer


def fit(cfg, strategy, model, loss_fn, dataset, **kwargs):
    """Build the trainer, initialise from --init-checkpoint (unless resuming), run the loop.

    Args:
      cfg: options.RunConfig; strategy: the tf.distribute strategy the model was built under.
      model, loss_fn, dataset: as training.Trainer / training.train take them.
      kwargs: tokens_fn, wd_exclude, clip_norm (Trainer); samples_per_epoch, flops_per_sample,
        evaluate, notes, line_format (train); init (callable(trainer) -> log lines, replacing the plain
        --init-checkpoint load, e.g. fine-tuning with fresh heads).
    Returns:
      training.TrainResult.
    """
    import training  # TensorFlow: not at import time, so that --help stays fast

    init = kwargs.pop("init", None)
    trainer_kwargs = {k: kwargs.pop(k) for k in _TRAINER_KEYWORDS if k in kwargs}
    trainer = training.Trainer(cfg, strategy, model, loss_fn, **trainer_kwargs)
    notes = list(kwargs.pop("notes", ()))
    if not cfg.checkpoint.restore_dir and not cfg.loop.compile_only:
        if init is not None:
            notes += init(trainer)
        elif cfg.checkpoint.init_checkpoint:
            notes += initialise(cfg, trainer, cfg.checkpoint.init_checkpoint)
    return training.train(cfg, trainer, dataset, notes=notes, **kwargs)


CHIEF_WRITE_TIMEOUT = 24 * 3600.0  # seconds the other workers wait for the chief's outputs


def chief_only(name, write):
    """What a script does after the loop (predict, evaluate, write files): `write()`, on the chief.

    On several workers the others skip it (prediction runs on each worker's own copy of the
    weights, without collectives) and wait at a barrier of TensorFlow's coordination service until
    the chief is done: so the workers stay in step (GLUE's next seed trains on all of them, with no
    collective waiting out its timeout meanwhile) and leave together (TensorFlow reports a worker
    that leaves early as crashed). The barrier fails when a worker is gone (TensorFlow's heartbeats
    tell), else after CHIEF_WRITE_TIMEOUT. `name` tells the barrier apart from the run's others.
    Every worker must call it where the chief does.

    Returns:
      write()'s result on the chief (or alone), None on the other workers.
    """
    from common import cluster

    found = cluster.current()
    if found is None:
        return write()
    import tensorflow as tf
    from tensorflow.python.eager import context  # the coordination service has no public API

    result = write() if found.chief else None
    try:
        context.context().wait_at_barrier(name, int(CHIEF_WRITE_TIMEOUT * 1000))
    except tf.errors.OpError as err:
        first = err.message.strip().splitlines()[0].split(". ")[0]
        raise UserError(
            f"worker {found.index}: another worker stopped before the end of {name} "
            f"({type(err).__name__}: {first[:160]}); see its error"
        ) from None
    return result
