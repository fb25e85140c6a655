"""Pretraining tasks: BERT's masked LM + next-sentence prediction, and RoBERTa-style masked LM.

`PretrainingTask(cfg)` checks the data against the config before anything is built, then gives the
model (BertModel with its MLM/NSP heads), the loss (`pretraining_loss`, shared by training and
evaluation), the input pipeline and the held-out evaluator.

model_type roberta: masked LM only, no NSP head, on packed byte-level BPE ids from
bert_data/create_mlm_data.py, masked anew every epoch in the input pipeline (bert_data/mlm.py);
vocab_size comes from tokenizer_file when the config leaves it null.
"""

import dataclasses
import functools
import os

import model_config
import pipeline
from common import fingerprint, tfrecords
from common.errors import UserError

MLM_WEIGHT_EPSILON = 1e-5  # MLM loss denominator: sum(weights) + this (the reference's)
GENERATED_SAMPLES = 10_000_000  # the reference's dataset size for --generated-data
# Per-batch sums that evaluation accumulates (returned by the loss when not training).
SUMS = ("mlm_ce_sum", "mlm_weight_sum", "mlm_hit_sum", "nsp_ce_sum", "nsp_hit_sum", "sequences")


def pretraining_loss(outputs, features, compute_acc=True, sums=False):
    """The reference's losses and accuracies from the model's MLM/NSP logits.

    mlm_loss = sum(w * CE) / (sum(w) + 1e-5) over the micro-batch; nsp_loss = mean CE;
    mlm_acc = sum(w * [argmax == label]) / sum(w) (0 when sum(w) is 0); nsp_acc = mean match;
    loss = mlm_loss + nsp_loss.

    Packed rows (bert_data/records.py) give the loss of the same sequences unpacked: the MLM
    loss is one sum over every real prediction of the micro-batch divided by their count (not a
    mean of per-sequence means), which does not depend on how the predictions are spread over
    rows; NSP is the mean over the real sequences, weighted by next_sentence_weights [B,K] (the
    NSP logits are then [B,K,2]). So a packed micro-batch and the unpacked micro-batch of the
    same sequences have equal losses and accuracies (up to summation order; tests/
    test_packed_model.py). Across micro-batches and replicas the loop averages these means as
    it does unpacked.

    Args:
      outputs: dict with "mlm_logits" [B,P,V] and/or "nsp_logits" [B,2] (float32, or float64).
      features: masked_lm_ids int32 [B,P], masked_lm_weights float [B,P], next_sentence_labels
        int32 [B,1] or [B]; packed: P = K·P slots, next_sentence_labels int32 [B,K] and
        next_sentence_weights float [B,K].
      compute_acc: False (the option disable_acc) skips the argmax; accuracies are NaN.
      sums: also return the per-batch sums of `SUMS` (evaluation accumulates them over a data set).
    Returns:
      dict of scalars in the logits' dtype: "loss" plus "mlm_loss", "mlm_acc" and/or "nsp_loss",
      "nsp_acc" for the heads present (and the sums).
    """
    import tensorflow as tf

    result, total = {}, []
    nan = float("nan")
    if "mlm_logits" in outputs:
        logits = outputs["mlm_logits"]
        labels = tf.cast(features["masked_lm_ids"], tf.int32)
        weights = tf.cast(features["masked_lm_weights"], logits.dtype)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # [B,P]
        weight_sum = tf.reduce_sum(weights)
        result["mlm_loss"] = tf.reduce_sum(weights * ce) / (weight_sum + MLM_WEIGHT_EPSILON)
        match = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), logits.dtype)
        if compute_acc:
            result["mlm_acc"] = tf.math.divide_no_nan(tf.reduce_sum(weights * match), weight_sum)
        else:
            result["mlm_acc"] = tf.constant(nan, logits.dtype)
        if sums:
            result.update(
                mlm_ce_sum=tf.reduce_sum(weights * ce),
                mlm_weight_sum=weight_sum,
                mlm_hit_sum=tf.reduce_sum(weights * match),
            )
        total.append(result["mlm_loss"])
    if "nsp_logits" in outputs:
        logits = outputs["nsp_logits"]  # [B,2], or [B,K,2] packed
        labels = tf.cast(features["next_sentence_labels"], tf.int32)
        labels = tf.reshape(labels, tf.shape(logits)[:-1])  # [B] (or [B,K])
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        match = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), ce.dtype)
        weights = features.get("next_sentence_weights")  # packed: 1.0 for the real sequences
        if weights is not None:
            weights = tf.cast(weights, ce.dtype)
            ce, match = weights * ce, weights * match
            sequences = tf.reduce_sum(weights)
        else:
            sequences = tf.cast(tf.size(ce), ce.dtype)
        result["nsp_loss"] = _mean(ce, weights, sequences)
        if compute_acc:
            result["nsp_acc"] = _mean(match, weights, sequences)
        else:
            result["nsp_acc"] = tf.constant(nan, logits.dtype)
        if sums:
            hits = tf.reduce_sum(match)
            result.update(nsp_ce_sum=tf.reduce_sum(ce), nsp_hit_sum=hits, sequences=sequences)
        total.append(result["nsp_loss"])
    if sums and "sequences" not in result:
        batch = tf.shape(features["masked_lm_ids"])[0]
        result["sequences"] = tf.cast(batch, result["mlm_loss"].dtype)
    result["loss"] = tf.add_n(total)
    return result


