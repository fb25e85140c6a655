"""The one configuration schema: options, flags, JSON configs, and the typed, frozen run config.

Every option is declared once in `OPTIONS` (key, type, default, help, help section, concern,
scopes). From it come the flags (kebab case: `--micro-batch-size` sets `micro_batch_size`), the
checking of `--config` files, and `RunConfig`: an immutable config grouped by concern
(`cfg.model`, `cfg.data`, `cfg.optimizer`, `cfg.schedule`, `cfg.loop`, `cfg.checkpoint`,
`cfg.logging`, `cfg.finetune`, `cfg.ipu`), each group a frozen dataclass generated from the options
of that concern. The model's fields (and their help) come from `model_config.BertConfig`.

Rules:
- Precedence: explicit command-line flag > `--config` JSON > default.
- Exit 64 (`os.EX_USAGE`) for a config key or flag the script does not have, a value of the wrong
  type and a setting that fails validation; exit 2 for an unreadable config file. Config keys
  starting with "_" are metadata and ignored (`RunConfig.save` writes such keys, so a saved
  `arguments.json` is itself a valid `--config`).
- Booleans: `--flag` (true), `--flag true|false`, `--no-flag`. Lists and dicts are JSON on the
  command line: `--pipeline-stages '[["emb","pos"],["hid"]]'`, `--lr-power '[0.5, 1]'`.
- Abbreviated flags are rejected (the reference accepted prefixes, so `--steps` was ambiguous).
- Linked settings (global_batch_size / gradient_accumulation_count, vocab_file / vocab_size): a
  value given on the command line wins over the config's value of the other key, which is then
  derived again; two values from the same source that disagree are an error.
- Derived values are resolved once, in `parse_options`, before anything reads them: the
  accumulation count and global batch, the vocab size from vocab_file, a random seed if null,
  dynamic loss scaling, the step count rounded down and the log/checkpoint/evaluation periods
  rounded up to multiples of `device_iterations`, tokens per step. `RunConfig.updated` re-derives
  them when a task learns a value from its data (fine-tuning: the step count from the epochs).
- IPU-only options are accepted so that reference configs parse. If any is set (config or flag) to a
  value other than its default, one warning line lists them; defaults stay silent, so a saved
  `arguments.json` reloads without noise. Options the reference declared but never used warn alike.
- A string option whose default is null reads "" as null (reference configs write
  `"init_checkpoint": ""` for "none").
"""

import dataclasses
import json
import os
import secrets
import sys
import types

import model_config
from common import cli
from common.cli import EX_USAGE, Option, build_parser, check_value, load_config
from common.errors import UserError
from common.fileio import atomic_write_json

STAGE_TOKENS = ("emb", "pos", "hid", "mlm", "nsp", "loc", "glu", "glu_reg")
cli.KINDS["stages"] = (
    lambda v: (
        isinstance(v, list)
        and v
        and all(isinstance(s, list) and s and all(t in STAGE_TOKENS for t in s) for s in v)
    ),
    f"a list of lists of stage tokens ({', '.join(STAGE_TOKENS)})",
)
# Concerns: the groups of RunConfig. "ipu" holds the IPU-only options (no effect here).
CONCERNS = ("model", "data", "optimizer", "schedule", "loop", "checkpoint", "logging", "finetune",
            "ipu")  # fmt: skip


def _section(group, concern, options, **fields):
    return [dataclasses.replace(o, group=group, concern=concern, **fields) for o in options]


def _model_options():
    """The "BERT model" flags, one per model_config.BertConfig field (its help and default)."""
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    out = []
    for name in model_config.OPTION_FIELDS:
        field = model_config.FIELDS[name]
        default = field.metadata["option_default"]
        out.append(Option(name, kinds[field.type], default, field.metadata["help"]))
    return out


