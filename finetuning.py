"""What run_squad.py and run_classifier.py share: options, model from a checkpoint, heads, data, loops.

Model configuration when fine-tuning from `--init-checkpoint`:
- Sizes, activation, LayerNorm epsilon and the bias/MLM switches come from the checkpoint (its
  folder's bert_config.json / config.json / arguments.json, checked against the tensors). A value
  that the config file or a flag sets explicitly and that contradicts the checkpoint is an error:
  the run would otherwise fine-tune a different model than the one the user named.
- Dropout rates and initializer_range are training settings: explicit options win, otherwise the
  checkpoint's config, otherwise BERT's defaults.
- The vocabulary is `--vocab-file`, or the checkpoint folder's vocab.txt; it may not have more
  tokens than the checkpoint has embedding rows. `--do-lower-case` is checked against the vocab
  (and against a Hugging Face folder's tokenizer_config.json when it says).

Heads (`cls/squad/output_*` for SQuAD, `glue_loss/output_*` for GLUE) start fresh unless the
checkpoint has them (a fine-tuned checkpoint); the run log says which.
"""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import options as options_module
from common.errors import UserError
from common.fileio import read_json

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
# Must agree with the checkpoint when set explicitly.
STRICT_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "use_qkv_bias",
    "use_attention_projection_bias", "position_offset", "groupbert",
    "groupbert_ffn_output_groups", "groupbert_conv_kernel_size", "groupbert_conv_group_size",
)  # fmt: skip
# Training settings: explicit options win, else the checkpoint's config.
SOFT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")
_SALT_CLASSIFIER = 999_983  # dropout salt of the classifier input (the encoder's are small)
HEAD_VARIABLES = {
    "squad": ("cls/squad/output_weights", "cls/squad/output_bias"),
    "classifier": ("glue_loss/output_weights", "glue_loss/output_bias"),
}


def parse(argv, script, description, scope, defaults):
    """Options of a fine-tuning script (scope "squad" or "glue"), with fine-tuning defaults."""
    opts = options_module.parse_options(
        argv, script, description, groups=("common", scope), defaults={**DEFAULTS, **defaults}
    )
    if not (opts["do_training"] or opts["do_predict"] or opts["do_evaluation"]):
        raise UserError(
            "nothing to do: give --do-training, --do-predict and/or --do-evaluation",
            options_module.EX_USAGE,
        )
    return opts


# ----------------------------------------------------------------------------- model configuration


def _explicit_source(opts, key):
    where = opts["_explicit"].get(key)
    if where == "cli":
        return "--" + key.replace("_", "-")
    return opts["config"] if where == "config" else None


def _folder_of(source_path):
    return source_path if os.path.isdir(source_path) else os.path.dirname(source_path)


def resolve_model(opts):
    """(modeling.BertConfig, interop.Source or None): the model to fine-tune, see the module doc."""
    import interop
    import modeling

    fields = options_module.bert_config_from_options(opts)
    fields.update(static_mask=False, max_predictions_per_seq=1)
    source = None
    if opts.get("init_checkpoint"):
        source = interop.read_checkpoint(opts["init_checkpoint"])
        given = source.config or interop.shape_fields(source.model)
        for key in STRICT_KEYS:
            if key not in given:
                continue
            where = _explicit_source(opts, key)
            if where and key != "vocab_size" and opts[key] != given[key]:
                raise UserError(
                    f"{key} is {opts[key]!r} in {where} but the checkpoint {source.path} has "
                    f"{given[key]!r}; remove it from the config or use a matching checkpoint"
                )
            fields[key] = given[key]
        for key in SOFT_KEYS:
            if key in given and not _explicit_source(opts, key):
                fields[key] = given[key]
        if source.config is None:
            missing = [
                k for k in ("num_attention_heads", "hidden_act") if not _explicit_source(opts, k)
            ]
            if missing:
                raise UserError(
                    f"no model config next to {source.path}: put its bert_config.json there or "
                    f"set {', '.join(missing)}"
                )
    _check_vocab(opts, fields, source)
    return modeling.BertConfig.from_dict(fields), source


