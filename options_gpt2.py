"""train_gpt2.py's command line: the GPT-2 reference's flags, resolved into the loop's run config.

The flags keep the reference's names, defaults and boolean convention (`--flag`, `--flag True`,
`--flag false`, also `--no-flag`); `--config FILE.json` holds any of them as keys (underscores),
and an explicit flag beats the file, which beats the default. The seed README's older spellings
work too: `--train-path generated|tfrecord|dynamic|<file>.pkl` (with `--tfrecord-path FILES...` or
`--data-prefix PREFIX`), `--pretrained-checkpoint`, `--save-model-path`, `--compile-only True`.

IPU-only flags are accepted; set to anything but their default, one warning line lists them. Those
with a meaning here act: `--replication-factor` (data-parallel replicas), `--device-iterations`
(optimizer steps per compiled call), `--recompute-checkpoint-every-layer` /
`--recompute-checkpoint-layers` (gradient checkpointing per block), `--enable-sequence-serialized`
/ `--serialized-seq-len` / `--embedding-serialization-factor` (the LM head and loss in chunks:
same result, less memory), `--layers-per-ipu` (blocks per device: with more than one entry the
model runs as pipeline stages on that many GPUs, or logical CPU devices; see `pipeline`).

Units: `--log-steps`, `--save-per-steps` and the schedule's `--lr-warmup-steps` /
`--lr-decay-steps` count host iterations (one compiled call of `--device-iterations` optimizer
steps), as in the reference; the learning rate itself changes every optimizer step (the reference
changed it once per host iteration). `--training-steps`, dead in the reference, sets the number
of optimizer steps when given explicitly; otherwise the run lasts `--epochs` epochs.
"""

import dataclasses
import json
import os
import sys
import types

