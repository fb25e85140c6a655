"""SQuAD 1.1 / 2.0: features, the span head and its loss, prediction and the official metrics.

Phases, in any combination: --do-training (train_file), --do-predict (answers for predict_file:
predictions.json, nbest_predictions.json and, for 2.0, null_odds.json in output_dir),
--do-evaluation (official EM/F1 of those predictions against predict_file; for 2.0 also the
HasAns/NoAns split and the best no-answer threshold). Features are cached in tfrecord_dir, keyed by
everything they depend on.
"""

import json
import os

import numpy as np

import objectives
from common.errors import UserError
from objectives import finetuning

INPUTS = ("input_ids", "input_mask", "segment_ids")
DEFAULTS = {"task": "SQuAD", "epochs": 2, "seq_length": 384, "micro_batch_size": 16}


def squad_loss(model, features, training, dropout_seed, compute_dtype):
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


class SquadTask:
    """Checks the phases' inputs, resolves the model, reads the features; trains and predicts.

    Attributes:
      cfg: RunConfig (training length from the features, vocab and casing from the checkpoint).
      resolved: finetuning.Resolved.
      train_arrays: {name: np.ndarray} of the training features, or None.
    """

    def __init__(self, cfg):
        if cfg.task != "SQuAD":
            raise UserError(f"task is {cfg.task!r}: run_squad.py runs task 'SQuAD'")
        tune, data = cfg.finetune, cfg.data
        self.generated = data.generated_data or data.synthetic_data
        if tune.do_training and not self.generated and not data.train_file:
            raise UserError("--do-training needs --train-file (a SQuAD JSON file)")
        wants_predictions = tune.do_predict or tune.do_evaluation
        if wants_predictions and not self.generated and not tune.predict_file:
            raise UserError("--do-predict/--do-evaluation need --predict-file (a SQuAD JSON file)")
        self.resolved = finetuning.resolve_model(cfg)
        self.placement = finetuning.placement(self.resolved.cfg, self.resolved.config)
        cfg = self.resolved.cfg
        # Read (and check) the data before spending time on the model.
        self.train_arrays = None
        if tune.do_training:
            if self.generated:
                self.train_arrays = self._generated(cfg)
            else:
                _, features = self._features(cfg, data.train_file, True)
                names = INPUTS + ("start_positions", "end_positions")
                self.train_arrays = {k: getattr(features, k) for k in names}
            cfg = finetuning.with_training_length(cfg, len(self.train_arrays["input_ids"]))
        self.predicting = wants_predictions and not self.generated
        if self.predicting:
            self.eval_examples, self.eval_features = self._features(cfg, tune.predict_file, False)
        self.cfg = cfg

    def _features(self, cfg, path, is_training):
        from bert_data import squad

        tune, data = cfg.finetune, cfg.data
        examples, features = squad.load_or_build_features(
            path,
            finetuning.tokenizer(cfg),
            data.vocab_file,
            data.do_lower_case,
            data.seq_length,
            tune.doc_stride,
            tune.max_query_length,
            is_training,
            tune.version_2_with_negative,
            cache_dir=tune.tfrecord_dir,
        )
        print(
            f"{path}: {len(examples)} examples -> {len(features)} features "
            f"({'training' if is_training else 'prediction'})",
            flush=True,
        )
        return examples, features

    def _generated(self, cfg):
        seq = cfg.data.seq_length

        def extra(rng, n):
            starts = rng.integers(seq // 2, seq - 4, n).astype(np.int32)
            return {"start_positions": starts, "end_positions": starts + rng.integers(0, 3, n)}

        num = min(cfg.finetune.num_synthetic_dataset_samples, 512)
        return finetuning.generated_arrays(cfg, num, self.resolved.config.vocab_size, extra)

    def run(self, strategy):
        """Train and/or load, then predict and evaluate as the phases ask; returns 0."""
        cfg = self.cfg
        model = finetuning.build_model(
            cfg, self.resolved.config, "squad", 2, cfg.loop.seed, strategy, self.placement
        )
        run_dir = finetuning.train_or_load(
            cfg, self.resolved, strategy, model, "squad", squad_loss, self.train_arrays
        )
        if self.predicting and not cfg.loop.compile_only:
            objectives.chief_only("SQuAD predictions", lambda: self.write(model, run_dir))
        return 0

    def write(self, model, run_dir):
        """Predictions (and their scores with --do-evaluation) into output_dir."""
        from bert_data import squad

        cfg = self.cfg
        tune = cfg.finetune
        out_dir = finetuning.output_dir(cfg, run_dir)
        paths = squad.write_predictions(
            self.eval_examples,
            self.eval_features,
            self.predict_logits(model),
            tune.n_best_size,
            tune.max_answer_length,
            cfg.data.do_lower_case,
            tune.version_2_with_negative,
            tune.null_score_diff_threshold,
            out_dir,
            verbose=tune.verbose_logging,
        )
        print(f"predictions: {paths['predictions']}", flush=True)
        if tune.do_evaluation:
            result = self.evaluate(paths)
            print(
                f"SQuAD {'2.0' if tune.version_2_with_negative else '1.1'} "
                f"({len(self.eval_examples)} questions): "
                + format_result(result, tune.version_2_with_negative),
                flush=True,
            )

    def predict_logits(self, model):
        """{unique_id: (start_logits [S], end_logits [S])} for every prediction feature."""
        dtype = finetuning.compute_dtype(self.cfg)

        def fn(model, batch, xla):
            return finetuning.head_outputs(model, batch, False, None, dtype, "squad", xla=xla)

        features = self.eval_features
        arrays = {name: getattr(features, name) for name in INPUTS}
        out = finetuning.predict(self.cfg, model, arrays, fn, ["start", "end"])
        return {
            int(uid): (out["start"][i], out["end"][i]) for i, uid in enumerate(features.unique_ids)
        }

    def evaluate(self, prediction_paths):
        """Official SQuAD scores of the written predictions against predict_file."""
        from bert_data import squad_metrics
        from common.fileio import atomic_write_json, read_json

        data = read_json(self.cfg.finetune.predict_file, "SQuAD file")["data"]
        with open(prediction_paths["predictions"], encoding="utf-8") as f:
            predictions = json.load(f)
        if self.cfg.finetune.version_2_with_negative:
            with open(prediction_paths["null_odds"], encoding="utf-8") as f:
                na_probs = json.load(f)
            result = squad_metrics.evaluate_v2(data, predictions, na_probs)
        else:
            result = squad_metrics.evaluate_v1(data, predictions)
        out = os.path.join(os.path.dirname(prediction_paths["predictions"]), "eval_results.json")
        atomic_write_json(out, result)
        return result


def format_result(result, v2):
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
