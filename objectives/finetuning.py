"""What the SQuAD and GLUE tasks share: options, the model from a checkpoint, heads, data, prediction.

Model configuration when fine-tuning from `--init-checkpoint` (read by `interop.read_checkpoint`, the
one resolver of checkpoint paths):
- The "architecture" fields of model_config.BertConfig (sizes, activation, LayerNorm epsilon, bias
  switches) come from the checkpoint (its folder's bert_config.json / config.json / arguments.json,
  checked against the tensors). A value that the config file or a flag sets explicitly and that
  contradicts the checkpoint is an error: the run would otherwise fine-tune a different model than
  the one the user named.
- The "training" fields (dropout rates, initializer_range): explicit options win, otherwise the
  checkpoint's config, otherwise BERT's defaults.
- The vocabulary is `--vocab-file`, or the vocab found beside the checkpoint; it may not have more
  tokens than the checkpoint has embedding rows. `--do-lower-case` is checked against the vocab
  (and against the casing the checkpoint's folder records, when it does).

Heads (`cls/squad/output_*` for SQuAD, `glue_loss/output_*` for GLUE) start fresh unless the
checkpoint has them (a fine-tuned checkpoint); the run log says which.
"""

import dataclasses
import os
import shutil

import numpy as np

import interop
import model_config
import options
from common import cluster
from common.errors import UserError

# Fine-tuning defaults (the reference's fine-tuning configs): AdamW, warm-up then linear decay.
DEFAULTS = {
    "optimizer": "adamw",
    "weight_decay_rate": 0.01,
    "epsilon": 1e-6,
    "lr_schedule": "polynomial_decay",
    "warmup": 0.1,
    "precision": "32",
    "micro_batch_size": 32,
    "steps_per_ckpts": 1_000_000,  # the final checkpoint only (the reference's GLUE configs: 99999)
    "steps_per_logs": 10,
    "max_predictions_per_seq": 1,  # no MLM head; keeps the pretraining-only check quiet
}
_SALT_CLASSIFIER = 999_983  # dropout salt of the classifier input (the encoder's are small)
HEAD_VARIABLES = {head: interop.head_variables(head) for head in ("squad", "classifier")}


def parse(argv, script, description, scope, defaults):
    """RunConfig of a fine-tuning script (scope "squad" or "glue"), with fine-tuning defaults."""
    cfg = options.parse_options(
        argv, script, description, groups=("common", scope), defaults={**DEFAULTS, **defaults}
    )
    tune = cfg.finetune
    if not (tune.do_training or tune.do_predict or tune.do_evaluation):
        raise UserError(
            "nothing to do: give --do-training, --do-predict and/or --do-evaluation",
            options.EX_USAGE,
        )
    return cfg


