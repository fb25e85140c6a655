#!/usr/bin/env python3
"""BERT pretraining (masked LM + next-sentence prediction) on CPUs and NVIDIA GPUs.

    python3 run_pretraining.py --config configs/pretrain_large_128_phase1.json [--flag value ...]

Every config key is also a flag (kebab case); an explicit flag beats the config, which beats the
default. Data: TFRecords from bert_data/create_pretraining_data.py (`--train-file`, comma-separated
globs; the remask layout when the config has static_mask), or `--generated-data`.

model_type roberta (configs/pretrain_roberta_*.json): masked LM only, no NSP head, on packed
byte-level BPE ids from bert_data/create_mlm_data.py, masked anew every epoch in the input pipeline
(bert_data/mlm.py); vocab_size comes from tokenizer_file when the config leaves it null.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import options
from common.errors import UserError, cli_main


def pretraining_loss_fn(model, features, training, dropout_seed, compute_dtype):
    import modeling

    outputs = model(features, training, dropout_seed, compute_dtype)
    return modeling.pretraining_loss(outputs, features)


def real_tokens(features, static_mask, max_predictions):
    """Non-pad tokens in a micro-batch (traced inside the step, for tokens/s)."""
    import tensorflow as tf

    if static_mask:
        filled = features["seq_padding_index"] - max_predictions + features["mask_padding_index"]
        return tf.reduce_sum(filled)
    return tf.reduce_sum(features["input_mask"])


def make_evaluator(opts, model, dataset_fn):
    """Held-out MLM (and NSP, if the model has that head) loss and accuracy over one pass of
    `dataset_fn()`'s micro-batches, weighted as the training loss."""
    import tensorflow as tf

    dtype = {"32": tf.float32, "16": tf.float16, "bf16": tf.bfloat16}[opts["precision"]]
    has_nsp = "nsp" in model.heads

    @tf.function
    def sums(features):
        out = model(features, False, None, dtype)
        w = features["masked_lm_weights"]
        labels = features["masked_lm_ids"]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=out["mlm_logits"])
        hit = tf.cast(
            tf.equal(tf.argmax(out["mlm_logits"], -1, output_type=tf.int32), labels), w.dtype
        )
        sequences = tf.cast(tf.shape(labels)[0], tf.float32)
        nsp_ce = nsp_hits = tf.constant(0.0)
        if has_nsp:
            nsp_labels = tf.reshape(features["next_sentence_labels"], [-1])
            nsp_ce = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=nsp_labels, logits=out["nsp_logits"]
                )
            )
            nsp_hit = tf.equal(tf.argmax(out["nsp_logits"], -1, output_type=tf.int32), nsp_labels)
            nsp_hits = tf.reduce_sum(tf.cast(nsp_hit, tf.float32))
        return tf.stack(
            [
                tf.reduce_sum(w * ce),
                tf.reduce_sum(w * hit),
                tf.reduce_sum(w),
                nsp_ce,
                nsp_hits,
                sequences,
            ]
        )

    def evaluate(run):
        total = sum(sums(f).numpy() for f in dataset_fn())
        result = {
            "eval_mlm_loss": total[0] / max(total[2], 1e-9),
            "eval_mlm_acc": total[1] / max(total[2], 1e-9),
        }
        if has_nsp:
            result["eval_nsp_loss"] = total[3] / max(total[5], 1)
            result["eval_nsp_acc"] = total[4] / max(total[5], 1)
        run.log(
            f"eval ({int(total[5])} sequences): "
            + ", ".join(f"{k[5:]}: {v:.5f}" for k, v in result.items())
        )
        run.scalars(opts["num_train_steps"], {k.replace("_", "/", 1): v for k, v in result.items()})
        opts["_eval"] = result

    return evaluate