import options
from common import cli
from common.cli import EX_USAGE, Option, build_parser, load_config
from common.errors import UserError
from common.fileio import atomic_write_json

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = ("gpt2-test", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
DATASETS = ("generated", "mmap", "tfrecord", "pickle", "text")
OPTIMIZERS = {  # reference name -> (our optimizer, bias correction)
    "AdamW": ("adamw", False),
    "Adam": ("adam", True),
    "LAMB": ("lamb", True),
    "LAMBNoBiasCorrection": ("lamb", False),
}
cli.KINDS.setdefault(
    "int_list",
    (
        lambda v: (
            isinstance(v, int)
            and not isinstance(v, bool)
            or isinstance(v, list)
            and v
            and all(isinstance(i, int) for i in v)
        ),
        "an integer or a list of integers",
    ),
)


def _s(group, items, **fields):
    return [dataclasses.replace(o, group=group, **fields) for o in items]


O = Option  # noqa: E741
OPTIONS = [
    *_s("Model", [
        O("model", "str", "gpt2", "model size: configs/gpt2/<model>.json", choices=MODELS),
        O("model_config", "str", None, "a GPT-2 config.json (Hugging Face keys) to use instead "
          "of --model's, e.g. for other sizes"),
        O("max_len", "int", 128, "sequence length (model positions); sets n_positions of a new "
          "model"),
        O("precision", "str", "32", "compute: 32 = float32, bf16 = bfloat16, 16 = float16 "
          "(float32 weights and optimizer in every case)", choices=tuple(options.PRECISIONS)),
        O("xla", "bool", False, "compile the training step with XLA (off: GPT-2 small trains "
          "faster without it on CPUs, fp32 and bf16, benchmarks/gpt2.py; try it on GPUs)"),
        O("recompute_checkpoint_every_layer", "bool", False, "gradient checkpointing: recompute "
          "each block's activations in the backward pass (less memory, ~1/3 more compute)"),
        O("recompute_checkpoint_layers", "int_list", None, "with the above: only these blocks "
          "(0-based); null = all", nargs="+"),
        O("enable_sequence_serialized", "bool", False, "LM head and loss in chunks of "
          "serialized_seq_len positions, each recomputed in the backward pass (same loss, less "
          "memory)"),
        O("serialized_seq_len", "int", 128, "chunk length of the above"),
        O("embedding_serialization_factor", "int", 1, "LM head matmul in this many vocabulary "
          "chunks (same result); with sequence serialization, inside each chunk"),
        O("layers_per_ipu", "int_list", None, "blocks per device, summing to n_layer: pipeline "
          "stages on that many GPUs (or logical CPU devices); embeddings and LM head on device 0",
          nargs="+"),
    ]),
    *_s("Data", [
        O("dataset", "str", None, "data source: generated (random ids), mmap (Megatron "
          ".bin/.idx prefix), tfrecord (input_ids records), pickle (.pkl of token lists), text "
          "(plain text, tokenized and packed here)", choices=DATASETS),
        O("input_files", "str", None, "the .pkl, TFRecord globs, the mmap prefix (no .bin/.idx) "
          "or text files; several: comma-separated or space-separated", nargs="+"),
        O("vocab_file", "str", None, "--dataset text: GPT-2 vocab.json (or encoder.json)"),
        O("merges_file", "str", None, "--dataset text: GPT-2 merges.txt (or vocab.bpe)"),
        O("eval_files", "str", None, "held-out plain text (comma-separated), tokenized with "
          "--vocab-file/--merges-file: token-level loss and perplexity at the end of training "
          "(and every eval_steps host iterations)", nargs="+"),
        O("eval_steps", "int", None, "held-out evaluation period in host iterations; null = at "
          "the end only"),
        O("stride", "int", 128, "pickle: window stride in tokens"),
        O("seed", "int", 1234, "seed of the model's initial values, the data order and dropout"),
        O("num_workers", "int", 4, "parallel reads and parses of the input pipeline"),
        O("skip_corrupt_records", "bool", False, "--dataset tfrecord: skip the rest of a damaged "
          "file (cut short or failing a checksum) from its first damaged record, count it and go "
          "on (false: checkpoint the last completed step and stop with one line naming file and "
          "byte)"),
        O("val_num", "int", 0, "pickle samples held out (the reference never used them)",
          unused=True),
        O("async_dataloader", "bool", False, "asynchronous loading (tf.data always prefetches)",
          unused=True),
    ]),
    *_s("Training", [
        O("epochs", "int", 1, "passes over the data"),
        O("training_steps", "int", 10000, "optimizer steps; used only when given explicitly "
          "(else the epochs decide; the reference ignored it)"),
        O("batch_size", "int", 1, "micro-batch per replica (sequences per forward/backward)"),
        O("gradient_accumulation", "int", 1, "micro-batches per optimizer step"),
        O("replication_factor", "int", 1, "data-parallel replicas (devices) per worker process; "
          "several workers (TF_CONFIG or Slurm) multiply it"),
        O("collective_timeout", "float", 300.0, "several workers: seconds a step may wait for "
          "the others before the run stops with an error naming the lost worker"),
        O("device_iterations", "int", 4, "optimizer steps per compiled call (host iteration)"),
        O("optimizer", "str", "AdamW", "AdamW (no bias correction), Adam, LAMB, "
          "LAMBNoBiasCorrection; eps 1e-6, betas (0.9, 0.999), no gradient clipping",
          choices=tuple(OPTIMIZERS)),
        O("weight_decay", "float", 0.0, "decoupled weight decay of the >= 2-D weights"),
        O("learning_rate", "float", 1e-5, "peak learning rate"),
        O("lr_schedule", "str", "constant", "constant, linear or cosine (Hugging Face's, with "
          "linear warm-up; constant honours the warm-up, unlike the reference)",
          choices=("constant", "linear", "cosine")),
        O("lr_warmup", "float", 0.1, "warm-up as a fraction of the schedule's steps"),
        O("lr_warmup_steps", "int", None, "warm-up in host iterations (overrides lr_warmup)"),
        O("lr_decay_steps", "int", None, "schedule length in host iterations; null = the run's"),
        O("loss_scaling", "float", 50000.0, "precision 16: static loss scale (or where "
          "auto_loss_scaling starts, when given)"),
        O("auto_loss_scaling", "bool", False, "precision 16: dynamic loss scaling (skips "
          "overflowing steps)"),
        O("compile_only", "bool", False, "compile the step on one batch, report time and memory "
          "estimate, exit"),
    ]),
    *_s("Checkpoints and logs", [
        O("checkpoint_input_dir", "str", None, "start from this Hugging Face GPT-2 folder or our "
          "run/checkpoint (its config replaces --model/--max-len); with "
          "--resume-training-from-checkpoint: the run to resume",
          extra_flags=("--pretrained-checkpoint",)),
        O("checkpoint_output_dir", "str", None, "root of the run directory (default "
          "./checkpoints)", extra_flags=("--save-model-path",)),
        O("resume_training_from_checkpoint", "bool", False, "resume checkpoint_input_dir exactly: "
          "weights, optimizer, step and data position"),
        O("save_per_epochs", "int", 1, "checkpoint every n epochs"),
        O("save_per_steps", "int", None, "checkpoint every n host iterations (overrides "
          "save_per_epochs)"),
        O("max_to_keep", "int", 5, "checkpoints kept"),
        O("log_steps", "int", 1, "log every n host iterations"),
        O("use_wandb", "bool", False, "log to Weights & Biases (offline unless WANDB_API_KEY or "
          "WANDB_MODE say otherwise)"),
        O("wandb_project", "str", "torch-gpt2", "Weights & Biases project (the reference's name)"),
    ]),
    *_s("IPU only (accepted, no effect on CPU/GPU)", [
        O("custom_ops", "bool", True, "IPU custom ops"),
        O("ipus_per_replica", "int", 4, "IPUs per replica"),
        O("matmul_proportion", "floats", None, "per-IPU matmul memory proportion", nargs="+"),
        O("remap_logit", "bool", False, "tile remapping of the logits"),
        O("optimizer_state_offchip", "bool", True, "optimizer state in streaming memory"),
        O("replicated_tensor_sharding", "bool", False, "shard optimizer state over replicas"),
        O("enable_half_partials", "bool", False, "fp16 matmul partials (GPUs accumulate in fp32)"),
        O("executable_cache_dir", "str", None, "Poplar executable cache"),
    ], ipu_only=True),
    *_s("Seed-era spellings", [
        O("train_path", "str", None, "old --dataset: generated, tfrecord (with --tfrecord-path), "
          "dynamic (with --data-prefix) or a .pkl path"),
        O("tfrecord_path", "str", None, "old: TFRecord files (with --train-path tfrecord)",
          nargs="+"),
        O("data_prefix", "str", None, "old: mmap prefix (with --train-path dynamic)"),
    ]),
]  # fmt: skip
SCHEMA = {o.key: o for o in OPTIONS}


@dataclasses.dataclass(frozen=True)
class GPT2RunConfig(options.RunConfig):
    """The loop's RunConfig of a train_gpt2.py run, plus the reference-named settings.

    `args` holds every option of `OPTIONS` after resolution (read-only); `flat()` and `save()`
    show those (arguments.json reloads as a --config), not BERT's keys.
    """

    args: types.MappingProxyType = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )

    @property
    def a(self):
        """The resolved reference settings as attributes: `cfg.a.max_len`."""
        return types.SimpleNamespace(**self.args)

    def flat(self):
        return dict(self.args)

    def save(self, path):
        data = {**self.args, "_explicit": dict(self.explicit), "_config": self.config_path}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(path, data)

    def __contains__(self, key):
        return key in SCHEMA

    def __getitem__(self, key):
        return self.args[key]

    def with_length(self, steps_per_epoch, vocab_size):
        """The config once the data are known: run length, schedule, periods and W&B name.

        Args:
          steps_per_epoch: host iterations per epoch (>= 1).
          vocab_size: the model's vocabulary (for the reference's W&B run name).
        """
        a, di = self.a, self.loop.device_iterations
        if self.is_explicit("training_steps"):
            total = max(di, a.training_steps // di * di)
        else:
            total = steps_per_epoch * a.epochs * di
        decay = a.lr_decay_steps * di if a.lr_decay_steps else total
        if a.lr_warmup_steps is not None:
            warmup = a.lr_warmup_steps * di
        else:
            warmup = int(a.lr_warmup * decay)
        if a.save_per_steps:
            period = a.save_per_steps * di
        else:
            period = a.save_per_epochs * steps_per_epoch * di
        gbs = self.loop.global_batch_size
        return dataclasses.replace(
            self,
            loop=dataclasses.replace(self.loop, num_train_steps=total),
            schedule=dataclasses.replace(self.schedule, warmup=warmup, decay_steps=decay),
            checkpoint=dataclasses.replace(self.checkpoint, steps_per_ckpts=period),
            logging=dataclasses.replace(
                self.logging, wandb_name=f"{a.model}_{vocab_size}_sl{a.max_len}_gbs{gbs}"
            ),
        )


def _fail(message):
    raise UserError(message, EX_USAGE)


def _resolve_seed_era(v, explicit):
    """--train-path / --tfrecord-path / --data-prefix -> --dataset / --input-files."""
    if v["train_path"] is None:
        for key in ("tfrecord_path", "data_prefix"):
            if v[key] is not None:
                _fail(f"--{key.replace('_', '-')} needs --train-path (or use --dataset and "
                      "--input-files)")  # fmt: skip
        return
    path = v["train_path"]
    if path == "generated":
        dataset, files = "generated", None
    elif "tfrecord" in path:
        dataset, files = "tfrecord", v["tfrecord_path"]
        if not files:
            _fail("--train-path tfrecord needs --tfrecord-path FILE [FILE ...]")
    elif "dynamic" in path:
        dataset, files = "mmap", v["data_prefix"]
        if not files:
            _fail("--train-path dynamic needs --data-prefix PREFIX")
    else:
        dataset, files = "pickle", path
    if v["dataset"] is not None and v["dataset"] != dataset:
        _fail(f"--train-path {path} means --dataset {dataset}, but --dataset {v['dataset']} is set")
    v["dataset"] = dataset
    if files is not None:
        v["input_files"] = ",".join(files) if isinstance(files, list) else files
        explicit["input_files"] = "cli"
    explicit["dataset"] = "cli"


def _validate(v):
    if v["dataset"] is None:
        _fail("set --dataset: " + ", ".join(DATASETS) + " (or the seed-era --train-path)")
    if v["dataset"] != "generated" and not v["input_files"]:
        _fail(f"--dataset {v['dataset']} needs --input-files")
    for key, needs in (("dataset", v["dataset"] == "text"), ("eval_files", v["eval_files"])):
        if needs and not (v["vocab_file"] and v["merges_file"]):
            what = "--dataset text" if key == "dataset" else "--eval-files"
            _fail(f"{what} needs --vocab-file (vocab.json) and --merges-file (merges.txt)")
    for key in ("max_len", "batch_size", "gradient_accumulation", "replication_factor",
                "device_iterations", "epochs", "training_steps", "log_steps", "save_per_epochs",
                "serialized_seq_len", "embedding_serialization_factor", "stride", "max_to_keep",
                "eval_steps", "save_per_steps", "lr_decay_steps"):  # fmt: skip
        if v[key] is not None and v[key] < 1:
            _fail(f"--{key.replace('_', '-')} must be >= 1, got {v[key]}")
    if v["lr_warmup_steps"] is not None and v["lr_warmup_steps"] < 0:
        _fail(f"--lr-warmup-steps must be >= 0, got {v['lr_warmup_steps']}")
    if not 0 <= v["lr_warmup"] < 1:
        _fail(f"--lr-warmup is a fraction in [0, 1), got {v['lr_warmup']}")
    if v["weight_decay"] and v["optimizer"] == "Adam":
        _fail(
            "--weight-decay needs --optimizer AdamW, LAMB or LAMBNoBiasCorrection (Adam has none)"
        )
    for key in ("loss_scaling", "collective_timeout"):
        if v[key] <= 0:
            _fail(f"--{key.replace('_', '-')} must be > 0, got {v[key]}")
    if v["resume_training_from_checkpoint"] and not v["checkpoint_input_dir"]:
        _fail("--resume-training-from-checkpoint needs --checkpoint-input-dir (the run to resume)")


def warn_ignored(v, explicit, options=OPTIONS):
    """One warning line on stderr listing the IPU-only options set (given and not at their
    default), and one listing the options marked unused that are set.

    Args:
      v: {key: resolved value}; explicit: the keys given by the user; options: the schema.
    """

    def changed(o):
        return o.key in explicit and v[o.key] != o.default

    ipu = [o.key for o in options if o.ipu_only and changed(o)]
    if ipu:
        print(
            f"warning: IPU-only flags have no effect on CPU/GPU: {', '.join(ipu)}", file=sys.stderr
        )
    unused = [o.key for o in options if o.unused and changed(o)]
    if unused:
        print(f"warning: flags with no effect here: {', '.join(unused)}", file=sys.stderr)


def parse(argv=None, description=""):
    """Resolve train_gpt2.py's command line (and --config) into a `GPT2RunConfig`.

    Raises:
      UserError: one line, exit 64, for an unknown flag or key, a bad value or combination.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(OPTIONS, "train_gpt2.py", description, require_config=False)
    given = vars(parser.parse_args(argv))
    config_path = given.pop("config", None)
    config = load_config(config_path, OPTIONS) if config_path else {}
    v = {o.key: o.default for o in OPTIONS}
    explicit = {}
    for where, values in (("config", config), ("cli", given)):
        v.update(values)
        explicit.update(dict.fromkeys(values, where))
    for key in ("input_files", "eval_files"):
        if isinstance(v[key], list):
            v[key] = ",".join(v[key])
    _resolve_seed_era(v, explicit)
    _validate(v)
    warn_ignored(v, explicit)
    return _to_run_config(v, explicit, config_path)


def _to_run_config(v, explicit, config_path):
    from common import cluster

    bs, ga, rf = v["batch_size"], v["gradient_accumulation"], v["replication_factor"]
    replicas = rf * cluster.workers()  # every worker's replicas take part in a step
    optimizer, debias = OPTIMIZERS[v["optimizer"]]
    fp16 = v["precision"] == "16"
    loop = options.defaults(
        "loop",
        micro_batch_size=bs,
        gradient_accumulation_count=ga,
        replicas=rf,
        collective_timeout=v["collective_timeout"],
        global_batch_size=bs * ga * replicas,
        precision=v["precision"],
        xla=v["xla"],
        device_iterations=v["device_iterations"],
        compile_only=v["compile_only"],
        seed=v["seed"],
        loss_scaling=v["loss_scaling"] if fp16 else 1.0,
        dynamic_loss_scaling=bool(fp16 and v["auto_loss_scaling"]),
        tokens_per_step=bs * ga * replicas * v["max_len"],
    )
    groups = dict(
        model=options.defaults("model"),
        data=options.defaults(
            "data", seq_length=v["max_len"], skip_corrupt_records=v["skip_corrupt_records"]
        ),
        optimizer=options.defaults(
            "optimizer",
            optimizer=optimizer,
            beta1=0.9,
            beta2=0.999,
            epsilon=1e-6,
            weight_decay_rate=v["weight_decay"],
            use_debiasing=debias,
        ),
        schedule=options.defaults(
            "schedule", lr_schedule=v["lr_schedule"], base_learning_rate=v["learning_rate"]
        ),
        loop=loop,
        checkpoint=options.defaults(
            "checkpoint",
            save_path=v["checkpoint_output_dir"] or "checkpoints",
            restore_dir=v["checkpoint_input_dir"] if v["resume_training_from_checkpoint"] else None,
            max_to_keep=v["max_to_keep"],
        ),
        logging=options.defaults(
            "logging",
            steps_per_logs=v["log_steps"] * v["device_iterations"],
            steps_per_eval=(v["eval_steps"] or 0) * v["device_iterations"],
            wandb=v["use_wandb"],
            wandb_project=v["wandb_project"],
        ),
        finetune=options.defaults("finetune"),
        ipu=options.defaults("ipu"),
    )
    return GPT2RunConfig(
        task="gpt2",
        script="train_gpt2.py",
        config_path=config_path,
        explicit=types.MappingProxyType(dict(explicit)),
        args=types.MappingProxyType(dict(v)),
        **groups,
    )


def model_config_path(model):
    """configs/gpt2/<model>.json of this checkout."""
    return os.path.join(ROOT, "configs", "gpt2", f"{model}.json")


def format_resolved(cfg):
    """Sorted `key: value` lines of the run's reference settings."""
    return "\n".join(f"{k}: {json.dumps(cfg.args[k])}" for k in sorted(cfg.args))