# ----------------------------------------------------------------------------- model configuration


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The model to fine-tune: its config, the checkpoint it comes from, the vocab and casing.

    Attributes:
      config: model_config.BertConfig.
      source: interop.Source of --init-checkpoint, or None.
      cfg: the RunConfig with vocab_file and do_lower_case filled from the checkpoint's folder.
    """

    config: model_config.BertConfig
    source: object
    cfg: object


def resolve_model(cfg):
    """The model to fine-tune (see the module docstring); returns `Resolved`."""
    fields = options.bert_config_fields(cfg)
    fields.update(static_mask=False, max_predictions_per_seq=1)
    source = None
    if cfg.checkpoint.init_checkpoint:
        source = interop.read_checkpoint(cfg.checkpoint.init_checkpoint)
        given = source.config or interop.shape_fields(source.model)
        for key in model_config.fields_of_kind("architecture"):
            if key not in given:
                continue
            mine = cfg[key]
            if cfg.is_explicit(key) and key != "vocab_size" and mine != given[key]:
                raise UserError(
                    f"{key} is {mine!r} in {cfg.source(key)} but the checkpoint {source.path} has "
                    f"{given[key]!r}; remove it from the config or use a matching checkpoint"
                )
            fields[key] = given[key]
        for key in model_config.fields_of_kind("training"):
            if key in given and not cfg.is_explicit(key):
                fields[key] = given[key]
        if source.config is None:
            missing = [k for k in ("num_attention_heads", "hidden_act") if not cfg.is_explicit(k)]
            if missing:
                raise UserError(
                    f"no model config next to {source.path}: put its bert_config.json there or "
                    f"set {', '.join(missing)}"
                )
    cfg = _check_vocab(cfg, fields, source)
    return Resolved(model_config.BertConfig.from_dict(fields), source, cfg)


def _check_vocab(cfg, fields, source):
    """Fill vocab_file and casing from the checkpoint; vocab and checkpoint must fit together."""
    vocab_file, lower = cfg.data.vocab_file, cfg.data.do_lower_case
    if source is not None and not vocab_file:
        vocab_file = source.vocab_file
    if not vocab_file:
        if cfg.data.generated_data:
            return cfg
        raise UserError("--vocab-file is required (or a checkpoint folder holding vocab.txt)")
    with open(vocab_file, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    if source is not None and lines > fields["vocab_size"]:
        raise UserError(
            f"vocab_file {vocab_file} has {lines} tokens but the checkpoint {source.path} "
            f"has {fields['vocab_size']} embedding rows: they do not belong together"
        )
    if "vocab_size" not in fields:
        fields["vocab_size"] = lines
    if source is not None and source.format == "hf" and source.do_lower_case is not None:
        if source.do_lower_case != lower and cfg.is_explicit("do_lower_case"):
            raise UserError(
                f"do_lower_case is {lower} in {cfg.source('do_lower_case')} but the checkpoint "
                f"{source.path} was trained with do_lower_case {source.do_lower_case}: the other "
                "casing"
            )
        lower = source.do_lower_case
    return cfg.updated(vocab_file=vocab_file, do_lower_case=lower)


def tokenizer(cfg):
    """The WordPiece tokenizer of the run (casing checked against the vocab, specials present)."""
    from bert_data import tokenization

    tok = tokenization.FullTokenizer(cfg.data.vocab_file, cfg.data.do_lower_case)
    tokenization.check_special_tokens(
        tok.vocab, cfg.data.vocab_file, tokenization.TASK_SPECIAL_TOKENS
    )
    tokenization.check_casing(tok.vocab, cfg.data.do_lower_case, cfg.data.vocab_file)
    return tok


def placement(cfg, config):
    """The run's pipeline stages (`pipeline.Placement`), or None on one device."""
    import pipeline

    return pipeline.from_bert(
        cfg.model.pipeline_stages, cfg.model.device_mapping, config.num_hidden_layers
    )


def build_model(cfg, config, head, num_outputs, seed, strategy, stages=None):
    """BertModel without pretraining heads, plus the task head's variables, under `strategy`.

    Args:
      head: "squad" (start/end logits: [2,H] weights) or "classifier" ([num_outputs,H]).
      stages: the `pipeline.Placement` given to `training.make_strategy`, or None.
    """
    import modeling
    import modeling_ops
    import training

    # The grouped ops' method follows whether the step is compiled.
    xla = training.compiles_with_xla(cfg.loop, strategy, stages)
    with strategy.scope(), modeling_ops.placed(stages):
        model = modeling.BertModel(config, heads=(), seed=seed, xla=xla)
        weights, bias = HEAD_VARIABLES[head]
        size = 2 if head == "squad" else num_outputs
        modeling_ops.add_variable(
            model.params,
            weights,
            [size, config.hidden_size],
            stddev=config.initializer_range,
            seed=seed,
        )
        modeling_ops.add_variable(model.params, bias, [size], "zeros")
    model.placement = stages
    return model


