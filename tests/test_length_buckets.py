"""Fine-tuning batches by length (`--length-bucket N`): predictions equal the padded ones, the
training stream holds the same examples in length-sorted windows, and steps are cut to their
longest example."""

import os
import types

import numpy as np
import pytest
import tensorflow as tf

import model_config
import modeling
import run_classifier
from objectives import finetuning
from tests.test_finetuning import TINY, _key_values, _run, mrpc_dir  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 48


def _arrays(n, rng, seq=SEQ):
    lengths = rng.integers(5, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, 90, (n, seq)).astype(np.int32) * mask
    segments = ((np.arange(seq)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}, lengths


def _cfg(micro_batch, bucket=0, ga=1, buffer_size=None):
    loop = types.SimpleNamespace(
        micro_batch_size=micro_batch, gradient_accumulation_count=ga, xla=False, compile_only=False
    )
    tune = types.SimpleNamespace(length_bucket=bucket, buffer_size=buffer_size)
    return types.SimpleNamespace(loop=loop, finetune=tune)


def test_bucketed_predictions_equal_padded_ones_in_the_original_order():
    rng = np.random.default_rng(3)
    arrays, _ = _arrays(37, rng)  # a partial last batch too
    config = model_config.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=40, max_position_embeddings=64,
    )  # fmt: skip
    model = modeling.BertModel(config, heads=(), seed=1)

    def fn(model, features, xla):
        return (model(features)["pooled_output"],)

    padded = finetuning.predict(_cfg(8), model, arrays, fn, ["pooled"])["pooled"]
    for bucket in (8, 16):
        cut = finetuning.predict(_cfg(8, bucket), model, arrays, fn, ["pooled"], bucket)["pooled"]
        np.testing.assert_allclose(cut, padded, rtol=1e-5, atol=1e-6)


def test_the_training_stream_sorts_windows_of_the_same_examples_and_cuts_each_step():
    rng = np.random.default_rng(4)
    arrays, lengths = _arrays(300, rng)
    arrays["label_ids"] = np.arange(300, dtype=np.int32)  # which example each row is
    steps = finetuning.WINDOW_STEPS
    plain = finetuning.train_dataset(arrays, _cfg(4, ga=2, buffer_size=100), seed=5)
    cut = finetuning.train_dataset(arrays, _cfg(4, 16, ga=2, buffer_size=100), seed=5)
    plain_ids, cut_ids, spreads = [], [], []
    for a, b in zip(plain.take(2 * steps), cut.take(2 * steps)):
        plain_ids.append(a["label_ids"].numpy().ravel())
        ids = b["label_ids"].numpy().ravel()
        cut_ids.append(ids)
        width = b["input_ids"].shape[-1]
        longest = lengths[ids].max()
        assert width == min(-(-longest // 16) * 16, SEQ) and width % 16 in (0, SEQ % 16)
        np.testing.assert_array_equal(
            b["input_ids"].numpy().reshape(-1, width), arrays["input_ids"][ids][:, :width]
        )
        spreads.append(np.ptp(lengths[ids]))
    for w in range(2):  # each window: the same examples as the unbucketed stream's, re-ordered
        window = slice(w * steps, (w + 1) * steps)
        assert sorted(np.concatenate(cut_ids[window])) == sorted(np.concatenate(plain_ids[window]))
    # Steps hold examples of similar lengths (8 of 300 examples a step, lengths 5..48).
    assert np.mean(spreads) < 0.3 * np.ptp(lengths)
    # Deterministic: the same seed gives the same stream.
    again = finetuning.train_dataset(arrays, _cfg(4, 16, ga=2, buffer_size=100), seed=5)
    first = next(iter(again))["label_ids"].numpy().ravel()
    np.testing.assert_array_equal(first, cut_ids[0])


def test_glue_with_length_buckets_trains_and_evaluates_as_padded(
    tmp_path,
    capsys,
    sample_vocab,
    mrpc_dir,  # noqa: F811
):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY]
    argv += ["--task-name", "mrpc", "--data-dir", mrpc_dir, "--vocab-file", sample_vocab]
    argv += ["--epochs", "1", "--seed", "7"]
    out = _run(
        run_classifier.main,
        [*argv, "--save-path", str(tmp_path), "--do-training", "--length-bucket", "16"],
        capsys,
    )
    assert "step: 11, epoch: 1.0000" in out
    # MFU assumes seq_length positions per example: not printed for shorter, bucketed batches.
    steps = [line for line in out.splitlines() if line.startswith("step: ")]
    assert steps and all(line.endswith("mfu: n/a") or "mfu: n/a," in line for line in steps)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("GLUE_adamw_")]
    results = []
    for bucket in ("0", "16"):
        folder = tmp_path / f"eval{bucket}"
        _run(
            run_classifier.main,
            [
                *argv,
                "--do-evaluation",
                "--do-predict",
                "--init-checkpoint",
                str(run_dir),
                "--output-dir",
                str(folder),
                "--length-bucket",
                bucket,
            ],
            capsys,
        )
        results.append(
            (_key_values(folder / "eval_results.txt"), (folder / "predict_results.txt").read_text())
        )
    assert results[0] == results[1]


def test_negative_length_bucket_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_classifier.main(
            [
                "--config",
                os.path.join(ROOT, "configs", "glue_tiny.json"),
                "--generated-data",
                "--length-bucket",
                "-1",
                "--save-path",
                str(tmp_path),
            ]
        )
    assert exc.value.code != 0
    assert "length_bucket must be 0 (off) or positive" in capsys.readouterr().err


def test_trim_keeps_non_sequence_features():
    features = {
        "input_mask": tf.constant([[1, 1, 1, 0, 0, 0, 0, 0]]),
        "label_ids": tf.constant([3]),
    }
    features["input_ids"] = features["input_mask"] * 7
    cut = finetuning.trim_to_length(features, 2)
    assert cut["input_ids"].shape == (1, 4) and cut["label_ids"].numpy().tolist() == [3]


@pytest.mark.parametrize("bucket", ["0", "16"])
def test_fine_tuning_compile_only(capsys, tmp_path, bucket):
    """--compile-only traces the full-length step (it failed on unknown batch sizes before)."""
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY, "--generated-data"]
    argv += ["--do-training", "--vocab-size", "100", "--compile-only", "--length-bucket", bucket]
    out = _run(run_classifier.main, [*argv, "--save-path", str(tmp_path)], capsys)
    assert "Training graph successfully compiled" in out
