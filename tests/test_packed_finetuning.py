"""Packed GLUE fine-tuning (`--pack-sequences K`, objectives/packed_batches.py): each micro-batch
holds the unpacked stream's examples, with their loss and gradients, in fewer rows."""

import os
import re
import types

import numpy as np
import pytest
import tensorflow as tf

import model_config
import run_classifier
from common.errors import UserError
from objectives import finetuning, glue, packed_batches
from tests.conftest import ROOT
from tests.test_finetuning import TINY, _fails, _run, mrpc_dir  # noqa: F401 (fixture)

SEQ, K = 40, 3


def _arrays(n, rng, regression=False, longest=SEQ):
    lengths = rng.integers(3, longest + 1, n)
    lengths[:3] = (SEQ, 3, SEQ - 3)  # a full row, the shortest, one that fits beside it
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, 90, (n, SEQ)).astype(np.int32) * mask
    segments = ((np.arange(SEQ)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
    labels = rng.uniform(0, 5, n).astype(np.float32) if regression else rng.integers(0, 3, n)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments, "label_ids": labels}


def _packed(arrays, members):
    tensors = {k: tf.constant(v) for k, v in arrays.items()}
    return packed_batches.packed_micro_batch(tensors, tf.constant(members), SEQ)


def _model(num_outputs):
    config = model_config.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=40, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    loop = types.SimpleNamespace(xla=False)
    cfg = types.SimpleNamespace(loop=loop)
    strategy = tf.distribute.get_strategy()
    return finetuning.build_model(cfg, config, "classifier", num_outputs, 3, strategy)


@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
def test_a_packed_micro_batch_has_the_loss_and_gradients_of_the_unpacked_one(regression):
    rng = np.random.default_rng(1)
    arrays = _arrays(12, rng, regression)
    members = packed_batches.plan(arrays["input_mask"].sum(1), np.arange(12), 12, K, SEQ)[0]
    assert len(members) < 12 and (members >= 0).sum() == 12  # packed, every example once
    assert (members < 0).any()  # empty slots (the full row), which the loss must not count
    model = _model(1 if regression else 3)
    loss_fn = glue.make_loss(regression, dropout=0.0)
    names = sorted(model.params)

    def run(features):
        with tf.GradientTape() as tape:
            metrics = loss_fn(model, features, True, tf.constant([1, 2]), tf.float32)
        grads = tape.gradient(metrics["loss"], [model.params[n] for n in names])
        return {k: v.numpy() for k, v in metrics.items()}, [tf.convert_to_tensor(g) for g in grads]

    plain, plain_grads = run({k: tf.constant(v) for k, v in arrays.items()})
    packed, packed_grads = run(_packed(arrays, members))
    assert set(plain) == set(packed) == ({"loss"} if regression else {"loss", "acc"})
    for key in plain:
        np.testing.assert_allclose(packed[key], plain[key], rtol=1e-6, err_msg=key)
    for name, a, b in zip(names, packed_grads, plain_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


def _stream_cfg(mb, ga, steps, per_pack, buffer_size=None):
    loop = types.SimpleNamespace(
        micro_batch_size=mb, gradient_accumulation_count=ga, global_batch_size=mb * ga,
        num_train_steps=steps, xla=False, compile_only=False,
    )  # fmt: skip
    tune = types.SimpleNamespace(length_bucket=0, buffer_size=buffer_size, pack_sequences=per_pack)
    return types.SimpleNamespace(
        loop=loop, finetune=tune, data=types.SimpleNamespace(seq_length=SEQ)
    )


def test_the_packed_stream_holds_the_unpacked_streams_micro_batches_token_for_token():
    rng = np.random.default_rng(2)
    arrays = _arrays(70, rng, longest=SEQ // 2)
    arrays["label_ids"] = np.arange(70, dtype=np.int32)  # which example each slot holds
    steps, mb, ga = 12, 8, 2
    plain = finetuning.train_dataset(arrays, _stream_cfg(mb, ga, steps, 0, 30), seed=5)
    packed = finetuning.train_dataset(arrays, _stream_cfg(mb, ga, steps, K, 30), seed=5)
    rows = packed.element_spec["input_ids"].shape[1]
    assert packed.element_spec["input_ids"].shape == [ga, rows, SEQ] and rows < mb
    count = 0
    for a, b in zip(plain.take(steps), packed):
        count += 1
        for micro in range(ga):
            want = a["label_ids"].numpy()[micro]
            got = {k: v.numpy()[micro] for k, v in b.items()}
            used = got["label_weights"] > 0
            assert sorted(got["label_ids"][used]) == sorted(want)  # the same examples
            for r, k in zip(*np.nonzero(used)):
                e = got["label_ids"][r, k]
                n = arrays["input_mask"][e].sum()
                at = np.flatnonzero(got["sequence_ids"][r] == k + 1)
                assert len(at) == n and at[0] == got["cls_positions"][r, k]
                np.testing.assert_array_equal(got["input_ids"][r, at], arrays["input_ids"][e, :n])
                np.testing.assert_array_equal(
                    got["segment_ids"][r, at], arrays["segment_ids"][e, :n]
                )
                np.testing.assert_array_equal(got["positions"][r, at], np.arange(n))
            pad = got["sequence_ids"] == 0
            assert (got["input_mask"] == ~pad).all() and not got["input_ids"][pad].any()
    assert count == steps
    # Deterministic: the same seed gives the same rows.
    again = finetuning.train_dataset(arrays, _stream_cfg(mb, ga, steps, K, 30), seed=5)
    first, second = next(iter(packed)), next(iter(again))
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())


NO_DROPOUT = ["--hidden-dropout-prob", "0", "--attention-probs-dropout-prob", "0"]
NO_DROPOUT += ["--glue-dropout-prob", "0"]


def _glue_argv(data_dir, vocab, *flags):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY, *flags]
    return argv + ["--task-name", "mrpc", "--data-dir", data_dir, "--vocab-file", vocab]


def test_packed_fine_tuning_without_dropout_logs_the_losses_of_the_unpacked_run(
    tmp_path,
    capsys,
    sample_vocab,
    mrpc_dir,  # noqa: F811
):
    argv = _glue_argv(mrpc_dir, sample_vocab, *NO_DROPOUT)
    argv += ["--epochs", "1", "--seed", "7", "--do-training", "--do-evaluation"]
    argv += ["--micro-batch-size", "8", "--global-batch-size", "8", "--seq-length", "128"]
    outs = {}
    for packing in ("0", "3"):
        save = tmp_path / packing
        outs[packing] = _run(
            run_classifier.main, argv + ["--save-path", str(save), "--pack-sequences", packing],
            capsys,
        )  # fmt: skip
    losses = {
        p: re.findall(r"step: \d+, .*?loss: ([0-9.]+), acc: ([0-9.]+)", o) for p, o in outs.items()
    }
    assert len(losses["0"]) == 48 // 8 and losses["3"] == losses["0"]
    dev = {p: re.search(r"dev \(20 examples\): (.*)", o).group(1) for p, o in outs.items()}
    assert dev["3"] == dev["0"]
    line = re.search(r"packed training batches: 8 examples per micro-batch in (\d+) rows of 128 "
                     r"\(up to 3 per row\); real-token fraction ([0-9.]+) padded, ([0-9.]+) packed",
                     outs["3"])  # fmt: skip
    assert line and int(line.group(1)) < 8 and float(line.group(3)) > float(line.group(2))
    assert "packed training batches" not in outs["0"]


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--pack-sequences", "1"], r"pack_sequences must be 0 \(off\) or at least 2, got 1"),
        (["--pack-sequences", "3", "--length-bucket", "16"], r"set only one of them"),
    ],
)
def test_bad_packing_settings_get_one_line(
    flags,
    pattern,
    capsys,
    sample_vocab,
    mrpc_dir,  # noqa: F811
):
    argv = _glue_argv(mrpc_dir, sample_vocab, *flags, "--do-training")
    _fails(run_classifier.main, argv, capsys, pattern)