def train_or_load(cfg, resolved, strategy, model, head, loss_fn, arrays, evaluate=None):
    """Fine-tune `model` on `arrays` (--do-training) or load a fine-tuned checkpoint, head included.

    Loading happens here, before the loop. Training goes through the shared loop; the run
    directory (returned, None when only loading) gets a copy of the vocab, so it is itself a
    checkpoint that prediction can load. `evaluate`: callable(step) -> {metric: float} run every
    steps_per_eval steps (and after the last).
    """
    import objectives

    source = resolved.source
    if not cfg.finetune.do_training:
        if source is None:
            raise UserError(
                "--do-predict/--do-evaluation without --do-training need --init-checkpoint of a "
                "fine-tuned model"
            )
        print(interop.load_into(source, model.params).summary(), flush=True)
        return None

    def init(trainer):
        if source is None:
            return []
        fresh = interop.head_prefixes([head])
        return [interop.load_into(source, model.params, allow_fresh=fresh).summary()]

    dataset = train_dataset(arrays, cfg, cfg.loop.seed)
    flops = flops_per_sample(resolved.config, cfg.data.seq_length)
    if getattr(cfg.finetune, "pack_sequences", 0):  # R rows of seq_length for mb examples
        flops *= dataset.element_spec["input_ids"].shape[1] / cfg.loop.micro_batch_size
    result = objectives.fit(
        cfg,
        strategy,
        model,
        loss_fn,
        dataset,
        tokens_fn=real_tokens,
        samples_per_epoch=len(arrays["input_ids"]),
        # MFU counts the positions of each step; length-bucketed steps vary (not counted).
        flops_per_sample=None if cfg.finetune.length_bucket else flops,
        init=init,
        evaluate=evaluate,
    )
    if result.run_dir is None or not cluster.is_chief():  # compile only, or a deleted temp dir
        return None
    vocab_copy = os.path.join(result.run_dir, "vocab.txt")
    if cfg.data.vocab_file and not os.path.exists(vocab_copy):
        shutil.copy(cfg.data.vocab_file, vocab_copy)
    return result.run_dir


def flops_per_sample(config, seq_length):
    import modeling

    return modeling.pretraining_flops_per_sequence(config, seq_length, 0)


# ----------------------------------------------------------------------------- model functions


def head_outputs(
    model, features, training, dropout_seed, compute_dtype, head, dropout=0.0, xla=None
):
    """Task logits from the encoder.

    `xla` says whether the calling function is XLA-compiled (default: the model's setting).

    Returns:
      squad: (start_logits, end_logits), float32 [B,S] each.
      classifier: float32 [B,num_outputs] from the pooled output (dropout `dropout` when training).
    """
    import modeling
    import modeling_ops

    xla = model.xla if xla is None else xla
    weights, bias = (model.params[n] for n in HEAD_VARIABLES[head])
    if head == "squad":
        x, _ = modeling.bert_encoder(
            model.params, model.config, features, training, dropout_seed, compute_dtype, xla=xla
        )  # [B,S,H]
        with modeling_ops.stage("cls"):
            return modeling.span_logits(x, weights, bias)
    pooled = modeling.bert_pooled_output(
        model.params, model.config, features, training, dropout_seed, compute_dtype, xla=xla
    )  # [B,H]
    with modeling_ops.stage("cls"):
        if training and dropout > 0:
            pooled = modeling_ops.dropout(
                pooled, dropout, True, dropout_seed, salt=_SALT_CLASSIFIER
            )
        return modeling.classifier_logits(pooled, weights, bias)


def real_tokens(features):
    """Non-pad tokens of a micro-batch (for tokens/s in the log)."""
    import tensorflow as tf

    return tf.reduce_sum(features["input_mask"])


