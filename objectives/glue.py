"""GLUE: classification (or STS-B regression) from the pooled output, its loss and the task metrics.

Phases, in any combination: --do-training (train split), --do-evaluation (dev split: the task's
metrics into eval_results.txt, also every steps_per_eval steps during training),
--do-predict (test split: GLUE-submission predict_results.txt). --num-seeds K fine-tunes K times
(seeds seed .. seed+K-1) and reports mean and std of each metric.
"""

import os

import numpy as np

import objectives
from common.errors import UserError
from objectives import finetuning, packed_batches

FEATURES = ("input_ids", "input_mask", "segment_ids")
DEFAULTS = {"task": "GLUE", "epochs": 3, "seq_length": 128}


def make_loss(regression, dropout):
    """The classifier's loss: mean cross-entropy (+ accuracy), or mean squared error for STS-B."""

    def loss(model, features, training, dropout_seed, compute_dtype):
        import tensorflow as tf

        logits = finetuning.head_outputs(
            model, features, training, dropout_seed, compute_dtype, "classifier", dropout
        )  # [B,C], or [B,K,C] packed (objectives/packed_batches.py)
        weights = features.get("label_weights")  # packed: 1.0 for the real examples
        if weights is not None:
            logits = tf.reshape(logits, [-1, logits.shape[-1]])
            weights = tf.reshape(weights, [-1])

        def mean(values):  # over the examples (packed: the real ones, so as unpacked)
            if weights is None:
                return tf.reduce_mean(values)
            return tf.reduce_sum(values * weights) / tf.reduce_sum(weights)

        labels = tf.reshape(features["label_ids"], [-1])
        if regression:
            error = logits[:, 0] - tf.cast(labels, tf.float32)
            return {"loss": mean(tf.square(error))}
        labels = tf.cast(labels, tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        hit = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        return {"loss": mean(ce), "acc": mean(tf.cast(hit, tf.float32))}

    return loss


def _synthetic(regression, num_labels):
    def extra(rng, n):
        if regression:
            return {"label_ids": rng.uniform(0, 5, n).astype(np.float32)}
        return {"label_ids": rng.integers(0, num_labels, n).astype(np.int32)}

    return extra


def _check_head_stage(cfg, task, regression):
    """The reference chose regression by the last pipeline stage (glu_reg); it must fit the task."""
    stages = cfg.model.pipeline_stages
    last = stages[-1][-1] if stages else None
    if last not in ("glu", "glu_reg") or (last == "glu_reg") == regression:
        return
    kind = "a regression" if regression else "a classification"
    fix = "a *_regression.json config" if regression else "a config whose last stage is glu"
    raise UserError(
        f"{cfg.config_path}: the last pipeline stage is {last!r} but {task} is {kind} task; "
        f"use {fix}"
    )


class GlueTask:
    """Task name, label set, the feature arrays of each split the run needs, and the runs.

    Attributes:
      cfg: RunConfig (training length from the train split, vocab and casing from the checkpoint).
      resolved: finetuning.Resolved; data: {split: {feature: np.ndarray}}.
    """

    def __init__(self, cfg):
        from bert_data import glue

        if cfg.task != "GLUE":
            raise UserError(f"task is {cfg.task!r}: run_classifier.py runs task 'GLUE'")
        self.resolved = finetuning.resolve_model(cfg)
        packed_batches.check(self.resolved.cfg, self.resolved.config)
        self.placement = finetuning.placement(self.resolved.cfg, self.resolved.config)
        cfg = self.resolved.cfg
        tune = cfg.finetune
        self.generated = cfg.data.generated_data or cfg.data.synthetic_data
        if self.generated:
            self.name = tune.task_name or "synthetic"
            self.regression = self.name in ("stsb", "synthetic_regression")
            self.metrics_name = "stsb" if self.regression else "sst2"  # accuracy, or correlations
            self.labels = None if self.regression else ["0", "1"]
        else:
            if not tune.task_name:
                raise UserError("--task-name is required (cola, sst2, mrpc, stsb, qqp, mnli, ...)")
            if not tune.data_dir:
                raise UserError(
                    "--data-dir is required: the GLUE task folder (e.g. glue_data/MRPC)"
                )
            self.name = self.metrics_name = tune.task_name.lower()
            self.labels = glue.get_task(tune.task_name).labels
            self.regression = self.labels is None
            _check_head_stage(cfg, self.name, self.regression)
            self.tokenizer = finetuning.tokenizer(cfg)
        self.data = {}
        for split, wanted in (
            ("train", tune.do_training),
            ("dev", tune.do_evaluation),
            ("test", tune.do_predict),
        ):
            if wanted:
                self.data[split] = self._arrays(cfg, split)
        if tune.do_training:
            cfg = finetuning.with_training_length(cfg, len(self.data["train"]["input_ids"]))
        self.cfg = cfg

    @property
    def num_outputs(self):
        return 1 if self.regression else len(self.labels)

    def _arrays(self, cfg, split):
        """{feature: np.ndarray} of a split (train, dev or test)."""
        vocab_size = self.resolved.config.vocab_size
        if self.generated:
            num = 256 if split == "train" else 64
            extra = _synthetic(self.regression, self.num_outputs)
            return finetuning.generated_arrays(cfg, num, vocab_size, extra)
        from bert_data import glue

        examples = glue.read_examples(cfg.finetune.data_dir, self.name, split)
        return glue.convert_examples_to_features(
            examples, self.name, self.tokenizer, cfg.data.seq_length
        )

    def run_seed(self, seed, strategy):
        """Train (optionally), evaluate and predict with one seed; returns the dev metrics or None."""
        cfg = self.cfg.updated(seed=seed)
        model = finetuning.build_model(
            cfg,
            self.resolved.config,
            "classifier",
            self.num_outputs,
            seed,
            strategy,
            self.placement,
        )
        loss = make_loss(self.regression, cfg.finetune.glue_dropout_prob)
        evaluate = None
        if "dev" in self.data and cfg.logging.steps_per_eval:
            evaluate = lambda step: self.dev_metrics(cfg, model)[0]  # noqa: E731
        out_dir = finetuning.train_or_load(
            cfg, self.resolved, strategy, model, "classifier", loss, self.data.get("train"),
            evaluate=evaluate,
        )  # fmt: skip
        if cfg.loop.compile_only:
            return None
        return objectives.chief_only(
            f"GLUE seed {seed}", lambda: self.write(cfg, seed, model, out_dir)
        )

    def write(self, cfg, seed, model, run_dir):
        """Dev metrics into eval_results.txt and test predictions, as the phases ask; returns the
        dev metrics or None."""
        out_dir = finetuning.output_dir(cfg, run_dir)
        if cfg.finetune.output_dir and cfg.finetune.num_seeds > 1:
            out_dir = os.path.join(out_dir, f"seed_{seed}")
            os.makedirs(out_dir, exist_ok=True)
        metrics = None
        if cfg.finetune.do_evaluation:
            metrics = self._evaluate(cfg, model, out_dir)
        if cfg.finetune.do_predict:
            from bert_data import glue

            preds = self.predictions(cfg, model, self.data["test"])
            if not self.generated:
                path = os.path.join(out_dir, "predict_results.txt")
                glue.write_predict_results(path, self.name, preds)
                print(f"test predictions ({len(preds)}): {path}")
        return metrics

    def dev_metrics(self, cfg, model):
        """({metric: float}, predictions) of the dev split."""
        from bert_data import glue_metrics

        arrays = self.data["dev"]
        preds = self.predictions(cfg, model, arrays)
        metrics = glue_metrics.task_metrics(self.metrics_name, preds, arrays["label_ids"])
        return {k: float(v) for k, v in metrics.items()}, preds

    def _evaluate(self, cfg, model, out_dir):
        from bert_data import glue, glue_metrics

        metrics, preds = self.dev_metrics(cfg, model)
        labels = self.data["dev"]["label_ids"]
        warning = None if self.regression else glue_metrics.degenerate(preds, labels)
        if warning:
            print(f"warning: {warning}")
        glue.write_eval_results(
            os.path.join(out_dir, "eval_results.txt"), {**metrics, "num_examples": len(labels)}
        )
        print(
            f"dev ({len(labels)} examples): "
            + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items())
        )
        return metrics

    def predictions(self, cfg, model, arrays):
        dtype = finetuning.compute_dtype(cfg)

        def logits_fn(model, features, xla):
            logits = finetuning.head_outputs(
                model, features, False, None, dtype, "classifier", xla=xla
            )
            return (logits,)

        inputs = {k: arrays[k] for k in FEATURES}
        bucket = cfg.finetune.length_bucket
        logits = finetuning.predict(cfg, model, inputs, logits_fn, ["logits"], bucket)["logits"]
        return logits[:, 0] if self.regression else logits.argmax(-1)


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
