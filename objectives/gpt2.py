"""GPT-2 pretraining and fine-tuning (train_gpt2.py): model, data and loss of one run.

`GPT2Task(cfg)` resolves the model config (configs/gpt2/<model>.json with n_positions = max_len,
or the config of --checkpoint-input-dir), reads and checks the data, and learns the run's length
from it; then it gives the model, the loss and the input pipeline to the one training loop.

Data (every sample max_len + 1 ids, see objectives.causal_lm):
- generated: the reference's random ids in [1, vocab_size), seeded, 4 host iterations per epoch;
- mmap: Megatron .bin/.idx, samples across documents as Megatron builds them
  (gpt2_data.megatron.GPTSamples; the first 99.7% of the documents train);
- tfrecord: records with one int64 feature input_ids (globs, lists), right-padded;
- pickle: the reference's .pkl of token lists, windows of max_len + 1 every --stride;
- text: plain text tokenized with the GPT-2 BPE and cut into blocks (Hugging Face run_clm's
  recipe, blocks overlapping by the one token that is both last target and next first input).
Samples held in memory are visited in a new seeded order each epoch; every order is a function of
(seed, epoch) and the loop checkpoints the pipeline's position, so a resumed run reads exactly the
samples the uninterrupted run would have.
"""

import functools
import os
import sys

import numpy as np

import model_config_gpt2
import options_gpt2
import pipeline
from common import fingerprint, tfrecords
from common.errors import UserError
from objectives import causal_lm

TRAIN_DOCUMENT_FRACTION = 0.997  # the reference's (Megatron's) train split of an mmap corpus
TFRECORD_SHUFFLE_BUFFER = 10_000
GENERATED_HOST_ITERATIONS = 4  # the reference sizes generated data at 4 host iterations per epoch