def _check_vocab(opts, fields, source):
    """Fill vocab_file from the checkpoint folder; vocab and checkpoint must fit together."""
    if source is not None and not opts.get("vocab_file"):
        candidate = os.path.join(_folder_of(source.path), "vocab.txt")
        if os.path.isfile(candidate):
            opts["vocab_file"] = candidate
    if not opts.get("vocab_file"):
        if opts["generated_data"]:
            return
        raise UserError("--vocab-file is required (or a checkpoint folder holding vocab.txt)")
    with open(opts["vocab_file"], encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    if source is not None and lines > fields["vocab_size"]:
        raise UserError(
            f"vocab_file {opts['vocab_file']} has {lines} tokens but the checkpoint {source.path} "
            f"has {fields['vocab_size']} embedding rows: they do not belong together"
        )
    if "vocab_size" not in fields:
        fields["vocab_size"] = lines
    if source is not None and source.format == "hf":
        tokenizer_config = os.path.join(source.path, "tokenizer_config.json")
        lower = None
        if os.path.isfile(tokenizer_config):
            lower = read_json(tokenizer_config, "tokenizer config").get("do_lower_case")
        if isinstance(lower, bool) and lower != opts["do_lower_case"]:
            where = _explicit_source(opts, "do_lower_case")
            if where:
                raise UserError(
                    f"do_lower_case is {opts['do_lower_case']} in {where} but {tokenizer_config} "
                    f"says {lower}: the checkpoint was trained with the other casing"
                )
            opts["do_lower_case"] = lower


def tokenizer(opts):
    """The WordPiece tokenizer of the run (casing checked against the vocab)."""
    from bert_data import tokenization

    tok = tokenization.FullTokenizer(opts["vocab_file"], opts["do_lower_case"])
    tokenization.check_casing(tok.vocab, opts["do_lower_case"], opts["vocab_file"])
    return tok


def build_model(config, head, num_outputs, seed):
    """BertModel without pretraining heads, plus the task head's variables.

    Args:
      head: "squad" (start/end logits: [2,H] weights) or "classifier" ([num_outputs,H]).
    """
    import modeling

    model = modeling.BertModel(config, heads=(), seed=seed)
    weights, bias = HEAD_VARIABLES[head]
    size = 2 if head == "squad" else num_outputs
    modeling.add_variable(
        model.params,
        weights,
        [size, config.hidden_size],
        stddev=config.initializer_range,
        seed=seed,
    )
    modeling.add_variable(model.params, bias, [size], "zeros")
    return model


def initialiser(opts, source, model, head):
    """A callable(run) that loads the checkpoint into `model`, heads allowed to start fresh."""
    import interop

    def load(run):
        report = interop.load_into(source, model.params, allow_fresh=interop.head_prefixes([head]))
        run.log(report.summary())
        return report

    return load if source is not None else None


def train_or_load(opts, config, source, model, head, loss_fn, arrays):
    """Fine-tune `model` on `arrays` (--do-training) or load a fine-tuned checkpoint, head included.

    Training goes through the shared loop; the run directory (returned, None when only loading)
    gets a copy of the vocab, so it is itself a checkpoint that prediction can load.
    """
    import interop
    import modeling
    import training

    if not opts["do_training"]:
        if source is None:
            raise UserError(
                "--do-predict/--do-evaluation without --do-training need --init-checkpoint of a "
                "fine-tuned model"
            )
        print(interop.load_into(source, model.params).summary(), flush=True)
        return None
    training.train(
        opts,
        model,
        loss_fn,
        train_dataset(arrays, opts, opts["seed"]),
        flops_per_sample=modeling.pretraining_flops_per_sequence(config, opts["seq_length"], 0),
        tokens_fn=real_tokens,
        init_fn=initialiser(opts, source, model, head),
    )
    run_dir = opts["_run_dir"]
    vocab_copy = os.path.join(run_dir, "vocab.txt")
    if opts.get("vocab_file") and not os.path.exists(vocab_copy):
        shutil.copy(opts["vocab_file"], vocab_copy)
    return run_dir


# ----------------------------------------------------------------------------- model functions


def head_outputs(model, features, training, dropout_seed, compute_dtype, head, dropout=0.0):
    """Task logits from the encoder.

    Returns:
      squad: (start_logits, end_logits), float32 [B,S] each.
      classifier: float32 [B,num_outputs] from the pooled output (dropout `dropout` when training).
    """
    import tensorflow as tf

    import modeling

    weights, bias = (model.params[n] for n in HEAD_VARIABLES[head])
    if head == "squad":
        x, _ = modeling.bert_encoder(
            model.params, model.config, features, training, dropout_seed, compute_dtype
        )  # [B,S,H]
        logits = tf.einsum("bsh,kh->bks", x, tf.cast(weights, x.dtype))  # [B,2,S]
        logits = tf.cast(logits, tf.float32) + bias[tf.newaxis, :, tf.newaxis]
        return logits[:, 0], logits[:, 1]
    pooled = modeling.bert_pooled_output(
        model.params, model.config, features, training, dropout_seed, compute_dtype
    )  # [B,H]
    if training and dropout > 0:
        pooled = modeling.dropout(pooled, dropout, True, dropout_seed, salt=_SALT_CLASSIFIER)
    logits = tf.matmul(pooled, tf.cast(weights, pooled.dtype), transpose_b=True)  # [B,C]
    return tf.cast(logits, tf.float32) + bias


def real_tokens(features):
    """Non-pad tokens of a micro-batch (for tokens/s in the log)."""
    import tensorflow as tf

    return tf.reduce_sum(features["input_mask"])


def predict(opts, model, arrays, fn, names):
    """Run `fn(model, features)` over `arrays` in micro-batches (the last one padded).

    Args:
      arrays: {feature name: np.ndarray [N,...]} (model inputs).
      fn: traced (model, features) -> tuple of float32 tensors [B,...].
      names: names of fn's outputs.
    Returns:
      {name: np.ndarray [N,...]}.
    """
    import tensorflow as tf

    n = len(next(iter(arrays.values())))
    batch = opts["micro_batch_size"]
    padded = -(-n // batch) * batch
    inputs = {k: np.concatenate([v, np.repeat(v[-1:], padded - n, 0)]) for k, v in arrays.items()}
    step = tf.function(lambda f: fn(model, f), jit_compile=bool(opts["xla"]))
    outs = {name: [] for name in names}
    from tqdm import tqdm

    for start in tqdm(range(0, padded, batch), disable=None, leave=False, unit="batch"):
        got = step({k: tf.constant(v[start : start + batch]) for k, v in inputs.items()})
        for name, value in zip(names, got):
            outs[name].append(value.numpy())
    return {name: np.concatenate(v)[:n] for name, v in outs.items()}


# ----------------------------------------------------------------------------- data


def set_training_length(opts, num_examples):
    """num_train_steps from epochs (when not given), as the reference: (N // GBS) x epochs."""
    gbs = opts["global_batch_size"]
    if num_examples < gbs:
        raise UserError(
            f"{num_examples} training examples are fewer than one global batch ({gbs}); "
            "lower micro_batch_size/global_batch_size"
        )
    if opts["num_train_steps"] is None:
        opts["num_train_steps"] = max(1, num_examples // gbs * (opts["epochs"] or 1))
    opts["_num_samples"] = num_examples
    opts["duplicate_factor"] = 1  # the log's epoch counter is over the examples themselves


def train_dataset(arrays, opts, seed):
    """In-memory arrays -> one-step elements [GA, micro_batch, ...], reshuffled every epoch.

    The order is a stateless permutation of (seed, epoch), so the iterator's position is a single
    counter: checkpoints stay small and a resumed run sees exactly the batches it would have seen.
    """
    import tensorflow as tf

    n = len(next(iter(arrays.values())))
    tensors = {k: tf.constant(v) for k, v in arrays.items()}

    def example(i):
        epoch, index = i // n, i % n
        seed2 = tf.stack([tf.constant(seed % 2**31, tf.int64), epoch])
        j = tf.random.experimental.index_shuffle(index, seed2, n - 1)
        return {k: tf.gather(v, j) for k, v in tensors.items()}

    ds = tf.data.Dataset.range(2**62).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(opts["micro_batch_size"]).batch(opts["gradient_accumulation_count"])
    return ds.prefetch(2)


def generated_arrays(opts, num, vocab_size, extra):
    """Random well-formed inputs (`--generated-data`): ids, full masks, segment 0 then 1."""
    rng = np.random.default_rng(opts["seed"])
    seq = opts["seq_length"]
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


def output_dir(opts, run_dir=None):
    """Where predictions and results go: --output-dir, else the training run's directory."""
    path = opts.get("output_dir") or run_dir
    if path is None:
        path = os.path.join(opts["save_path"] or "checkpoints", f"{opts['task']}_predictions")
    os.makedirs(path, exist_ok=True)
    return path
