"""The one configuration schema: options, command-line flags, JSON configs, derived settings.

Every option is declared once in `OPTIONS` (key, type, default, help, help section, scopes). From it
come the flags (kebab case: `--micro-batch-size` sets `micro_batch_size`; `--enable_recomputation`
keeps the reference's underscore, `--enable-recomputation` works too), the checking of `--config`
files and the resolved dict that every script gets from `parse_options`.

Rules:
- Precedence: explicit command-line flag > `--config` JSON > default.
- Exit 64 (`os.EX_USAGE`) for a config key or flag the script does not have, a value of the wrong
  type and a setting that fails validation; exit 2 for an unreadable config file. Config keys
  starting with "_" are metadata and ignored (`save_resolved` writes such keys, so a saved
  `arguments.json` is itself a valid `--config`).
- Booleans: `--flag` (true), `--flag true|false`, `--no-flag`. Lists and dicts are JSON on the
  command line: `--pipeline-stages '[["emb","pos"],["hid"]]'`, `--lr-power '[0.5, 1]'`.
- Abbreviated flags are rejected (the reference accepted prefixes, so `--steps` was ambiguous).
- Linked settings (global_batch_size / gradient_accumulation_count, vocab_file / vocab_size): a
  value given on the command line wins over the config's value of the other key, which is then
  derived again; two values from the same source that disagree are an error.
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

from common import cli
from common.cli import EX_USAGE, Option, bool_from_text, build_parser, check_value, load_config  # noqa: F401
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


def _section(group, options, **fields):
    return [dataclasses.replace(o, group=group, **fields) for o in options]


O = Option  # noqa: E741 (short name keeps the table one line per option)
LR_SCHEDULES = ("polynomial_decay", "natural_exponential", "custom", "cosine_decay")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "mpadamw", "lamb", "custom")
_BY_STEP = 'by step, {"step": value}: the largest step <= the current one applies'

OPTIONS = [
    *_section("Main", [
        O("task", "str", "pretraining", "task", choices=("pretraining", "SQuAD", "GLUE")),
    ]),
    *_section("Training", [
        O("micro_batch_size", "int", None, "samples per forward/backward pass on one replica"),
        O("global_batch_size", "int", None, "samples per weight update over all replicas; if set, "
          "gradient_accumulation_count = it / (micro_batch_size x replicas), exactly"),
        O("gradient_accumulation_count", "int", None, "micro-batches per update and replica"),
        O("replicas", "int", 1, "data-parallel replicas (devices)"),
        O("num_train_steps", "int", None, "number of optimizer steps (weight updates)"),
        O("epochs", "int", None, "SQuAD/GLUE epochs (pretraining length is num_train_steps)"),
        O("base_learning_rate", "float", 2e-5, "peak learning rate"),
        O("lr_schedule", "str", "polynomial_decay", "learning-rate schedule; polynomial = "
          "polynomial_decay (the reference default 'exponential' was no valid choice)",
          choices=LR_SCHEDULES, aliases=(("polynomial", "polynomial_decay"),)),
        O("warmup", "number", 0.1, "warm-up steps (integer) or fraction of all steps (in [0, 1))"),
        O("lr_power", "floats", 1.0, "schedule power, or [warmup_power, decay_power]"),
        O("lr_schedule_by_step", "steps", None, "custom schedule: lr " + _BY_STEP),
        O("decay_steps", "int", None, "natural_exponential: steps between decays"),
        O("decay_rate", "float", None, "natural_exponential: lr x exp(-rate x decays so far)"),
        O("optimizer", "str", "momentum", "optimizer", choices=OPTIMIZERS),
        O("momentum", "float", 0.984375, "momentum coefficient"),
        O("beta1", "float", 0.9, "Adam/LAMB first-moment decay"),
        O("beta2", "float", 0.999, "Adam/LAMB second-moment decay"),
        O("epsilon", "float", 1e-4, "Adam/LAMB epsilon"),
        O("weight_decay_rate", "float", 0.0, "decoupled weight decay (AdamW, LAMB)"),
        O("use_debiasing", "bool", False, "Adam/LAMB bias correction of the moments"),
        O("use_nvlamb", "bool", False, "LAMB: scale gradients by 1 / max(global norm, 1)"),
        O("use_mpclip", "bool", False, "LAMB: clip gradients to global norm 1.0"),
        O("use_lr_fp32", "bool", False, "LAMB: lr x trust ratio in float32 (always so here)"),
        O("increase_optimiser_precision", "bool", False, "LAMB: float32 update (always so here)"),
        O("weight_norm_clip", "float", 0.0, "LAMB weight-norm clip", unused=True),
        O("reduction_type", "str", "mean", "mean or sum of micro-batch gradients",
          choices=("mean", "sum")),
        O("loss_scaling", "float", 1.0, "static loss scale (loss x scale, gradients / scale)"),
        O("loss_scaling_by_step", "steps", None, "loss scale " + _BY_STEP),
        O("dynamic_loss_scaling", "bool", None, "skip overflowing steps and adapt the scale; "
          "null = on for precision 16 only"),
        O("seed", "int", None, "random seed; null = a random 32-bit seed, recorded"),
    ]),
    *_section("Checkpoints", [
        O("save_path", "str", "checkpoints", "root of the run directories"),
        O("init_checkpoint", "str", None, "start from this checkpoint's weights and optimizer "
          "state, at step 0"),
        O("restore_dir", "str", None, "resume from a checkpoint (or a directory's latest)"),
        O("restore_optimiser_from_checkpoint", "bool", True, "restore optimizer slots too"),
        O("save_optimiser_to_checkpoint", "bool", True, "save optimizer slots in checkpoints"),
        O("steps_per_ckpts", "int", 256, "checkpoint period in steps"),
        O("max_to_keep", "int", 5, "number of checkpoints kept"),
        O("name", "str", None, "run name", unused=True),
    ]),
    *_section("BERT model", [
        O("vocab_size", "int", None, "vocabulary size; null = number of lines of vocab_file"),
        O("hidden_size", "int", None, "hidden width H"),
        O("num_hidden_layers", "int", None, "number of encoder layers"),
        O("num_attention_heads", "int", None, "attention heads per layer"),
        O("intermediate_size", "int", None, "feed-forward width"),
        O("hidden_act", "str", None, "activation: gelu (tanh approximation), gelu_erf, relu, ..."),
        O("hidden_dropout_prob", "float", None, "dropout on embeddings and layer outputs"),
        O("attention_probs_dropout_prob", "float", None, "dropout on attention probabilities"),
        O("max_position_embeddings", "int", None, "rows of the position embedding table"),
        O("type_vocab_size", "int", None, "number of segment (token type) ids"),
        O("initializer_range", "float", None, "stddev of the truncated-normal initializer"),
        O("layer_norm_eps", "float", 1e-3, "LayerNorm epsilon (reference 1e-3; Google 1e-12)"),
        O("use_qkv_bias", "bool", False, "biases on query, key and value"),
        O("use_qkv_split", "bool", False, "separate Q/K/V kernels instead of one fused [H, 3H]"),
        O("use_attention_projection_bias", "bool", True, "bias on the attention output projection"),
        O("use_cls_layer", "bool", True, "MLM transform (dense + LayerNorm) before the output"),
        O("use_prediction_bias", "bool", True, "MLM output bias"),
        O("static_mask", "bool", False, "data written with --remask (masked tokens first)"),
        O("max_predictions_per_seq", "int", 20, "masked tokens per sequence (as in the data)"),
        O("disable_acc", "bool", False, "skip MLM/NSP accuracy (reported as NaN)"),
        O("enable_recomputation", "bool", False, "gradient checkpointing per encoder layer",
          extra_flags=("--enable_recomputation",)),
        O("pipeline_stages", "stages", None, "layers per stage, checked: hid count = layers"),
        O("groupbert", "bool", False, "use the GroupBERT architecture"),
        O("groupbert_ffn_output_groups", "int", 4, "GroupBERT: groups of the FFN output"),
        O("groupbert_conv_kernel_size", "int", 7, "GroupBERT: convolution kernel size"),
        O("groupbert_conv_group_size", "int", 16, "GroupBERT: channels per convolution group"),
        O("position_offset", "int", 0, "position id of the first token (RoBERTa: 2)"),
    ]),
    *_section("RoBERTa-style MLM", [
        O("model_type", "str", "bert", "bert: MLM + NSP on WordPiece data; roberta: MLM only on "
          "packed byte-level BPE data with dynamic masking", choices=("bert", "roberta")),
        O("tokenizer_file", "str", None, "roberta: tokenizer.json of the byte-level BPE"),
    ]),
    *_section("Precision and execution", [
        O("precision", "str", "16", "compute: 16 = float16, 32 = float32, bf16 = bfloat16",
          choices=("16", "32", "bf16")),
        O("xla", "bool", True, "compile the training step with XLA"),
        O("device_iterations", "int", 1, "steps per host call (log/checkpoint periods round up)"),
        O("compile_only", "bool", False, "build and compile the training step, then exit"),
    ]),
    *_section("IPU only (accepted, no effect on CPU/GPU)", [
        O("pipeline_schedule", "str", "Interleaved", "pipeline schedule",
          choices=("Grouped", "Interleaved", "Sequential")),
        O("device_mapping", "ints", None, "IPU of each pipeline stage"),
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
        O("execution_profile", "bool", False, "Poplar execution profile"),
        O("memory_profile", "bool", False, "Poplar memory profile"),
        O("profile_dir", "str", "./", "Poplar profile directory"),
        O("progress_bar", "str", "auto", "compile progress bar", choices=("auto", "true", "false")),
    ], ipu_only=True),
    *_section("Data", [
        O("train_file", "str", None, "training TFRecords: glob(s), comma-separated"),
        O("eval_file", "str", None, "held-out TFRecords, evaluated every steps_per_eval steps"),
        O("steps_per_eval", "int", 0, "evaluation period on eval_file (0 = at the end only)"),
        O("vocab_file", "str", None, "WordPiece vocabulary, one token per line"),
        O("do_lower_case", "bool", False, "lower-case the text (must match vocab and data)"),
        O("seq_length", "int", 128, "sequence length"),
        O("duplicate_factor", "int", 5, "duplication factor of the data (to report epochs)"),
        O("parallel_io_threads", "int", 4, "files read and parsed in parallel"),
        O("sloppy_parallel_interleave", "bool", False,
          "allow non-deterministic file interleaving (reference default true; ours false: exact resume)"),
        O("generated_data", "bool", False, "random host-generated data; no train_file needed"),
        O("synthetic_data", "bool", False, "random data kept on the device, no input pipeline"),
        O("dataset_repeat", "int", 1, "dataset repeats", unused=True),
    ]),
    *_section("Logging", [
        O("steps_per_logs", "int", 1, "console log period in steps"),
        O("steps_per_tensorboard", "int", 0, "period of weight histograms/norms (<= 0: off)"),
        O("wandb", "bool", False, "log to Weights & Biases"),
        O("wandb_name", "str", None, "Weights & Biases run name"),
        O("wandb_project", "str", "tf-bert", "Weights & Biases project"),
        O("log_dir", "str", "./logs/", "log directory (logs go to save_path)", unused=True),
        O("name_suffix", "str", None, "run name suffix", unused=True),
    ]),
    *_section("Fine-tuning (SQuAD and GLUE)", [
        O("predict_file", "str", None, "SQuAD dev/test JSON"),
        O("output_dir", "str", None, "directory of predictions and result files"),
        O("doc_stride", "int", 128, "SQuAD sliding-window stride in tokens"),
        O("max_query_length", "int", 64, "SQuAD question tokens kept"),
        O("n_best_size", "int", 20, "SQuAD answer candidates per example"),
        O("max_answer_length", "int", 30, "SQuAD longest answer in tokens"),
        O("null_score_diff_threshold", "float", 0.0, "SQuAD 2.0: no answer if null - best > it"),
        O("verbose_logging", "bool", False, "log details of prediction post-processing"),
        O("do_training", "bool", False, "run training"),
        O("do_predict", "bool", False, "run prediction"),
        O("do_evaluation", "bool", False, "run evaluation"),
        O("tfrecord_dir", "str", None, "cache directory of the feature TFRecords"),
    ], scopes=("squad", "glue")),
    *_section("SQuAD", [
        O("version_2_with_negative", "bool", False, "SQuAD 2.0 (questions without answer)"),
        O("num_synthetic_dataset_samples", "int", 1000000, "size of the --generated-data set"),
    ], scopes=("squad",)),
    *_section("GLUE", [
        O("task_name", "str", "", "GLUE task"),
        O("data_dir", "str", None, "GLUE task folder"),
        O("buffer_size", "int", 10000, "shuffle buffer"),
        O("glue_dropout_prob", "float", 0.1, "dropout before the classifier"),
        O("num_seeds", "int", 1, "fine-tune this many times (seeds seed, seed+1, ...) and report "
          "mean and std of the dev metrics"),
    ], scopes=("glue",)),
]  # fmt: skip

SCHEMA = {o.key: o for o in OPTIONS}
SCOPES = ("common", "squad", "glue")
SQUAD_OPTIONS = [o for o in OPTIONS if "squad" in o.scopes]
GLUE_OPTIONS = [o for o in OPTIONS if "glue" in o.scopes]
POSITIVE = (
    "micro_batch_size", "global_batch_size", "gradient_accumulation_count", "replicas",
    "num_train_steps", "seq_length", "device_iterations", "steps_per_logs", "steps_per_ckpts",
    "max_to_keep", "max_predictions_per_seq",
)  # fmt: skip
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "glue_dropout_prob")


_RANK = {None: 0, "config": 1, "cli": 2}


def _source(opts, key):
    where = opts["_explicit"].get(key)
    if where == "cli":
        return f"--{key.replace('_', '-')}"
    return opts["config"] if where == "config" else "default"


def _fail(message):
    raise UserError(message, EX_USAGE)


def _derive_batch(opts, explicit):
    """Fill gradient_accumulation_count, global_batch_size and tokens_per_step."""
    gbs, ga = opts["global_batch_size"], opts["gradient_accumulation_count"]
    mbs, replicas = opts["micro_batch_size"], opts["replicas"]
    if mbs is None:
        if gbs is not None:
            _fail("global_batch_size needs micro_batch_size to derive gradient_accumulation_count")
        opts["tokens_per_step"] = None
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
                f"global_batch_size {gbs} ({_source(opts, 'global_batch_size')}) is not a "
                f"multiple of micro_batch_size x replicas = {mbs} x {replicas}; use {fix}"
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
            _fail(
                f"global_batch_size {gbs} and gradient_accumulation_count {ga} (both from "
                f"{_source(opts, 'global_batch_size').replace('--global-batch-size', 'flags')}) "
                "disagree: micro_batch_size x "
                f"gradient_accumulation_count x replicas = {mbs} x {ga} x {replicas} = "
                f"{per_step * ga}; give only one of them"
            )
    opts["global_batch_size"] = per_step * opts["gradient_accumulation_count"]
    opts["tokens_per_step"] = opts["global_batch_size"] * opts["seq_length"]


def _derive_vocab(opts, explicit):
    path = opts.get("vocab_file")
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
    except OSError as err:
        _fail(f"cannot read vocab_file {path} ({_source(opts, 'vocab_file')}): {err.strerror}")
    size = opts["vocab_size"]
    if size is None or _RANK[explicit.get("vocab_file")] > _RANK[explicit.get("vocab_size")]:
        opts["vocab_size"] = lines
    elif size < lines:
        # Larger is fine (padding rows, e.g. 30528 for a 30522-token vocab); smaller is not.
        _fail(
            f"vocab_size {size} ({_source(opts, 'vocab_size')}) is smaller than the {lines} "
            f"lines of vocab_file {path}; set vocab_size to {lines} or null"
        )


def _validate(opts):
    for key in POSITIVE:
        if opts.get(key) is not None and opts[key] < 1:
            _fail(f"{key} must be at least 1, got {opts[key]} ({_source(opts, key)})")
    for key in PROBABILITIES:
        if opts.get(key) is not None and not 0 <= opts[key] < 1:
            _fail(f"{key} must be in [0, 1), got {opts[key]} ({_source(opts, key)})")
    warmup = opts["warmup"]
    if not ((float(warmup).is_integer() and warmup >= 0) or 0 <= warmup < 1):
        _fail(
            f"warmup {warmup} ({_source(opts, 'warmup')}) must be an integer number of steps "
            "or a fraction in [0, 1)"
        )
    layers, stages = opts["num_hidden_layers"], opts["pipeline_stages"]
    if stages is not None and layers is not None:
        hid = sum(stage.count("hid") for stage in stages)
        if hid != layers:
            _fail(
                f"pipeline_stages has {hid} 'hid' layers but num_hidden_layers is {layers} "
                f"({_source(opts, 'pipeline_stages')})"
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
            f"({_source(opts, 'hidden_size')})"
        )


def _warn_ignored(opts, options):
    def changed(o):
        return o.key in opts["_explicit"] and opts[o.key] != o.default

    for flag, what in (("ipu_only", "IPU-only: no effect on CPU/GPU"), ("unused", "unused")):
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
      A plain dict with every option key of `groups` (resolved), plus "config" (path or None),
      "tokens_per_step" (int or None) and "_explicit" {key: "config" | "cli"} recording which keys
      were set explicitly and where. Derived values: gradient_accumulation_count and
      global_batch_size agree, vocab_size from vocab_file, a random seed if null,
      dynamic_loss_scaling resolved to a bool.

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
    cli = vars(parser.parse_args(argv))
    config_path = cli.pop("config", None)
    config = load_config(config_path, options) if config_path else {}
    opts = {o.key: o.default for o in options}
    for key, value in (defaults or {}).items():
        opts[key] = check_value(SCHEMA[key], value)
    explicit = {}
    for where, values in (("config", config), ("cli", cli)):
        opts.update(values)
        explicit.update(dict.fromkeys(values, where))
    opts["config"], opts["_explicit"] = config_path, explicit
    _derive_vocab(opts, explicit)
    _derive_batch(opts, explicit)
    _validate(opts)
    if opts["seed"] is None:
        opts["seed"] = secrets.randbits(32)
    if opts["dynamic_loss_scaling"] is None:
        opts["dynamic_loss_scaling"] = opts["precision"] == "16"
    _warn_ignored(opts, options)
    return opts


def format_resolved(opts):
    """Sorted `key: value` lines (values as JSON) of every option; "_" keys are left out."""
    return "\n".join(f"{k}: {json.dumps(opts[k])}" for k in sorted(opts) if not k.startswith("_"))


def save_resolved(opts, path):
    """Write the resolved options as JSON, atomically (temp file, then rename).

    Option keys are written as they are, other keys (config, tokens_per_step, _explicit) with a
    "_" prefix, so the file is itself a valid `--config`.
    """
    data = {(k if k in SCHEMA or k.startswith("_") else f"_{k}"): v for k, v in opts.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, data)


BERT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "max_predictions_per_seq",
    "use_attention_projection_bias", "use_cls_layer", "use_qkv_split", "use_qkv_bias",
    "use_prediction_bias", "static_mask", "layer_norm_eps", "position_offset", "groupbert",
    "groupbert_ffn_output_groups", "groupbert_conv_kernel_size", "groupbert_conv_group_size",
)  # fmt: skip


def bert_config_from_options(opts):
    """The BertConfig fields set in `opts` ({field: value}); null options are left out so that
    BertConfig's own defaults (and its validation of missing fields) apply. `recompute` comes from
    `enable_recomputation`."""
    fields = {k: opts[k] for k in BERT_CONFIG_KEYS if opts.get(k) is not None}
    fields["recompute"] = bool(opts.get("enable_recomputation", False))
    return fields