def predict(cfg, model, arrays, fn, names, bucket=0):
    """Run `fn(model, features)` over `arrays` in micro-batches (the last one padded).

    Args:
      arrays: {feature name: np.ndarray [N,...]} (model inputs).
      fn: traced (model, features, xla) -> tuple of float32 tensors [B,...]; xla says whether
        the function is XLA-compiled (it is when the run's xla option is on).
      names: names of fn's outputs.
      bucket: 0, or N: the examples go by real length (input_mask) and each batch is cut to its
        longest, rounded up to a multiple of N (same values up to float rounding; fn's outputs
        must not have a sequence axis).
    Returns:
      {name: np.ndarray [N,...]}, in the order of `arrays`.
    """
    import tensorflow as tf

    n = len(next(iter(arrays.values())))
    batch = cfg.loop.micro_batch_size
    padded = -(-n // batch) * batch
    order = np.argsort(arrays["input_mask"].sum(1), kind="stable") if bucket else np.arange(n)
    order = np.concatenate([order, np.repeat(order[-1:], padded - n)])
    inputs = {k: v[order] for k, v in arrays.items()}
    xla = bool(cfg.loop.xla)
    step = tf.function(lambda f: fn(model, f, xla), jit_compile=xla)
    outs = {name: [] for name in names}
    from tqdm import tqdm

    for start in tqdm(range(0, padded, batch), disable=None, leave=False, unit="batch"):
        features = {k: tf.constant(v[start : start + batch]) for k, v in inputs.items()}
        if bucket:
            features = trim_to_length(features, bucket)
        got = step(features)
        for name, value in zip(names, got):
            outs[name].append(value.numpy())
    result = {}
    for name, values in outs.items():
        got = np.concatenate(values)[:n]
        result[name] = np.empty_like(got)
        result[name][order[:n]] = got  # back to the order of `arrays`
    return result


def compute_dtype(cfg):
    import tensorflow as tf

    return tf.as_dtype(cfg.loop.compute_dtype)


# ----------------------------------------------------------------------------- data


def with_training_length(cfg, num_examples):
    """cfg with num_train_steps from the epochs when not given, as the reference: (N // GBS) x
    epochs (then rounded to device_iterations like every step count)."""
    gbs = cfg.loop.global_batch_size
    if num_examples < gbs:
        raise UserError(
            f"{num_examples} training examples are fewer than one global batch ({gbs}); "
            "lower micro_batch_size/global_batch_size"
        )
    if cfg.loop.num_train_steps is not None:
        return cfg
    return cfg.updated(num_train_steps=max(1, num_examples // gbs * (cfg.loop.epochs or 1)))


def train_dataset(arrays, cfg, seed):
    """In-memory arrays -> one-step elements [GA, micro_batch, ...], reshuffled every epoch.

    The order is a stateless permutation of (seed, epoch), so the iterator's position is a single
    counter: checkpoints stay small and a resumed run sees exactly the batches it would have seen.
    With `buffer_size` (GLUE) smaller than the data, examples are shuffled within consecutive
    windows of that many and the full windows' order is shuffled too (a shorter last window stays
    last), so, as with a shuffle buffer, that setting bounds how the data is mixed.

    With `length_bucket` N > 0, the examples of WINDOW_STEPS consecutive steps are sorted by real
    length, cut into steps whose order is shuffled, and each step is cut to its longest example
    rounded up to a multiple of N: steps of similar lengths and little padding (the step is traced
    once per length, at most S/N times).
    """
    import tensorflow as tf

    n = len(next(iter(arrays.values())))
    tensors = {k: tf.constant(v) for k, v in arrays.items()}
    window = min(cfg.finetune.buffer_size or n, n)
    full = n // window  # windows of `window` examples; a shorter last one stays last

    def example_index(i):
        """Position i of the endless stream -> example index (epoch-wise shuffled)."""
        epoch, index = i // n, i % n
        seed2 = tf.stack([tf.constant(seed % 2**31, tf.int64), epoch])
        if window == n:
            j = tf.random.experimental.index_shuffle(index, seed2, n - 1)
        else:
            block, offset = index // window, index % window
            last = block >= full  # the shorter last window: shuffled within itself
            order = tf.where(
                last,
                block,  # (both branches run: the shuffle gets an in-range index either way)
                tf.random.experimental.index_shuffle(tf.minimum(block, full - 1), seed2, full - 1),
            )
            size = tf.where(last, tf.constant(n - full * window, tf.int64), window)
            j = order * window + tf.random.experimental.index_shuffle(offset, seed2 + 1, size - 1)
        return j

    per_pack = getattr(cfg.finetune, "pack_sequences", 0)
    if per_pack:
        return _packed_dataset(tensors, example_index, cfg, per_pack)
    # --compile-only compiles the full-length step, the largest of the bucketed ones.
    bucket = (
        0 if cfg.loop.compile_only or "input_mask" not in arrays else cfg.finetune.length_bucket
    )
    mb, ga = cfg.loop.micro_batch_size, cfg.loop.gradient_accumulation_count
    if bucket:
        ds = _sorted_windows(tensors, example_index, mb * ga, seed).map(
            lambda j: {k: tf.gather(v, j) for k, v in tensors.items()}
        )
    else:
        ds = tf.data.Dataset.range(2**62).map(
            lambda i: {k: tf.gather(v, example_index(i)) for k, v in tensors.items()},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    # An endless stream: drop_remainder only makes the batch sizes static (--compile-only).
    ds = ds.batch(mb, drop_remainder=True).batch(ga, drop_remainder=True)
    if bucket:
        ds = ds.map(lambda step: trim_to_length(step, bucket))
    return ds.prefetch(2)


def _packed_dataset(tensors, example_index, cfg, per_pack):
    """The unpacked stream's micro-batches, each packed into the same number of rows
    (objectives/packed_batches.py), for the run's steps."""
    import tensorflow as tf

    from objectives import packed_batches

    loop = cfg.loop
    mb = loop.micro_batch_size
    micro_batches = (loop.num_train_steps + packed_batches.PREFETCH_STEPS) * (
        loop.global_batch_size // mb
    )
    positions = tf.data.Dataset.range(micro_batches * mb).map(
        example_index, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    order = np.concatenate([b.numpy() for b in positions.batch(1 << 16)])
    lengths = tensors["input_mask"].numpy().sum(-1)
    plan = packed_batches.plan(lengths, order, mb, per_pack, cfg.data.seq_length)
    print(packed_batches.describe(plan, lengths, order, cfg.data.seq_length), flush=True)
    members = tf.constant(plan)
    ds = tf.data.Dataset.range(micro_batches).map(
        lambda m: packed_batches.packed_micro_batch(
            tensors, tf.gather(members, m), cfg.data.seq_length
        )
    )
    return ds.batch(loop.gradient_accumulation_count, drop_remainder=True).prefetch(2)


WINDOW_STEPS = 64  # length bucketing sorts the examples of this many steps at a time


def _sorted_windows(tensors, index, step, seed):
    """Example indices, WINDOW_STEPS steps at a time: the window's examples (in the shuffled
    order `index` gives) sorted by real length, cut into steps, the steps in a shuffled order."""
    import tensorflow as tf

    lengths = tf.reduce_sum(tf.cast(tensors["input_mask"], tf.int32), -1)
    size = WINDOW_STEPS * step

    def window(w):
        js = tf.map_fn(index, w * size + tf.range(size, dtype=tf.int64))
        js = tf.gather(js, tf.argsort(tf.gather(lengths, js), stable=True))
        seed2 = tf.stack([tf.constant(seed % 2**31 + 1, tf.int64), w])
        steps = tf.random.experimental.index_shuffle(
            tf.range(WINDOW_STEPS, dtype=tf.int64), seed2, WINDOW_STEPS - 1
        )
        return tf.reshape(tf.gather(tf.reshape(js, [WINDOW_STEPS, step]), steps), [-1])

    return tf.data.Dataset.range(2**62 // size).map(window).unbatch()


def trim_to_length(features, bucket):
    """Features [..., S] cut to the longest real length among them (input_mask), rounded up to a
    multiple of `bucket` (at most S): the model masks padding, so only padding is dropped."""
    import tensorflow as tf

    mask = features["input_mask"]
    seq = mask.shape[-1]
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), -1))
    keep = tf.minimum(-(-longest // bucket) * bucket, seq)
    rank = len(mask.shape)
    return {
        k: v[..., :keep] if len(v.shape) == rank and v.shape[-1] == seq else v
        for k, v in features.items()
    }


def generated_arrays(cfg, num, vocab_size, extra):
    """Random well-formed inputs (`--generated-data`): ids, full masks, segment 0 then 1."""
    rng = np.random.default_rng(cfg.loop.seed)
    seq = cfg.data.seq_length
    ids = rng.integers(5, vocab_size, size=(num, seq), dtype=np.int32)
    segments = np.zeros((num, seq), np.int32)
    segments[:, seq // 2 :] = 1
    arrays = {
        "input_ids": ids,
        "input_mask": np.ones((num, seq), np.int32),
        "segment_ids": segments,
    }
    arrays.update(extra(rng, num))
    return arrays


def output_dir(cfg, run_dir=None):
    """Where predictions and results go: --output-dir, else the training run's directory."""
    path = cfg.finetune.output_dir or run_dir
    if path is None:
        path = os.path.join(cfg.checkpoint.save_path or "checkpoints", f"{cfg.task}_predictions")
    os.makedirs(path, exist_ok=True)
    return path