O = Option  # noqa: E741 (short name keeps the table one line per option)
LR_SCHEDULES = ("polynomial_decay", "natural_exponential", "custom", "cosine_decay")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "mpadamw", "lamb", "custom")
PRECISIONS = {"32": "float32", "16": "float16", "bf16": "bfloat16"}  # option value -> dtype name
_BY_STEP = 'by step, {"step": value}: the largest step <= the current one applies'

OPTIONS = [
    O("task", "str", "pretraining", "task", group="Main", concern="task",
      choices=("pretraining", "SQuAD", "GLUE")),
    *_section("Batch and length", "loop", [
        O("micro_batch_size", "int", None, "samples per forward/backward pass on one replica"),
        O("global_batch_size", "int", None, "samples per weight update over all replicas; if set, "
          "gradient_accumulation_count = it / (micro_batch_size x replicas), exactly"),
        O("gradient_accumulation_count", "int", None, "micro-batches per update and replica"),
        O("replicas", "int", 1, "data-parallel replicas (devices) per worker process; several "
          "workers (TF_CONFIG or Slurm) multiply it"),
        O("collective_timeout", "float", 300.0, "several workers: seconds a step may wait for "
          "the others before the run stops with an error naming the lost worker"),
        O("num_train_steps", "int", None, "number of optimizer steps (weight updates)"),
        O("epochs", "int", None, "SQuAD/GLUE epochs (pretraining length is num_train_steps)"),
        O("reduction_type", "str", "mean", "mean or sum of micro-batch gradients",
          choices=("mean", "sum")),
        O("loss_scaling", "float", 1.0, "float16: static loss scale (loss x scale, gradients / "
          "scale); with dynamic_loss_scaling the initial scale (2^15 when not set)"),
        O("loss_scaling_by_step", "steps", None, "static loss scale " + _BY_STEP +
          " (an error with dynamic_loss_scaling, whose scale adapts itself)"),
        O("dynamic_loss_scaling", "bool", None, "skip overflowing steps and adapt the scale; "
          "null = on for precision 16 only"),
        O("seed", "int", None, "random seed; null = a random 32-bit seed, recorded"),
    ]),
    *_section("Learning rate", "schedule", [
        O("base_learning_rate", "float", 2e-5, "peak learning rate"),
        O("lr_schedule", "str", "polynomial_decay", "learning-rate schedule; polynomial = "
          "polynomial_decay (the reference default 'exponential' was no valid choice)",
          choices=LR_SCHEDULES, aliases=(("polynomial", "polynomial_decay"),)),
        O("warmup", "number", 0.1, "warm-up steps (integer) or fraction of all steps (in [0, 1))"),
        O("lr_power", "floats", 1.0, "schedule power, or [warmup_power, decay_power]"),
        O("lr_schedule_by_step", "steps", None, "custom schedule: lr " + _BY_STEP),
        O("decay_steps", "int", None, "natural_exponential: steps between decays"),
        O("decay_rate", "float", None, "natural_exponential: lr x exp(-rate x decays so far)"),
    ]),
    *_section("Optimizer", "optimizer", [
        O("optimizer", "str", "momentum", "optimizer", choices=OPTIMIZERS),
        O("momentum", "float", 0.984375, "momentum coefficient"),
        O("beta1", "float", 0.9, "Adam/LAMB first-moment decay"),
        O("beta2", "float", 0.999, "Adam/LAMB second-moment decay"),
        O("epsilon", "float", 1e-4, "Adam/LAMB epsilon"),
        O("weight_decay_rate", "float", 0.0, "decoupled weight decay (AdamW, LAMB)"),
        O("use_debiasing", "bool", False, "Adam/LAMB bias correction of the moments"),
        O("use_nvlamb", "bool", False, "LAMB: scale gradients by 1 / max(global norm, 1)"),
        O("use_mpclip", "bool", False, "LAMB: clip gradients to global norm 1.0"),
        O("use_lr_fp32", "bool", False, "LAMB: lr x trust ratio in float32 (always so here)",
          unused=True),
        O("increase_optimiser_precision", "bool", False, "LAMB: float32 update (always so here)",
          unused=True),
        O("weight_norm_clip", "float", 0.0, "LAMB weight-norm clip", unused=True),
    ]),
    *_section("Checkpoints", "checkpoint", [
        O("save_path", "str", "checkpoints", "root of the run directories"),
        O("init_checkpoint", "str", None, "start from this checkpoint's weights and optimizer "
          "state, at step 0"),
        O("restore_dir", "str", None, "resume from a checkpoint (or a directory's latest)"),
        O("restore_optimiser_from_checkpoint", "bool", True, "--init-checkpoint: load its "
          "optimizer slots too (false: weights only, optimizer starts fresh)"),
        O("save_optimiser_to_checkpoint", "bool", True, "save optimizer slots in checkpoints "
          "(false: smaller checkpoints; --restore-dir then restarts the optimizer state)"),
        O("steps_per_ckpts", "int", 256, "checkpoint period in steps"),
        O("max_to_keep", "int", 5, "number of checkpoints kept"),
        O("name", "str", None, "run name", unused=True),
    ]),
    *_section("BERT model", "model", [
        *_model_options(),
        O("disable_acc", "bool", False, "skip the training accuracies (logged as NaN)"),
        O("enable_recomputation", "bool", False, "gradient checkpointing per encoder layer",
          extra_flags=("--enable_recomputation",)),
        O("pipeline_stages", "stages", None, "layers per stage, checked: hid count = layers"),
        O("device_mapping", "ints", None, "device of each pipeline stage (0..N-1); stages on "
          "several devices run pipelined on N GPUs, or the CPU split into N devices"),
        O("model_type", "str", "bert", "bert: MLM + NSP on WordPiece data; roberta: MLM only on "
          "packed byte-level BPE data with dynamic masking", choices=("bert", "roberta")),
    ]),
    *_section("Precision and execution", "loop", [
        O("precision", "str", "16", "compute: 16 = float16, 32 = float32, bf16 = bfloat16",
          choices=tuple(PRECISIONS)),
        O("xla", "bool", True, "compile the training step with XLA"),
        O("device_iterations", "int", 1, "optimizer steps per compiled call (one host round "
          "trip); steps round down, log/checkpoint/eval periods up to multiples of it"),
        O("compile_only", "bool", False, "compile the training step, print the compile time and "
          "the step's memory estimate, then exit"),
        O("execution_profile", "bool", False, "write a TensorFlow profiler trace of steps "
          "profile_start_step .. + profile_steps into the run directory (TensorBoard: Profile)"),
        O("profile_start_step", "int", 3, "first profiled step (after compilation)"),
        O("profile_steps", "int", 2, "number of profiled steps"),
    ]),
    *_section("IPU only (accepted, no effect on CPU/GPU)", "ipu", [
        O("pipeline_schedule", "str", "Interleaved", "pipeline schedule",
          choices=("Grouped", "Interleaved", "Sequential")),
        O("available_memory_proportion", "floats", 0.23, "matmul memory proportion (per IPU)"),
        O("variable_offloading", "bool", True, "optimizer state in remote memory"),
        O("min_remote_tensor_size", "int", 128, "smallest tensor in remote memory (bytes)"),
        O("replicated_tensor_sharding", "bool", False, "shard optimizer state over replicas"),
        O("stochastic_rounding", "bool", True, "stochastic rounding"),
        O("no_outlining", "bool", False, "disable outlining"),
        O("fp_exceptions", "bool", False, "floating-point exceptions"),
        O("partials_type", "str", "half", "matmul partials", choices=("half", "float")),
        O("max_cross_replica_sum_buffer_size", "int", 10 * 1024 * 1024, "bytes"),
        O("max_reduce_scatter_buffer_size", "int", 0, "bytes"),
        O("scheduler", "str", "CLUSTERING", "Poplar scheduler"),
        O("recomputation_mode", "str", "RecomputeAndBackpropagateInterleaved", "Poplar mode"),
        O("matmul_serialize_factor", "int", 6, "serialisation of the vocab matmuls"),
        O("sync_replicas_independently", "bool", False, "Poplar option"),
        O("log_all_workers", "bool", False, "every PopDist worker logs"),
        O("ipu_replica_identical_seed", "bool", False, "same seed on all local replicas"),
        O("memory_profile", "bool", False, "Poplar memory profile"),
        O("profile_dir", "str", "./", "Poplar profile directory"),
        O("progress_bar", "str", "auto", "compile progress bar", choices=("auto", "true", "false")),
    ], ipu_only=True),
    *_section("Data", "data", [
        O("train_file", "str", None, "training TFRecords: glob(s), comma-separated"),
        O("eval_file", "str", None, "held-out TFRecords, evaluated every steps_per_eval steps"),
        O("vocab_file", "str", None, "WordPiece vocabulary, one token per line"),
        O("tokenizer_file", "str", None, "roberta: tokenizer.json of the byte-level BPE"),
        O("do_lower_case", "bool", False, "lower-case the text (must match vocab and data)"),
        O("seq_length", "int", 128, "sequence length"),
        O("duplicate_factor", "int", 5, "duplication factor of the data (to report epochs)"),
        O("parallel_io_threads", "int", 4, "files read and parsed in parallel"),
        O("sloppy_parallel_interleave", "bool", False,
          "allow non-deterministic file interleaving (reference default true; ours false: exact resume)"),
        O("skip_corrupt_records", "bool", False, "a damaged TFRecord file (cut short or failing "
          "a checksum): skip the rest of it from its first damaged record, count it and go on "
          "(false: checkpoint the last completed step and stop with one line naming file and "
          "byte)"),
        O("generated_data", "bool", False, "random host-generated data; no train_file needed"),
        O("synthetic_data", "bool", False, "random data kept on the device, no input pipeline"),
        O("dataset_repeat", "int", 1, "dataset repeats", unused=True),
    ]),
    *_section("Logging", "logging", [
        O("steps_per_logs", "int", 1, "console log period in steps"),
        O("steps_per_eval", "int", 0, "held-out evaluation period in steps (eval_file for "
          "pretraining, the dev set for GLUE); 0 = after the last step only"),
        O("steps_per_tensorboard", "int", 0, "period of weight and gradient histograms and "
          "per-tensor L2 norms in TensorBoard/W&B (<= 0: off)"),
        O("wandb", "bool", False, "log to Weights & Biases (offline unless WANDB_API_KEY is set)"),
        O("wandb_name", "str", None, "Weights & Biases run name"),
        O("wandb_project", "str", "tf-bert", "Weights & Biases project"),
        O("log_dir", "str", "./logs/", "log directory (logs go to save_path)", unused=True),
        O("name_suffix", "str", None, "run name suffix", unused=True),
    ]),
    *_section("Fine-tuning (SQuAD and GLUE)", "finetune", [
        O("predict_file", "str", None, "SQuAD dev/test JSON"),
        O("output_dir", "str", None, "directory of predictions and result files"),
        O("doc_stride", "int", 128, "SQuAD sliding-window stride in tokens"),
        O("max_query_length", "int", 64, "SQuAD question tokens kept"),
        O("n_best_size", "int", 20, "SQuAD answer candidates per example"),
        O("max_answer_length", "int", 30, "SQuAD longest answer in tokens"),
        O("null_score_diff_threshold", "float", 0.0, "SQuAD 2.0: no answer if null - best > it"),
        O("verbose_logging", "bool", False, "SQuAD: report each predicted answer that cannot be "
          "mapped back onto the original text (Google's verbose_logging)"),
        O("do_training", "bool", False, "run training"),
        O("do_predict", "bool", False, "run prediction"),
        O("do_evaluation", "bool", False, "run evaluation"),
        O("tfrecord_dir", "str", None, "cache directory of the feature TFRecords"),
        O("length_bucket", "int", 0, "0: every batch padded to seq_length; N: training batches "
          "of similar lengths (sorted within windows of 64 steps) and GLUE prediction batches "
          "cut to their longest example, rounded up to a multiple of N"),
    ], scopes=("squad", "glue")),
    *_section("SQuAD", "finetune", [
        O("version_2_with_negative", "bool", False, "SQuAD 2.0 (questions without answer)"),
        O("num_synthetic_dataset_samples", "int", 1000000, "size of the --generated-data set"),
    ], scopes=("squad",)),
    *_section("GLUE", "finetune", [
        O("task_name", "str", "", "GLUE task"),
        O("data_dir", "str", None, "GLUE task folder"),
        O("buffer_size", "int", 10000, "shuffle buffer: training examples are shuffled within "
          "windows of this many (the whole set when it is smaller), anew every epoch"),
        O("glue_dropout_prob", "float", 0.1, "dropout before the classifier"),
        O("num_seeds", "int", 1, "fine-tune this many times (seeds seed, seed+1, ...) and report "
          "mean and std of the dev metrics"),
        O("pack_sequences", "int", 0, "0: each training example padded to seq_length; K >= 2: "
          "each micro-batch's examples packed into rows of up to K (the same examples, loss and "
          "gradients; no attention across examples)"),
    ], scopes=("glue",)),
]  # fmt: skip