def test_groupbert_refuses_packed_fine_tuning():
    tune = types.SimpleNamespace(pack_sequences=3, length_bucket=0)
    cfg = types.SimpleNamespace(finetune=tune)
    with pytest.raises(UserError, match="GroupBERT's convolution crosses sequence boundaries"):
        packed_batches.check(cfg, types.SimpleNamespace(groupbert=True))
    packed_batches.check(cfg, types.SimpleNamespace(groupbert=False))  # BERT: fine


def test_a_restored_packed_stream_goes_on_where_it_stopped(tmp_path):
    """The iterator position goes into the run's checkpoints: resumed, the stream continues."""
    arrays = _arrays(40, np.random.default_rng(3), longest=SEQ // 2)
    cfg = _stream_cfg(4, 1, 8, K)
    whole = [e["input_ids"].numpy() for e in finetuning.train_dataset(arrays, cfg, seed=2)]
    it = iter(finetuning.train_dataset(arrays, cfg, seed=2))
    for _ in range(3):
        next(it)
    path = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt"))
    again = iter(finetuning.train_dataset(arrays, cfg, seed=2))
    tf.train.Checkpoint(iterator=again).restore(path)
    rest = [e["input_ids"].numpy() for e in again]
    assert len(rest) == len(whole) - 3
    for got, want in zip(rest, whole[3:]):
        np.testing.assert_array_equal(got, want)


def test_packed_fine_tuning_compile_only(capsys, tmp_path):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY, "--generated-data"]
    argv += ["--do-training", "--vocab-size", "100", "--compile-only", "--pack-sequences", "2"]
    out = _run(run_classifier.main, [*argv, "--save-path", str(tmp_path)], capsys)
    assert "Training graph successfully compiled" in out and "packed training batches" in out