def _mean(values, weights, count):
    """reduce_mean(values) unpacked (as the reference); packed, values (already weighted)
    summed over `count` real sequences."""
    import tensorflow as tf

    if weights is None:
        return tf.reduce_mean(values)
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def real_tokens(features, static_mask, max_predictions):
    """Non-pad tokens in a micro-batch (traced inside the step, for tokens/s)."""
    import tensorflow as tf

    if static_mask:
        filled = features["seq_padding_index"] - max_predictions + features["mask_padding_index"]
        return tf.reduce_sum(filled)
    return tf.reduce_sum(features["input_mask"])


def _describe_packing(per_pack):
    return f"packed rows of up to {per_pack} sequences" if per_pack else "unpacked sequences"


def roberta_masking(cfg):
    """model_type roberta: checks the settings; returns (bert_data.mlm.Masking, vocab_size) of the
    tokenizer (RoBERTa's default ids for generated data without one)."""
    from bert_data import mlm

    data, model = cfg.data, cfg.model
    if model.static_mask:
        raise UserError("model_type roberta masks dynamically: set static_mask false")
    generated = data.generated_data or data.synthetic_data
    path = data.tokenizer_file
    if path and (os.path.exists(path) or not generated):
        masking = mlm.masking_from_tokenizer(path)
    elif not generated:
        raise UserError(
            "model_type roberta needs tokenizer_file (--tokenizer-file): the tokenizer.json of "
            "bert_data/create_bpe_tokenizer.py that made the data"
        )
    else:  # generated data and no tokenizer file: create_bpe_tokenizer's special ids
        if model.vocab_size is None:
            raise UserError("model_type roberta: set vocab_size, or tokenizer_file to take it from")
        masking = mlm.Masking.roberta_ids(model.vocab_size)
    vocab_size = masking.vocab_size if model.vocab_size is None else model.vocab_size
    if vocab_size < masking.vocab_size:
        raise UserError(
            f"vocab_size {vocab_size} is smaller than the {masking.vocab_size} tokens of "
            f"tokenizer_file {path}; set vocab_size to {masking.vocab_size} or null"
        )
    seq, offset, rows = data.seq_length, model.position_offset, model.max_position_embeddings
    if rows is not None and seq + offset > rows:
        raise UserError(
            f"seq_length {seq} + position_offset {offset} exceeds max_position_embeddings {rows}"
        )
    return masking, vocab_size