SCHEMA = {o.key: o for o in OPTIONS}
SCOPES = ("common", "squad", "glue")
POSITIVE = (
    "micro_batch_size", "global_batch_size", "gradient_accumulation_count", "replicas",
    "num_train_steps", "seq_length", "device_iterations", "steps_per_logs", "steps_per_ckpts",
    "max_to_keep", "max_predictions_per_seq", "buffer_size", "profile_steps", "collective_timeout",
)  # fmt: skip
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "glue_dropout_prob")
_RANK = {None: 0, "config": 1, "cli": 2}
_PYTYPES = {"int": int, "float": float, "number": float, "str": str, "bool": bool,
            "floats": float | list, "ints": list, "stages": list, "steps": dict}  # fmt: skip


# ----------------------------------------------------------------------------- the typed config


def _group_class(concern):
    """The frozen dataclass of one concern: a typed field per option of that concern."""
    fields = [
        (o.key, _PYTYPES[o.type] | None, dataclasses.field(default=None))
        for o in OPTIONS
        if o.concern == concern
    ]
    if concern == "loop":  # derived, resolved once by parse_options
        fields.append(("tokens_per_step", int | None, dataclasses.field(default=None)))
    name = f"{concern.title()}Options"
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = __name__
    return cls


GROUPS = {concern: _group_class(concern) for concern in CONCERNS}
LoopOptions = GROUPS["loop"]
LoopOptions.compute_dtype = property(
    lambda self: PRECISIONS[self.precision],
    doc="Name of the compute dtype (float32, float16, bfloat16), from precision.",
)