class GPT2Task:
    """See the module docstring. Attributes: cfg (GPT2RunConfig with the run's length), config
    (GPT2Config), init_params ({name: array} to start from, or None), num_samples (per epoch),
    steps_per_epoch (host iterations), notes (lines to log)."""

    def __init__(self, cfg):
        self.cfg, self.notes, self.init_params = cfg, [], None
        # Damaged TFRecords met by the input pipeline (--dataset tfrecord; the loop reads it).
        self.damage = tfrecords.DamageLog(skip=cfg.data.skip_corrupt_records)
        self.config = self._model_config()
        self._read_data()
        rf_batch = cfg.loop.global_batch_size * cfg.loop.device_iterations
        self.steps_per_epoch = self.num_samples // rf_batch
        if self.steps_per_epoch < 1:
            raise UserError(
                f"not enough data in --input-files {cfg.a.input_files}: {self.num_samples} samples "
                f"of {cfg.a.max_len + 1} tokens, but one host iteration takes {rf_batch} "
                "(batch size x gradient accumulation x replicas x device iterations)"
            )
        self.cfg = cfg.with_length(self.steps_per_epoch, self.config.vocab_size)

    # ------------------------------------------------------------------ model

    def _model_config(self):
        import interop_gpt2

        a = self.cfg.a
        path = a.checkpoint_input_dir
        if path and a.resume_training_from_checkpoint:
            if interop_gpt2.source_kind(path) != "ours":
                raise UserError(
                    f"--resume-training-from-checkpoint: {path} is a Hugging Face folder; resume "
                    "one of our GPT-2 runs (or start from the folder without the flag)"
                )
            folder = path if os.path.isdir(path) else os.path.dirname(path)
            config = model_config_gpt2.GPT2Config.from_json_file(
                os.path.join(folder, "config.json")
            )
        elif path:
            config, self.init_params, notes = interop_gpt2.resolve_gpt2_source(path)
            self.notes += list(notes)
        else:
            source = a.model_config or options_gpt2.model_config_path(a.model)
            config = model_config_gpt2.GPT2Config.from_json_file(source)
            config = config.replace(n_positions=a.max_len)
        if a.max_len > config.n_positions:
            raise UserError(
                f"--max-len {a.max_len} exceeds n_positions {config.n_positions} of the model "
                f"({path})"
            )
        if a.recompute_checkpoint_layers and not a.recompute_checkpoint_every_layer:
            print(
                "warning: --recompute-checkpoint-layers has no effect without "
                "--recompute-checkpoint-every-layer",
                file=sys.stderr,
            )
        layers = a.recompute_checkpoint_layers
        config = config.replace(
            recompute=bool(a.recompute_checkpoint_every_layer),
            recompute_layers=tuple(layers)
            if a.recompute_checkpoint_every_layer and layers
            else None,
        )
        stages = a.layers_per_ipu
        stages = stages if isinstance(stages, list) or stages is None else [stages]
        self.placement = pipeline.from_gpt2(stages, config.n_layer)
        return config

    def build_model(self, strategy):
        import modeling_gpt2
        import modeling_ops

        with strategy.scope(), modeling_ops.placed(self.placement):
            model = modeling_gpt2.GPT2Model(self.config, seed=self.cfg.loop.seed)
        model.placement = self.placement
        return model

    def initialise(self, trainer):
        """Copy --checkpoint-input-dir's weights into the model (before the loop)."""
        if self.init_params is None:
            return []
        # resolve_gpt2_source gave exactly the tensors of the config the model was built from.
        params = trainer.model.params
        for name, var in params.items():
            var.assign(self.init_params[name])
        self.init_params = None
        return [f"initialised {len(params)} tensors from {self.cfg.a.checkpoint_input_dir}"]

    def flops_per_sample(self):
        import modeling_gpt2

        seq = self.cfg.a.max_len
        return modeling_gpt2.flops_per_token(self.config, seq) * seq  # training FLOPs

    # ------------------------------------------------------------------ loss

    def loss(self, model, features, training, dropout_seed, compute_dtype):
        """Mean next-token CE and accuracy of one micro-batch (see objectives.causal_lm)."""
        import modeling_ops

        a = self.cfg.a
        ids, mask = features["input_ids"], features["mask"]
        inputs, targets, weights = ids[:, :-1], ids[:, 1:], mask[:, 1:]
        chunked = a.enable_sequence_serialized or a.embedding_serialization_factor > 1
        out = model(inputs, None, training, dropout_seed, compute_dtype, with_logits=not chunked)
        if chunked:
            table = modeling_ops.weight(model.params, "transformer/wte/weight", compute_dtype)
            seq_chunk = a.serialized_seq_len if a.enable_sequence_serialized else a.max_len
            result = causal_lm.serialized_lm_loss(
                out["hidden_states"],
                table,
                targets,
                weights,
                seq_chunk,
                a.embedding_serialization_factor,
            )
        else:
            result = causal_lm.next_token_loss(out["logits"], targets, weights)
        return {"loss": result["loss"], "acc": result["acc"]}

    def trainer_options(self):
        """training.Trainer's keywords for GPT-2: tokens/s from the counted targets, weight decay
        on >= 2-D tensors only, and no gradient clipping (the reference's optimizers)."""
        import optimization

        return {
            "tokens_fn": self.tokens,
            "wd_exclude": optimization.WD_EXCLUDE_1D,
            "clip_norm": None,
        }

    @staticmethod
    def tokens(features):
        """Counted targets of a micro-batch (for tokens/s)."""
        import tensorflow as tf

        return tf.reduce_sum(tf.cast(features["mask"][:, 1:], tf.float32))

    # ------------------------------------------------------------------ data

    def _read_data(self):
        a, vocab = self.cfg.a, self.config.vocab_size
        width = a.max_len + 1
        self.samples = self.arrays = self.tfrecords = None
        if a.dataset == "generated":
            loop = self.cfg.loop
            n = GENERATED_HOST_ITERATIONS * loop.global_batch_size * loop.device_iterations
            rng = np.random.RandomState(a.seed)
            ids = rng.randint(1, vocab, size=(n, width)).astype(np.int32)
            self.arrays = (ids, np.ones_like(ids))
        elif a.dataset == "mmap":
            self._read_mmap(width)
        elif a.dataset == "tfrecord":
            from gpt2_data import readers

            self.tfrecords = readers.tfrecord_files(a.input_files)
            self.num_samples = _count_records(self.tfrecords, self.damage)
        elif a.dataset == "pickle":
            from gpt2_data import readers

            rows = readers.pickle_samples(a.input_files, a.max_len, a.stride)
            self.arrays = _padded(rows, width)
        else:  # text
            ids = self._text_blocks(a.input_files, "--input-files")
            self.arrays = (ids, np.ones(ids.shape, np.int32))
        self.eval_blocks = self._text_blocks(a.eval_files, "--eval-files") if a.eval_files else None
        if self.arrays is not None:
            self.num_samples = len(self.arrays[0])
            _check_ids(self.arrays[0], vocab, a.input_files or "generated data")

    def _text_blocks(self, paths, flag):
        """int32 [N, max_len + 1] blocks of the comma-separated text files `paths`."""
        from gpt2_data import readers, tokenizer

        a = self.cfg.a
        files = [p for p in paths.split(",") if p]
        for path in files:
            if not os.path.isfile(path):
                raise UserError(f"{flag}: no such file {path}")
        tok = tokenizer.load(a.vocab_file, a.merges_file)
        if tok.vocab_size > self.config.vocab_size:
            raise UserError(
                f"--vocab-file {a.vocab_file} has {tok.vocab_size} tokens, more than the model's "
                f"vocab_size {self.config.vocab_size}"
            )
        ids = readers.text_blocks(files, tok, a.max_len).astype(np.int32)
        self.notes.append(
            f"{flag}: {len(ids)} blocks of {a.max_len} positions ({ids.size - len(ids):,} "
            f"targets) from {len(files)} file(s)"
        )
        return ids

    def evaluator(self, model):
        """callable(step) -> {"loss", "ppl", "tokens"}: mean next-token CE over every target of
        --eval-files (no dropout) and its exponential, the token-level perplexity; None without
        eval files."""
        if self.eval_blocks is None:
            return None
        import tensorflow as tf

        dtype = tf.as_dtype(self.cfg.loop.compute_dtype)
        blocks = self.eval_blocks
        batch = max(1, self.cfg.loop.micro_batch_size)

        @tf.function(jit_compile=bool(self.cfg.loop.xla), autograph=False)
        def sums(ids):
            logits = model(ids[:, :-1], None, False, None, dtype)["logits"]
            ce, _, count = causal_lm.token_sums(logits, ids[:, 1:], tf.ones_like(ids[:, 1:]))
            return ce, count

        def evaluate(step):
            ce = count = 0.0
            for start in range(0, len(blocks), batch):
                s, n = sums(tf.constant(blocks[start : start + batch]))
                ce, count = ce + float(s), count + float(n)
            loss = ce / count
            return {"loss": loss, "ppl": float(np.exp(loss)), "tokens": count}

        return evaluate

    def _read_mmap(self, width):
        from gpt2_data import megatron

        a, loop = self.cfg.a, self.cfg.loop
        prefix = a.input_files
        for suffix in (".bin", ".idx"):
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        data = megatron.IndexedDataset(prefix)
        _check_ids(np.asarray(data.tokens), self.config.vocab_size, prefix + ".bin")
        # The ids fit the model; the fingerprint also knows the vocab and merges they came from.
        run = {"vocab_size": (self.config.vocab_size, "the model config's vocab_size")}
        for key, flag in (("vocab", "vocab_file"), ("merges", "merges_file")):
            path = getattr(a, flag)
            if path:
                run[key] = (fingerprint.file_entry(path), f"--{flag.replace('_', '-')} {path}")
        fingerprint.check([prefix], run)
        n_docs = len(data)
        train_docs = np.arange(max(1, int(TRAIN_DOCUMENT_FRACTION * n_docs)))
        tokens = int(np.sum(data.sizes[train_docs], dtype=np.int64))
        if self.cfg.is_explicit("training_steps"):
            wanted = a.training_steps * loop.global_batch_size
            per_epoch = max(1, (tokens - 1) // a.max_len)
        else:
            wanted = max(1, (a.epochs * tokens - 1) // a.max_len)
            per_epoch = wanted // a.epochs
        self.samples = megatron.GPTSamples(data, a.max_len, wanted, a.seed, train_docs)
        self.num_samples = per_epoch
        self.notes.append(
            f"mmap {prefix}: {n_docs} documents ({len(train_docs)} train), {tokens:,} tokens, "
            f"{len(self.samples)} samples of {width} ids over {self.samples.num_epochs} epoch(s)"
        )

    def dataset(self):
        """One-step elements {"input_ids", "mask"}: int32 [GA, micro_batch, max_len + 1]."""
        import tensorflow as tf

        a, loop = self.cfg.a, self.cfg.loop
        bs, ga = loop.micro_batch_size, loop.gradient_accumulation_count
        if self.samples is not None:
            from gpt2_data import megatron

            ds = megatron.gpt_tf_dataset(self.samples, bs).map(
                lambda ids: {"input_ids": ids, "mask": tf.ones_like(ids)}
            )
        elif self.tfrecords is not None:
            from gpt2_data import readers

            ds = readers.tfrecord_dataset(self.tfrecords, a.max_len, self.damage).repeat()
            ds = ds.shuffle(TFRECORD_SHUFFLE_BUFFER, seed=a.seed, reshuffle_each_iteration=True)
            ds = ds.batch(bs, drop_remainder=True)
        else:
            ds = _in_memory(self.arrays, bs, a.seed)
        return ds.batch(ga, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _padded(rows, width):
    """Right-pad int sequences (<= width) to int32 [N, width] ids (0) and mask (1 token, 0 pad)."""
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row[:width]
        mask[i, : len(row)] = 1
    return ids, mask


def _check_ids(ids, vocab_size, where):
    if ids.size and int(ids.max()) >= vocab_size:
        raise UserError(
            f"{where}: token id {int(ids.max())} >= vocab_size {vocab_size} of the model; "
            "the data were tokenized with another vocabulary"
        )
    if ids.size and int(ids.min()) < 0:
        raise UserError(f"{where}: negative token id {int(ids.min())}")


def _count_records(files, damage):
    """Records in TFRecord files: from the reference's `.index` files when present, else counted
    (a damaged file is a one-line error, or with skip_corrupt_records counted up to the damage)."""

    total = 0
    for path in files:
        index = os.path.splitext(path)[0] + ".index"
        if os.path.isfile(index):
            with open(index) as f:
                total += sum(1 for line in f if line.strip())
        else:
            records = tfrecords.records([path], damage)
            total += int(records.reduce(np.int64(0), lambda n, _: n + 1))
    if damage.damages and not damage.skip:
        raise UserError(
            f"{damage.damages[0].describe()}; nothing trained yet: fix or remove the file, or "
            "add --skip-corrupt-records"
        )
    return total


@functools.lru_cache(maxsize=4)
def _epoch_order(n, seed, epoch):
    return np.random.default_rng([seed, 2, epoch]).permutation(n)


def _in_memory(arrays, batch_size, seed):
    """Micro-batches of samples held in memory, each epoch in its (seed, epoch) order; the stream
    position is a sample counter (tf.data range), so a checkpointed iterator resumes exactly."""
    import tensorflow as tf

    ids, mask = arrays
    n, width = ids.shape

    def fetch(ks):
        rows = np.array([_epoch_order(n, seed, int(k) // n)[int(k) % n] for k in ks])
        return ids[rows], mask[rows]

    def load(ks):
        got_ids, got_mask = tf.numpy_function(fetch, [ks], (tf.int32, tf.int32), stateful=False)
        shape = [batch_size, width]
        return {
            "input_ids": tf.ensure_shape(got_ids, shape),
            "mask": tf.ensure_shape(got_mask, shape),
        }

    return tf.data.Dataset.range(2**62).batch(batch_size, drop_remainder=True).map(load)
