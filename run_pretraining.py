"""BERT pretraining (masked LM + next-sentence prediction) on CPUs and NVIDIA GPUs.

    python3 run_pretraining.py --config configs/pretrain_large_128_phase1.json [--flag value ...]

Every config key is also a flag (kebab case); an explicit flag beats the config, which beats the
default. Data: TFRecords from bert_data/create_pretraining_data.py (`--train-file`, comma-separated
globs; the remask layout when the config has static_mask), or `--generated-data`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import options
from bert_data.errors import UserError, cli_main


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


def make_evaluator(opts, model, files):
    """Held-out MLM/NSP loss and accuracy over one pass of `files` (weighted as the training loss)."""
    import tensorflow as tf

    from bert_data import pretraining

    dtype = {"32": tf.float32, "16": tf.float16, "bf16": tf.bfloat16}[opts["precision"]]

    @tf.function
    def sums(features):
        out = model(features, False, None, dtype)
        w = features["masked_lm_weights"]
        labels = features["masked_lm_ids"]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=out["mlm_logits"])
        hit = tf.cast(
            tf.equal(tf.argmax(out["mlm_logits"], -1, output_type=tf.int32), labels), w.dtype
        )
        nsp_labels = tf.reshape(features["next_sentence_labels"], [-1])
        nsp_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=nsp_labels, logits=out["nsp_logits"]
        )
        nsp_hit = tf.equal(tf.argmax(out["nsp_logits"], -1, output_type=tf.int32), nsp_labels)
        return tf.stack(
            [
                tf.reduce_sum(w * ce),
                tf.reduce_sum(w * hit),
                tf.reduce_sum(w),
                tf.reduce_sum(nsp_ce),
                tf.reduce_sum(tf.cast(nsp_hit, tf.float32)),
                tf.cast(tf.size(nsp_labels), tf.float32),
            ]
        )

    def evaluate(run):
        total = sum(sums(f).numpy() for f in pretraining.eval_dataset(files, opts))
        result = {
            "eval_mlm_loss": total[0] / max(total[2], 1e-9),
            "eval_mlm_acc": total[1] / max(total[2], 1e-9),
            "eval_nsp_loss": total[3] / max(total[5], 1),
            "eval_nsp_acc": total[4] / max(total[5], 1),
        }
        run.log(
            f"eval ({int(total[5])} sequences): "
            + ", ".join(f"{k[5:]}: {v:.5f}" for k, v in result.items())
        )
        run.scalars(opts["num_train_steps"], {k.replace("_", "/", 1): v for k, v in result.items()})
        opts["_eval"] = result

    return evaluate


@cli_main
def main(argv=None):
    opts = options.parse_options(argv, "run_pretraining.py", __doc__.split("\n\n")[0])
    if opts["task"] != "pretraining":
        raise UserError(f"task is {opts['task']!r}: run_pretraining.py runs task 'pretraining'")
    print(options.format_resolved(opts), flush=True)

    import modeling
    import training
    from bert_data import pretraining

    strategy = training.make_strategy(opts["replicas"])
    opts["_strategy"] = strategy
    config = modeling.BertConfig(**options.bert_config_from_options(opts))
    seq, masks = opts["seq_length"], opts["max_predictions_per_seq"]
    if opts["generated_data"] or opts["synthetic_data"]:
        dataset = pretraining.generated_dataset(opts, opts["seed"], config.vocab_size)
        if opts["synthetic_data"]:  # one batch, cached: measures the step without input work
            dataset = dataset.take(1).cache().repeat()
        opts["_num_samples"] = 10_000_000
    else:
        files = pretraining.expand_train_files(opts["train_file"])
        opts["_num_samples"] = pretraining.check_files(
            files, seq, masks, opts["static_mask"], config.vocab_size
        )
        dataset = pretraining.tfrecord_dataset(files, opts, opts["seed"])
    evaluate = None
    if opts.get("eval_file"):
        eval_files = pretraining.expand_train_files(opts["eval_file"])
        pretraining.check_files(eval_files, seq, masks, opts["static_mask"], config.vocab_size)
    with strategy.scope():
        model = modeling.BertModel(config, seed=opts["seed"])
    if opts.get("eval_file"):
        evaluate = make_evaluator(opts, model, eval_files)
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