def roberta_masking(opts):
    """model_type roberta: checks the settings, fills vocab_size from the tokenizer; returns the
    bert_data.mlm.Masking of the tokenizer (RoBERTa's default ids for generated data without one)."""
    from bert_data import mlm

    if opts["static_mask"]:
        raise UserError("model_type roberta masks dynamically: set static_mask false")
    generated = opts["generated_data"] or opts["synthetic_data"]
    path = opts.get("tokenizer_file")
    if path and (os.path.exists(path) or not generated):
        masking = mlm.masking_from_tokenizer(path)
    elif not generated:
        raise UserError(
            "model_type roberta needs tokenizer_file (--tokenizer-file): the tokenizer.json of "
            "bert_data/create_bpe_tokenizer.py that made the data"
        )
    else:  # generated data and no tokenizer file: create_bpe_tokenizer's special ids
        if opts["vocab_size"] is None:
            raise UserError("model_type roberta: set vocab_size, or tokenizer_file to take it from")
        masking = mlm.Masking.roberta_ids(opts["vocab_size"])
    if opts["vocab_size"] is None:
        opts["vocab_size"] = masking.vocab_size
    if opts["vocab_size"] < masking.vocab_size:
        raise UserError(
            f"vocab_size {opts['vocab_size']} is smaller than the {masking.vocab_size} tokens of "
            f"tokenizer_file {path}; set vocab_size to {masking.vocab_size} or null"
        )
    seq, offset, rows = opts["seq_length"], opts["position_offset"], opts["max_position_embeddings"]
    if rows is not None and seq + offset > rows:
        raise UserError(
            f"seq_length {seq} + position_offset {offset} exceeds max_position_embeddings {rows}"
        )
    return masking


@cli_main
def main(argv=None):
    opts = options.parse_options(argv, "run_pretraining.py", __doc__.split("\n\n")[0])
    if opts["task"] != "pretraining":
        raise UserError(f"task is {opts['task']!r}: run_pretraining.py runs task 'pretraining'")
    roberta = opts["model_type"] == "roberta"
    masking = roberta_masking(opts) if roberta else None
    print(options.format_resolved(opts), flush=True)

    import modeling
    import training
    from bert_data import mlm, pretraining

    strategy = training.make_strategy(opts["replicas"])
    opts["_strategy"] = strategy
    config = modeling.BertConfig(**options.bert_config_from_options(opts))
    seq, masks = opts["seq_length"], opts["max_predictions_per_seq"]
    if opts["generated_data"] or opts["synthetic_data"]:
        if roberta:
            dataset = mlm.generated_dataset(opts, opts["seed"], masking)
        else:
            dataset = pretraining.generated_dataset(opts, opts["seed"], config.vocab_size)
        if opts["synthetic_data"]:  # one batch, cached: measures the step without input work
            dataset = dataset.take(1).cache().repeat()
        opts["_num_samples"] = 10_000_000
    else:
        files = pretraining.expand_train_files(opts["train_file"])
        if roberta:
            opts["_num_samples"] = mlm.check_files(files, seq, config.vocab_size)
            dataset = mlm.mlm_dataset(files, opts, opts["seed"], masking)
        else:
            if mlm.is_mlm_data(files[0]):
                raise UserError(
                    f"{files[0]} holds packed ids from create_mlm_data.py: set model_type roberta"
                )
            opts["_num_samples"] = pretraining.check_files(
                files, seq, masks, opts["static_mask"], config.vocab_size
            )
            dataset = pretraining.tfrecord_dataset(files, opts, opts["seed"])
    evaluate = None
    if opts.get("eval_file"):
        eval_files = pretraining.expand_train_files(opts["eval_file"])
        if roberta:
            mlm.check_files(eval_files, seq, config.vocab_size)
            eval_data = lambda: mlm.eval_dataset(eval_files, opts, masking)  # noqa: E731
        else:
            pretraining.check_files(eval_files, seq, masks, opts["static_mask"], config.vocab_size)
            eval_data = lambda: pretraining.eval_dataset(eval_files, opts)  # noqa: E731
    with strategy.scope():
        model = modeling.BertModel(
            config, heads=("mlm",) if roberta else ("mlm", "nsp"), seed=opts["seed"]
        )
    if opts.get("eval_file"):
        evaluate = make_evaluator(opts, model, eval_data)
    metrics = training.train(
        opts,
        model,
        pretraining_loss_fn,
        dataset,
        flops_per_sample=modeling.pretraining_flops_per_sequence(config, seq, masks),
        tokens_fn=lambda features: real_tokens(features, opts["static_mask"], masks),
        evaluate=evaluate,
    )
    if opts["compile_only"]:
        print("Training graph successfully compiled")
        return 0
    final = opts.get("_eval") or {k: v for k, v in metrics.items() if k.endswith(("_loss", "_acc"))}
    if final:
        print("final: " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