def defaults(concern, **values):
    """One group with the schema's defaults, some replaced: `defaults("optimizer", optimizer="sgd")`
    (for code and tests that need a group without a command line)."""
    opts = {o.key: o.default for o in OPTIONS if o.concern == concern}
    opts.update(values)
    return _group(concern, opts)


def _group(concern, values):
    """The `concern` group holding its fields' entries of `values` (other keys ignored)."""
    cls = GROUPS[concern]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _where(key, explicit, config_path):
    """Where `key` was set: "--flag", the config path, or "default"."""
    where = explicit.get(key)
    if where == "cli":
        return f"--{key.replace('_', '-')}"
    return config_path if where == "config" else "default"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one run, immutable and grouped by concern.

    Attributes:
      task: "pretraining", "SQuAD" or "GLUE".
      model, data, optimizer, schedule, loop, checkpoint, logging, finetune, ipu: frozen groups
        with one attribute per option of that concern (`cfg.loop.micro_batch_size`); options of
        other scripts' scopes are None. `cfg.loop.tokens_per_step` and `cfg.loop.compute_dtype`
        are derived.
      script: the script's name; config_path: the --config file (or None).
      explicit: read-only {option key: "config" | "cli"} for the keys set explicitly.
    """

    task: str
    model: object
    data: object
    optimizer: object
    schedule: object
    loop: object
    checkpoint: object
    logging: object
    finetune: object
    ipu: object
    script: str = "run_pretraining.py"
    config_path: str | None = None
    explicit: types.MappingProxyType = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    scopes: tuple = ("common",)

    def flat(self):
        """{option key: value} of every option of this script's scopes (what arguments.json holds)."""
        out = {"task": self.task}
        for concern in CONCERNS:
            group = getattr(self, concern)
            for o in OPTIONS:
                if o.concern == concern and set(o.scopes) & set(self.scopes):
                    out[o.key] = getattr(group, o.key)
        return out

    def source(self, key):
        """Where `key` was set: "--flag", the config path, or "default"."""
        return _where(key, self.explicit, self.config_path)

    def is_explicit(self, key):
        return key in self.explicit

    def save(self, path):
        """Write the resolved options as JSON, atomically (temp file, then rename).

        Option keys are written as they are, derived and provenance values with a "_" prefix
        (`_config`, `_tokens_per_step`, `_explicit`), so the file is itself a valid `--config`.
        """
        data = self.flat()
        data.update(
            _config=self.config_path,
            _tokens_per_step=self.loop.tokens_per_step,
            _explicit=dict(self.explicit),
        )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(path, data)

    def __contains__(self, key):
        """Whether `key` is an option of this run's script (its scopes)."""
        return key in SCHEMA and bool(set(SCHEMA[key].scopes) & set(self.scopes))

    def __getitem__(self, key):
        """Read-only lookup of one option by key (`cfg["seed"]`); code reads the groups."""
        if key not in SCHEMA:
            raise KeyError(key)
        concern = SCHEMA[key].concern
        return self.task if concern == "task" else getattr(getattr(self, concern), key)

    def updated(self, **values):
        """A new RunConfig with these option values, derived values resolved again.

        For values a task learns from its data or checkpoint (num_train_steps from the epochs,
        vocab_size from a tokenizer): they count as derived, not as explicit settings.
        """
        unknown = [k for k in values if k not in SCHEMA]
        if unknown:
            raise ValueError(f"unknown option(s): {unknown}")
        flat = {**self.flat(), **values}
        return _freeze(flat, self.explicit, self.script, self.config_path, self.scopes)