class PretrainingTask:
    """Data, model, loss and evaluation of a pretraining run (see the module docstring).

    Construction reads and checks the data (layout, sequence length, masks, token ids against the
    vocab size) before any graph is built.

    Attributes:
      cfg: the run's RunConfig (vocab_size filled from the tokenizer for roberta).
      config: model_config.BertConfig of the model.
      heads: ("mlm", "nsp") for BERT, ("mlm",) for roberta.
      num_samples: records in the training files (estimated), for the logged epoch.
    """

    def __init__(self, cfg):
        from bert_data import mlm, pretraining

        if cfg.task != "pretraining":
            raise UserError(f"task is {cfg.task!r}: run_pretraining.py runs task 'pretraining'")
        self.roberta = cfg.model.model_type == "roberta"
        self.masking = None
        if self.roberta:
            self.masking, vocab_size = roberta_masking(cfg)
            if vocab_size != cfg.model.vocab_size:
                cfg = cfg.updated(vocab_size=vocab_size)
        self.cfg = cfg
        self.config = model_config.BertConfig(
            **model_config.from_options(dataclasses.asdict(cfg.model))
        )
        self.heads = ("mlm",) if self.roberta else ("mlm", "nsp")
        self.placement = pipeline.from_bert(
            cfg.model.pipeline_stages, cfg.model.device_mapping, self.config.num_hidden_layers
        )
        data, loop = cfg.data, cfg.loop
        # Damaged TFRecords met by the training and evaluation pipelines (the loop reads it).
        self.damage = tfrecords.DamageLog(skip=data.skip_corrupt_records)
        skip = self.damage.skip
        self.pipe = pretraining.Pipeline(
            seq_length=data.seq_length,
            max_predictions_per_seq=cfg.model.max_predictions_per_seq,
            static_mask=cfg.model.static_mask,
            micro_batch_size=loop.micro_batch_size,
            gradient_accumulation_count=loop.gradient_accumulation_count,
            parallel_io_threads=data.parallel_io_threads,
            sloppy_parallel_interleave=data.sloppy_parallel_interleave,
            damage=self.damage,
        )
        self.generated = data.generated_data or data.synthetic_data
        seq, masks, vocab = (
            data.seq_length,
            self.pipe.max_predictions_per_seq,
            self.config.vocab_size,
        )
        if self.generated:
            self.files, self.num_samples = None, GENERATED_SAMPLES
        else:
            self.files = pretraining.expand_train_files(data.train_file)
            if self.roberta:
                self.num_samples = mlm.check_files(self.files, seq, vocab, skip_damage=skip)
            else:
                if mlm.is_mlm_data(self.files[0]):
                    raise UserError(
                        f"{self.files[0]} holds packed ids from create_mlm_data.py: set "
                        "model_type roberta"
                    )
                self.num_samples, per_pack = pretraining.check_files(
                    self.files, seq, masks, self.pipe.static_mask, vocab, skip_damage=skip
                )
                if per_pack:
                    self._use_packed(per_pack)
            # After the first file's checks (they say how to fix the config): every file's
            # fingerprint, which also knows the vocab and casing the data was made with.
            fingerprint.check(self.files, self.fingerprint_settings)
        self.eval_files = None
        if data.eval_file:
            self.eval_files = pretraining.expand_train_files(data.eval_file)
            if self.roberta:
                mlm.check_files(self.eval_files, seq, vocab, skip_damage=skip)
            else:
                _, per_pack = pretraining.check_files(
                    self.eval_files, seq, masks, self.pipe.static_mask, vocab, skip_damage=skip
                )
                if per_pack != self.pipe.sequences_per_pack:
                    raise UserError(
                        f"eval_file {self.eval_files[0]} holds "
                        f"{_describe_packing(per_pack)} but the training data holds "
                        f"{_describe_packing(self.pipe.sequences_per_pack)}: make both alike"
                    )
            fingerprint.check(self.eval_files, self.fingerprint_settings)

    def _use_packed(self, per_pack):
        """The training records are packed rows of up to `per_pack` sequences: the pipeline
        reads that layout and the model (modeling.BertModel) keeps the sequences apart."""
        if self.config.groupbert:
            # Its grouped convolution mixes neighbouring slots, across sequence boundaries too.
            raise UserError(
                f"{self.files[0]} holds packed sequences (create_pretraining_data.py --packing), "
                "which GroupBERT cannot keep apart (its convolution crosses sequence boundaries): "
                "make the data without --packing"
            )
        self.pipe = dataclasses.replace(self.pipe, sequences_per_pack=per_pack)

    @functools.cached_property
    def fingerprint_settings(self):
        """The run's side of the data-fingerprint check (`common.fingerprint.check`): vocab or
        tokenizer (by sha256) when the run names one, else the model's vocab_size; casing when set
        explicitly (it does not change pretraining itself); sequence length, masks and layout."""
        cfg = self.cfg
        where = cfg.source
        run = {"sequence_length": (cfg.data.seq_length, f"seq_length, {where('seq_length')}")}
        if self.roberta:
            run["layout"] = ("packed", "model_type roberta")
            path = cfg.data.tokenizer_file
            if path and os.path.isfile(path):
                entry = fingerprint.file_entry(path, self.masking.vocab_size)
                run["vocab"] = (entry, f"tokenizer_file {path} ({where('tokenizer_file')})")
        elif self.pipe.sequences_per_pack:
            per_pack = self.pipe.sequences_per_pack
            run["layout"] = ("packed_sequences", f"packed rows in {self.files[0]}")
            run["max_sequences_per_pack"] = (per_pack, f"the rows of {self.files[0]}")
        else:
            static = cfg.model.static_mask
            run["layout"] = (
                "remask" if static else "standard",
                f"static_mask {str(static).lower()}, {where('static_mask')}",
            )
        if not self.roberta:
            run["mask_tokens"] = (
                self.pipe.max_predictions_per_seq,
                f"max_predictions_per_seq, {where('max_predictions_per_seq')}",
            )
            path = cfg.data.vocab_file
            if path:
                with open(path, "rb") as f:
                    lines = sum(1 for _ in f)
                entry = fingerprint.file_entry(path, lines)
                run["vocab"] = (entry, f"vocab_file {path} ({where('vocab_file')})")
        if "vocab" not in run:
            run["vocab_size"] = (self.config.vocab_size, where("vocab_size"))
        if cfg.is_explicit("do_lower_case"):
            run["do_lower_case"] = (cfg.data.do_lower_case, where("do_lower_case"))
        return run

    @property
    def samples_per_epoch(self):
        """Distinct samples of one epoch: records / the data's duplication factor."""
        return self.num_samples / max(self.cfg.data.duplicate_factor or 1, 1)

    def build_model(self, strategy):
        import modeling
        import modeling_ops
        import training

        # The model's grouped ops (GroupBERT) pick their method by whether the step is compiled.
        xla = training.compiles_with_xla(self.cfg.loop, strategy, self.placement)
        with strategy.scope(), modeling_ops.placed(self.placement):
            model = modeling.BertModel(
                self.config, heads=self.heads, seed=self.cfg.loop.seed, xla=xla
            )
        model.placement = self.placement
        return model

    def loss(self, model, features, training, dropout_seed, compute_dtype, xla=None):
        """The training loss (and, when not training, the sums evaluation accumulates); `xla`
        overrides the model's setting for a caller that is not XLA-compiled."""
        outputs = model(features, training, dropout_seed, compute_dtype, xla=xla)
        compute_acc = not (training and self.cfg.model.disable_acc)
        return pretraining_loss(outputs, features, compute_acc=compute_acc, sums=not training)

    def tokens(self, features):
        return real_tokens(features, self.pipe.static_mask, self.pipe.max_predictions_per_seq)

    def dataset(self):
        """One-step elements [GA, micro_batch, ...] of the training data, repeated forever."""
        from bert_data import mlm, pretraining

        seed = self.cfg.loop.seed
        if self.generated:
            if self.roberta:
                ds = mlm.generated_dataset(self.pipe, seed, self.masking)
            else:
                ds = pretraining.generated_dataset(self.pipe, seed, self.config.vocab_size)
            if self.cfg.data.synthetic_data:  # one batch, cached: the step without input work
                ds = ds.take(1).cache().repeat()
            return ds
        if self.roberta:
            return mlm.mlm_dataset(self.files, self.pipe, seed, self.masking)
        return pretraining.tfrecord_dataset(self.files, self.pipe, seed)

    def flops_per_sample(self):
        """Per record: a packed row costs one sequence of seq_length with K*P masked slots
        (its K-1 extra pooler and NSP rows are not counted)."""
        import modeling

        seq, masks = self.cfg.data.seq_length, self.pipe.max_predictions_per_seq
        masks *= max(self.pipe.sequences_per_pack, 1)
        return modeling.pretraining_flops_per_sequence(self.config, seq, masks)

    def evaluator(self, model):
        """callable(step) -> held-out {mlm_loss, mlm_acc[, nsp_loss, nsp_acc], sequences} over one
        pass of eval_file, from the training loss's own per-batch sums; None without eval_file."""
        if not self.eval_files:
            return None
        import tensorflow as tf

        from bert_data import mlm, pretraining

        dtype = tf.as_dtype(self.cfg.loop.compute_dtype)

        @tf.function
        def batch_sums(features):
            out = self.loss(model, features, False, None, dtype, xla=False)  # not XLA-compiled
            return {k: tf.cast(out[k], tf.float64) for k in SUMS if k in out}

        def data():
            if self.roberta:
                return mlm.eval_dataset(self.eval_files, self.pipe, self.masking)
            return pretraining.eval_dataset(self.eval_files, self.pipe)

        def evaluate(step):
            total = {}
            for features in data():
                for k, v in batch_sums(features).items():
                    total[k] = total.get(k, 0.0) + float(v)
            result = {
                "mlm_loss": total["mlm_ce_sum"] / max(total["mlm_weight_sum"], 1e-9),
                "mlm_acc": total["mlm_hit_sum"] / max(total["mlm_weight_sum"], 1e-9),
            }
            if "nsp_ce_sum" in total:
                result["nsp_loss"] = total["nsp_ce_sum"] / max(total["sequences"], 1)
                result["nsp_acc"] = total["nsp_hit_sum"] / max(total["sequences"], 1)
            result["sequences"] = total["sequences"]
            return result

        return evaluate
