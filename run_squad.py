#!/usr/bin/env python3
"""Fine-tune BERT on SQuAD 1.1 / 2.0, predict answers and score them with the official metrics.

    python3 run_squad.py --config configs/squad_base.json --init-checkpoint CKPT \
        --train-file train-v1.1.json --predict-file dev-v1.1.json \
        --do-training --do-predict --do-evaluation

Phases, in any combination: --do-training (train_file), --do-predict (answers for predict_file:
predictions.json, nbest_predictions.json and, for 2.0, null_odds.json in output_dir),
--do-evaluation (official EM/F1 of those predictions against predict_file; for 2.0 also the
HasAns/NoAns split and the best no-answer threshold). Features are cached in tfrecord_dir, keyed by
everything they depend on. Every config key is also a flag.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import finetuning
from common.errors import UserError, cli_main

INPUTS = ("input_ids", "input_mask", "segment_ids")


def squad_loss_fn(model, features, training, dropout_seed, compute_dtype):
    """Mean of the start and end cross-entropies over the sequence positions (Google's loss)."""
    import tensorflow as tf

    start, end = finetuning.head_outputs(
        model, features, training, dropout_seed, compute_dtype, "squad"
    )
    losses = [
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(features[name], tf.int32), logits=logits
        )
        for name, logits in (("start_positions", start), ("end_positions", end))
    ]
    return {"loss": tf.reduce_mean((losses[0] + losses[1]) / 2.0)}


def _features(opts, path, is_training):
    from bert_data import squad

    tokenizer = finetuning.tokenizer(opts)
    examples, features = squad.load_or_build_features(
        path,
        tokenizer,
        opts["vocab_file"],
        opts["do_lower_case"],
        opts["seq_length"],
        opts["doc_stride"],
        opts["max_query_length"],
        is_training,
        opts["version_2_with_negative"],
        cache_dir=opts.get("tfrecord_dir"),
    )
    print(
        f"{path}: {len(examples)} examples -> {len(features)} features "
        f"({'training' if is_training else 'prediction'})",
        flush=True,
    )
    return examples, features


def _generated(opts, vocab_size):
    seq = opts["seq_length"]

    def extra(rng, n):
        starts = rng.integers(seq // 2, seq - 4, n).astype(np.int32)
        return {"start_positions": starts, "end_positions": starts + rng.integers(0, 3, n)}

    num = min(opts["num_synthetic_dataset_samples"], 512)
    return finetuning.generated_arrays(opts, num, vocab_size, extra)


def predict_logits(opts, model, features):
    """{unique_id: (start_logits [S], end_logits [S])} for every feature."""
    import training

    dtype = training.COMPUTE_DTYPES[opts["precision"]]

    def fn(model, batch):
        return finetuning.head_outputs(model, batch, False, None, dtype, "squad")

    arrays = {name: getattr(features, name) for name in INPUTS}
    out = finetuning.predict(opts, model, arrays, fn, ["start", "end"])
    return {int(uid): (out["start"][i], out["end"][i]) for i, uid in enumerate(features.unique_ids)}


def evaluate(opts, prediction_paths):
    """Official SQuAD scores of the written predictions against predict_file; returns the dict."""
    from bert_data import squad_metrics
    from common.fileio import atomic_write_json, read_json

    data = read_json(opts["predict_file"], "SQuAD file")["data"]
    with open(prediction_paths["predictions"], encoding="utf-8") as f:
        predictions = json.load(f)
    if opts["version_2_with_negative"]:
        with open(prediction_paths["null_odds"], encoding="utf-8") as f:
            na_probs = json.load(f)
        result = squad_metrics.evaluate_v2(data, predictions, na_probs)
    else:
        result = squad_metrics.evaluate_v1(data, predictions)
    out = os.path.join(os.path.dirname(prediction_paths["predictions"]), "eval_results.json")
    atomic_write_json(out, result)
    return result


def _format_result(result, v2):
    if not v2:
        return f"exact_match: {result['exact_match']:.2f}, f1: {result['f1']:.2f}"
    parts = [f"exact: {result['exact']:.2f}", f"f1: {result['f1']:.2f}"]
    for key in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        if key in result:
            parts.append(f"{key}: {result[key]:.2f}")
    if "best_f1" in result:
        parts.append(
            f"best_exact: {result['best_exact']:.2f} (threshold {result['best_exact_thresh']:.3f}), "
            f"best_f1: {result['best_f1']:.2f} (threshold {result['best_f1_thresh']:.3f})"
        )
    return ", ".join(parts)


@cli_main
def main(argv=None):
    opts = finetuning.parse(
        argv,
        "run_squad.py",
        __doc__.split("\n\n")[0],
        "squad",
        {"task": "SQuAD", "epochs": 2, "seq_length": 384, "micro_batch_size": 16},
    )
    if opts["task"] != "SQuAD":
        raise UserError(f"task is {opts['task']!r}: run_squad.py runs task 'SQuAD'")
    generated = opts["generated_data"] or opts["synthetic_data"]
    if opts["do_training"] and not generated and not opts.get("train_file"):
        raise UserError("--do-training needs --train-file (a SQuAD JSON file)")
    wants_predictions = opts["do_predict"] or opts["do_evaluation"]
    if wants_predictions and not generated and not opts.get("predict_file"):
        raise UserError("--do-predict/--do-evaluation need --predict-file (a SQuAD JSON file)")
    config, source = finetuning.resolve_model(opts)
    # Read (and check) the data before spending time on the model.
    train_arrays = None
    if opts["do_training"]:
        if generated:
            train_arrays = _generated(opts, config.vocab_size)
        else:
            _, train_features = _features(opts, opts["train_file"], True)
            train_arrays = {
                k: getattr(train_features, k) for k in INPUTS + ("start_positions", "end_positions")
            }
        finetuning.set_training_length(opts, len(train_arrays["input_ids"]))
    predicting = (opts["do_predict"] or opts["do_evaluation"]) and not generated
    if predicting:
        eval_examples, eval_features = _features(opts, opts["predict_file"], False)

    import training

    strategy = training.make_strategy(opts["replicas"])
    opts["_strategy"] = strategy
    with strategy.scope():
        model = finetuning.build_model(config, "squad", 2, opts["seed"])
    run_dir = finetuning.train_or_load(
        opts, config, source, model, "squad", squad_loss_fn, train_arrays
    )
    if not predicting:
        return 0
    from bert_data import squad

    out_dir = finetuning.output_dir(opts, run_dir)
    results = predict_logits(opts, model, eval_features)
    paths = squad.write_predictions(
        eval_examples,
        eval_features,
        results,
        opts["n_best_size"],
        opts["max_answer_length"],
        opts["do_lower_case"],
        opts["version_2_with_negative"],
        opts["null_score_diff_threshold"],
        out_dir,
    )
    print(f"predictions: {paths['predictions']}", flush=True)
    if opts["do_evaluation"]:
        result = evaluate(opts, paths)
        print(
            f"SQuAD {'2.0' if opts['version_2_with_negative'] else '1.1'} "
            f"({len(eval_examples)} questions): "
            + _format_result(result, opts["version_2_with_negative"]),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
