#!/usr/bin/env python3
"""Fine-tune and evaluate BERT on a GLUE task (classification, or STS-B regression).

    python3 run_classifier.py --config configs/glue_base.json --task-name mrpc \
        --data-dir glue_data/MRPC --init-checkpoint CKPT --do-training --do-evaluation [--do-predict]

Phases, in any combination: --do-training (train split), --do-evaluation (dev split: the task's
metrics into eval_results.txt), --do-predict (test split: GLUE-submission predict_results.txt).
--num-seeds K fine-tunes K times (seeds seed .. seed+K-1) and reports mean and std of each metric.
Every config key is also a flag; --init-checkpoint takes a native, Google or Hugging Face checkpoint.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import finetuning
from common.errors import UserError, cli_main

FEATURES = ("input_ids", "input_mask", "segment_ids")


def make_loss_fn(regression, dropout):
    def loss_fn(model, features, training, dropout_seed, compute_dtype):
        import tensorflow as tf

        logits = finetuning.head_outputs(
            model, features, training, dropout_seed, compute_dtype, "classifier", dropout
        )
        if regression:
            error = logits[:, 0] - tf.cast(features["label_ids"], tf.float32)
            return {"loss": tf.reduce_mean(tf.square(error))}
        labels = tf.cast(features["label_ids"], tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        hit = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        return {"loss": tf.reduce_mean(ce), "acc": tf.reduce_mean(tf.cast(hit, tf.float32))}

    return loss_fn


def _synthetic(regression, num_labels):
    def extra(rng, n):
        if regression:
            return {"label_ids": rng.uniform(0, 5, n).astype(np.float32)}
        return {"label_ids": rng.integers(0, num_labels, n).astype(np.int32)}

    return extra


def _check_head_stage(opts, task, regression):
    """The reference chose regression by the last pipeline stage (glu_reg); it must fit the task."""
    stages = opts.get("pipeline_stages")
    last = stages[-1][-1] if stages else None
    if last not in ("glu", "glu_reg") or (last == "glu_reg") == regression:
        return
    kind = "a regression" if regression else "a classification"
    fix = "a *_regression.json config" if regression else "a config whose last stage is glu"
    raise UserError(
        f"{opts['config']}: the last pipeline stage is {last!r} but {task} is {kind} task; use {fix}"
    )


class Task:
    """Task name, label set and the feature arrays of each split that the run needs."""

    def __init__(self, opts, config):
        from bert_data import glue

        self.opts = opts
        self.generated = opts["generated_data"] or opts["synthetic_data"]
        if self.generated:
            self.name = opts["task_name"] or "synthetic"
            self.regression = self.name in ("stsb", "synthetic_regression")
            self.metrics_name = "stsb" if self.regression else "sst2"  # accuracy, or correlations
            self.labels = None if self.regression else ["0", "1"]
            self.spec = None
            return
        if not opts["task_name"]:
            raise UserError("--task-name is required (cola, sst2, mrpc, stsb, qqp, mnli, ...)")
        if not opts["data_dir"]:
            raise UserError("--data-dir is required: the GLUE task folder (e.g. glue_data/MRPC)")
        self.spec = glue.get_task(opts["task_name"])
        self.name = self.metrics_name = opts["task_name"].lower()
        self.labels = self.spec.labels
        self.regression = self.labels is None
        _check_head_stage(opts, self.name, self.regression)
        self.tokenizer = finetuning.tokenizer(opts)

    @property
    def num_outputs(self):
        return 1 if self.regression else len(self.labels)

    def arrays(self, split, vocab_size):
        """{feature: np.ndarray} of a split (train, dev or test)."""
        if self.generated:
            num = 256 if split == "train" else 64
            extra = _synthetic(self.regression, self.num_outputs)
            return finetuning.generated_arrays(self.opts, num, vocab_size, extra)
        from bert_data import glue

        examples = glue.read_examples(self.opts["data_dir"], self.name, split)
        return glue.convert_examples_to_features(
            examples, self.name, self.tokenizer, self.opts["seq_length"]
        )


def _evaluate(opts, task, model, arrays, out_dir, run_log):
    from bert_data import glue, glue_metrics

    preds = _predictions(opts, task, model, arrays)
    labels = arrays["label_ids"]
    metrics = glue_metrics.task_metrics(task.metrics_name, preds, labels)
    warning = None if task.regression else glue_metrics.degenerate(preds, labels)
    if warning:
        run_log(f"warning: {warning}")
    metrics = {k: float(v) for k, v in metrics.items()}
    glue.write_eval_results(
        os.path.join(out_dir, "eval_results.txt"), {**metrics, "num_examples": len(labels)}
    )
    run_log(
        f"dev ({len(labels)} examples): " + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items())
    )
    return metrics


def _predictions(opts, task, model, arrays):
    import training

    dtype = training.COMPUTE_DTYPES[opts["precision"]]

    def logits_fn(model, features):
        return (finetuning.head_outputs(model, features, False, None, dtype, "classifier"),)

    inputs = {k: arrays[k] for k in FEATURES}
    logits = finetuning.predict(opts, model, inputs, logits_fn, ["logits"])["logits"]
    return logits[:, 0] if task.regression else logits.argmax(-1)


def run_one(opts, config, source, task, data, seed):
    """Train (optionally), evaluate and predict with one seed; returns the dev metrics or None."""
    import training

    opts = dict(opts, seed=seed)
    strategy = training.make_strategy(opts["replicas"])
    opts["_strategy"] = strategy
    with strategy.scope():
        model = finetuning.build_model(config, "classifier", task.num_outputs, seed)
    loss_fn = make_loss_fn(task.regression, opts["glue_dropout_prob"])
    out_dir = finetuning.train_or_load(
        opts, config, source, model, "classifier", loss_fn, data.get("train")
    )
    out_dir = finetuning.output_dir(opts, out_dir)
    if opts["output_dir"] and opts["num_seeds"] > 1:
        out_dir = os.path.join(out_dir, f"seed_{seed}")
        os.makedirs(out_dir, exist_ok=True)
    metrics = None
    if opts["do_evaluation"]:
        metrics = _evaluate(opts, task, model, data["dev"], out_dir, print)
    if opts["do_predict"]:
        from bert_data import glue

        preds = _predictions(opts, task, model, data["test"])
        if not task.generated:
            path = os.path.join(out_dir, "predict_results.txt")
            glue.write_predict_results(path, task.name, preds)
            print(f"test predictions ({len(preds)}): {path}")
    return metrics


def summarise(all_metrics, seeds):
    """Lines 'metric: mean ± std (min .. max) over K seeds; best seed S'."""
    lines = []
    for key in all_metrics[0]:
        values = np.array([m[key] for m in all_metrics])
        best = seeds[int(values.argmax())]
        lines.append(
            f"{key}: {values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f} "
            f"(min {values.min():.4f}, max {values.max():.4f}, best seed {best})"
        )
    return lines


@cli_main
def main(argv=None):
    opts = finetuning.parse(
        argv,
        "run_classifier.py",
        __doc__.split("\n\n")[0],
        "glue",
        {"task": "GLUE", "epochs": 3, "seq_length": 128},
    )
    if opts["task"] != "GLUE":
        raise UserError(f"task is {opts['task']!r}: run_classifier.py runs task 'GLUE'")
    config, source = finetuning.resolve_model(opts)
    task = Task(opts, config)
    data = {}
    for split, phase in (
        ("train", "do_training"),
        ("dev", "do_evaluation"),
        ("test", "do_predict"),
    ):
        if opts[phase]:
            data[split] = task.arrays(split, config.vocab_size)
    if opts["do_training"]:
        finetuning.set_training_length(opts, len(data["train"]["input_ids"]))
    seeds = [opts["seed"] + k for k in range(opts["num_seeds"])]
    results = []
    for seed in seeds:
        if len(seeds) > 1:
            print(f"==== seed {seed} ({len(results) + 1} of {len(seeds)})", flush=True)
        metrics = run_one(opts, config, source, task, data, seed)
        if metrics is not None:
            results.append(metrics)
    if results:
        lines = summarise(results, seeds)
        head = f"{task.name} dev, {len(results)} seed(s) {seeds[0]}..{seeds[-1]}"
        print(head + ":\n  " + "\n  ".join(lines), flush=True)
        if len(results) > 1 and opts["output_dir"]:
            from common.fileio import atomic_write_text

            atomic_write_text(
                os.path.join(opts["output_dir"], "eval_summary.txt"),
                head + "\n" + "\n".join(lines) + "\n",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