def _freeze(flat, explicit, script, config_path, scopes):
    flat = dict(flat)
    _derive_periods(flat)
    groups = {concern: _group(concern, flat) for concern in GROUPS}
    return RunConfig(
        task=flat["task"],
        script=script,
        config_path=config_path,
        explicit=types.MappingProxyType(dict(explicit)),
        scopes=tuple(scopes),
        **groups,
    )


# ----------------------------------------------------------------------------- resolution


def _source(opts, explicit, key):
    return _where(key, explicit, opts["_config"])


def _fail(message):
    raise UserError(message, EX_USAGE)


def _derive_batch(opts, explicit):
    """Fill gradient_accumulation_count and global_batch_size (they agree afterwards)."""
    gbs, ga = opts["global_batch_size"], opts["gradient_accumulation_count"]
    from common import cluster

    mbs, workers = opts["micro_batch_size"], cluster.workers()
    replicas = opts["replicas"] * workers
    # how the replica count reads in messages: "2" alone, "1 x 2 workers" on several workers
    shown = f"{opts['replicas']} x {workers} workers" if workers > 1 else f"{replicas}"
    if mbs is None:
        if gbs is not None:
            _fail("global_batch_size needs micro_batch_size to derive gradient_accumulation_count")
        return
    per_step = mbs * replicas
    from_gbs = gbs is not None and (
        ga is None
        or _RANK[explicit.get("global_batch_size")]
        > _RANK[explicit.get("gradient_accumulation_count")]
    )
    if from_gbs:
        if gbs % per_step:
            low, high = gbs // per_step * per_step, (gbs // per_step + 1) * per_step
            fix = f"global_batch_size {low} or {high}" if low else f"global_batch_size {high}"
            if gbs % replicas == 0:
                fits = max(m for m in range(1, mbs + 1) if gbs // replicas % m == 0)
                fix += f", or micro_batch_size {fits}"
            _fail(
                f"global_batch_size {gbs} ({_source(opts, explicit, 'global_batch_size')}) is not "
                f"a multiple of micro_batch_size x replicas = {mbs} x {shown}; use {fix}"
            )
        opts["gradient_accumulation_count"] = gbs // per_step
    else:
        opts["gradient_accumulation_count"] = ga = 1 if ga is None else ga
        if (
            gbs is not None
            and _RANK[explicit.get("global_batch_size")]
            == _RANK[explicit.get("gradient_accumulation_count")]
            and gbs != per_step * ga
        ):
            where = _source(opts, explicit, "global_batch_size")
            _fail(
                f"global_batch_size {gbs} and gradient_accumulation_count {ga} (both from "
                f"{where.replace('--global-batch-size', 'flags')}) disagree: micro_batch_size x "
                f"gradient_accumulation_count x replicas = {mbs} x {ga} x {shown} = "
                f"{per_step * ga}; give only one of them"
            )
    opts["global_batch_size"] = per_step * opts["gradient_accumulation_count"]


def _derive_periods(opts):
    """device_iterations: steps round down, log/checkpoint/eval periods up to multiples of it; and
    tokens per step. Idempotent (RunConfig.updated runs it again)."""
    di = opts.get("device_iterations") or 1
    if di > 1:
        if opts.get("num_train_steps"):
            opts["num_train_steps"] = max(di, opts["num_train_steps"] // di * di)
        for key in ("steps_per_logs", "steps_per_ckpts", "steps_per_eval", "steps_per_tensorboard"):
            if opts.get(key) and opts[key] > 0:
                opts[key] = -(-opts[key] // di) * di
    gbs = opts.get("global_batch_size")
    opts["tokens_per_step"] = gbs * opts["seq_length"] if gbs and opts.get("seq_length") else None


def _derive_vocab(opts, explicit):
    path = opts.get("vocab_file")
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
    except OSError as err:
        _fail(
            f"cannot read vocab_file {path} ({_source(opts, explicit, 'vocab_file')}): "
            f"{err.strerror}"
        )
    size = opts["vocab_size"]
    if size is None or _RANK[explicit.get("vocab_file")] > _RANK[explicit.get("vocab_size")]:
        opts["vocab_size"] = lines
    elif size < lines:
        # Larger is fine (padding rows, e.g. 30528 for a 30522-token vocab); smaller is not.
        _fail(
            f"vocab_size {size} ({_source(opts, explicit, 'vocab_size')}) is smaller than the "
            f"{lines} lines of vocab_file {path}; set vocab_size to {lines} or null"
        )


def _validate(opts, explicit):
    for key in POSITIVE:
        if opts.get(key) is not None and opts[key] < 1:
            _fail(f"{key} must be at least 1, got {opts[key]} ({_source(opts, explicit, key)})")
    for key in PROBABILITIES:
        if opts.get(key) is not None and not 0 <= opts[key] < 1:
            _fail(f"{key} must be in [0, 1), got {opts[key]} ({_source(opts, explicit, key)})")
    if (opts.get("length_bucket") or 0) < 0:
        _fail(f"length_bucket must be 0 (off) or positive, got {opts['length_bucket']}")
    warmup = opts["warmup"]
    if not ((float(warmup).is_integer() and warmup >= 0) or 0 <= warmup < 1):
        _fail(
            f"warmup {warmup} ({_source(opts, explicit, 'warmup')}) must be an integer number of "
            "steps or a fraction in [0, 1)"
        )
    layers, stages = opts["num_hidden_layers"], opts["pipeline_stages"]
    if stages is not None and layers is not None:
        hid = sum(stage.count("hid") for stage in stages)
        if hid != layers:
            _fail(
                f"pipeline_stages has {hid} 'hid' layers but num_hidden_layers is {layers} "
                f"({_source(opts, explicit, 'pipeline_stages')})"
            )
    seq, positions = opts["seq_length"], opts["max_position_embeddings"]
    if positions is not None and seq > positions:
        _fail(f"seq_length {seq} exceeds max_position_embeddings {positions}")
    if opts["max_predictions_per_seq"] > seq:
        _fail(f"max_predictions_per_seq {opts['max_predictions_per_seq']} exceeds seq_length {seq}")
    hidden, heads = opts["hidden_size"], opts["num_attention_heads"]
    if hidden is not None and heads is not None and hidden % heads:
        _fail(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
            f"({_source(opts, explicit, 'hidden_size')})"
        )
    if opts["dynamic_loss_scaling"] and opts["loss_scaling_by_step"]:
        _fail(
            "loss_scaling_by_step is a static loss-scale schedule, but dynamic_loss_scaling adapts "
            "the scale itself: set dynamic_loss_scaling false, or drop loss_scaling_by_step "
            "(loss_scaling then sets the initial dynamic scale)"
        )


def _warn_ignored(opts, explicit, options):
    def changed(o):
        return o.key in explicit and opts[o.key] != o.default

    for flag, what in (
        ("ipu_only", "IPU-only: no effect on CPU/GPU"),
        ("unused", "no effect here"),
    ):
        keys = [o.key for o in options if getattr(o, flag) and changed(o)]
        if keys:
            print(f"warning: ignored options ({what}): {', '.join(keys)}", file=sys.stderr)


def parse_options(
    argv=None,
    script_name="run_pretraining.py",
    description="",
    groups=("common",),
    require_config=True,
    defaults=None,
):
    """Resolve the options of one script from its command line and `--config` file.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).
      script_name: shown in `usage: <script_name> ...`.
      description: text under the usage line of `--help`.
      groups: scopes of options the script accepts, from `SCOPES` ("common" always makes sense).
      require_config: without `--config`, print help and exit 0 (as the reference did).
      defaults: per-script default overrides {key: value}, e.g. {"task": "SQuAD"}.

    Returns:
      RunConfig, every derived value resolved (see the module docstring).

    Raises:
      UserError: one line; exit code 64 for bad keys, flags, values or settings, 2 for an
        unreadable config file. `--help` raises SystemExit(0) after printing help.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = [o for o in OPTIONS if set(o.scopes) & set(groups)]
    parser = build_parser(options, script_name, description, require_config)
    if require_config and not any(a == "--config" or a.startswith("--config=") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    given = vars(parser.parse_args(argv))
    config_path = given.pop("config", None)
    config = load_config(config_path, options) if config_path else {}
    opts = {o.key: o.default for o in OPTIONS}
    for key, value in (defaults or {}).items():
        opts[key] = check_value(SCHEMA[key], value)
    explicit = {}
    for where, values in (("config", config), ("cli", given)):
        opts.update(values)
        explicit.update(dict.fromkeys(values, where))
    opts["_config"] = config_path
    _derive_vocab(opts, explicit)
    _derive_batch(opts, explicit)
    if opts["seed"] is None:
        opts["seed"] = secrets.randbits(32)
    if opts["dynamic_loss_scaling"] is None:
        opts["dynamic_loss_scaling"] = opts["precision"] == "16"
    _validate(opts, explicit)
    _warn_ignored(opts, explicit, options)
    del opts["_config"]
    return _freeze(opts, explicit, script_name, config_path, ("common", *groups))


def format_resolved(cfg):
    """Sorted `key: value` lines (values as JSON) of every option of the run."""
    flat = cfg.flat()
    return "\n".join(f"{k}: {json.dumps(flat[k])}" for k in sorted(flat))


def bert_config_fields(cfg):
    """The model_config.BertConfig fields the options set ({field: value}, nulls left out)."""
    values = dataclasses.asdict(cfg.model)
    return model_config.from_options(values)
