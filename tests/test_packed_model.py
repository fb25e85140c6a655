"""Packed BERT pretraining (records.py "packed layout"): the model and loss of packed rows equal
those of the same sequences unpacked; no attention across sequences; run_pretraining trains on
packed records made by create_pretraining_data.py --packing."""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import modeling
from bert_data import packing
from bert_data.records import parse_example, read_records, unpack
from common.errors import UserError
from objectives.pretraining import pretraining_loss, real_tokens
from tests import test_modeling
from tests.test_run_pretraining import local, small_run_args

S, P, K, N = 23, 3, 3, 9  # row length, masks per sequence, sequences per row, sequences
# test_modeling's odd tiny sizes; positions for a whole row; no dropout (see below).
TINY = {
    **test_modeling.TINY,
    "max_position_embeddings": S,
    "max_predictions_per_seq": P,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def unpacked_sequences(seed=0):
    """N standard-layout sequences [N,S] of random lengths 4..14 (so they pack 1-3 to a row),
    1..P real predictions each (first), random NSP labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 15, N)
    preds = rng.integers(1, P + 1, N)
    f = {name: np.zeros((N, S), np.int64) for name in ("input_ids", "input_mask", "segment_ids")}
    f.update(
        masked_lm_positions=np.zeros((N, P), np.int64),
        masked_lm_ids=np.zeros((N, P), np.int64),
        masked_lm_weights=np.zeros((N, P), np.float32),
    )
    for i, (n, p) in enumerate(zip(lengths, preds)):
        f["input_ids"][i, :n] = rng.integers(5, 99, n)
        f["input_mask"][i, :n] = 1
        f["segment_ids"][i, n // 2 : n] = 1
        f["masked_lm_positions"][i, :p] = np.sort(rng.choice(np.arange(1, n), p, replace=False))
        f["masked_lm_ids"][i, :p] = rng.integers(5, 99, p)
        f["masked_lm_weights"][i, :p] = 1.0
    labels = rng.integers(0, 2, N)
    return f, labels


def batches(seed=0):
    """(unpacked features, packed features), the same N sequences, as model inputs."""
    f, labels = unpacked_sequences(seed)
    members = packing.pack(f["input_mask"].sum(1), S, K)
    packed = {n: v for n, v, _ in packing.packed_features(f, members, labels.astype(bool))}
    packed.pop("masked_lm_sequence_ids")
    unpacked = {**f, "next_sentence_labels": labels[:, None]}
    to_tf = lambda d: {  # noqa: E731
        k: tf.constant(v, tf.float32 if v.dtype.kind == "f" else tf.int32) for k, v in d.items()
    }
    return to_tf(unpacked), to_tf(packed)


def tiny_model():
    model = modeling.BertModel(modeling.BertConfig(**TINY))
    test_modeling.randomize(model, seed=1)  # every variable random (biases, gamma, beta too)
    return model


def loss_and_grads(model, features, dtype):
    variables = list(model.params.values())
    with tf.GradientTape() as tape:
        tape.watch(variables)
        outputs = model(features, compute_dtype=dtype)
        result = pretraining_loss(outputs, features)
    grads = tape.gradient(result["loss"], variables)
    return (
        {k: v.numpy() for k, v in result.items()},
        {name: tf.convert_to_tensor(g).numpy() for name, g in zip(model.params, grads)},
        outputs,
    )


@pytest.mark.parametrize("dtype, tol", [(tf.float64, 1e-12), (tf.float32, 1e-6)])
def test_packed_batch_equals_unpacked_batch(dtype, tol):
    """Loss, accuracies and every gradient of the packed rows equal the unpacked batch's: the
    loss within `tol` (summation order differs), the gradients within 1e-6 (the variables are
    float32 masters, so even a float64 run returns float32 gradients).

    Dropout is off: its masks hash each element's flat index in the layer's [B,S,H] and
    [B,N,S,S] tensors (modeling_ops), and a token sits at another (row, slot) once packed, so
    the two layouts draw different (equally valid) masks."""
    unpacked, packed = batches()
    rows = packed["input_ids"].shape[0]
    assert rows < N and int(tf.reduce_max(tf.reduce_sum(packed["next_sentence_weights"], 1))) > 1
    model = tiny_model()
    u_result, u_grads, u_out = loss_and_grads(model, unpacked, dtype)
    p_result, p_grads, p_out = loss_and_grads(model, packed, dtype)
    assert p_out["nsp_logits"].shape == (rows, K, 2)
    assert p_out["pooled_output"].shape == (rows, K, 36)
    assert p_out["mlm_logits"].shape == (rows, K * P, 99)
    for key in ("loss", "mlm_loss", "nsp_loss"):
        assert abs(u_result[key] - p_result[key]) < tol, key
    for key in ("mlm_acc", "nsp_acc"):
        assert u_result[key] == p_result[key], key
    worst = max(np.abs(u_grads[k] - p_grads[k]).max() for k in u_grads)
    print(f"{dtype.name}: loss diff {abs(u_result['loss'] - p_result['loss']):.3g}, "
          f"max grad diff {worst:.3g}")  # fmt: skip
    assert worst < 1e-6
    assert float(real_tokens(packed, False, P)) == float(real_tokens(unpacked, False, P))


def test_evaluation_sums_count_real_sequences():
    model = tiny_model()
    sums = [pretraining_loss(model(f, compute_dtype=tf.float64), f, sums=True) for f in batches(3)]
    assert float(sums[0]["sequences"]) == float(sums[1]["sequences"]) == N
    for key in ("mlm_ce_sum", "mlm_weight_sum", "mlm_hit_sum", "nsp_ce_sum", "nsp_hit_sum"):
        np.testing.assert_allclose(float(sums[0][key]), float(sums[1][key]), atol=1e-9)


def test_no_attention_across_sequences_and_no_nan_on_padding():
    _, packed = batches()
    ids = packed["sequence_ids"].numpy()
    row = int(np.flatnonzero((ids.max(1) >= 2) & (ids == 0).any(1))[0])  # 2+ sequences, padding
    model = tiny_model()
    outputs = model(packed)
    out = outputs["sequence_output"].numpy()
    assert np.isfinite(out).all()
    # bert_encoder (every layer in full, a [B,1,S,S] mask) pools the same K [CLS] rows.
    _, pooled = modeling.bert_encoder(model.params, model.config, packed)
    np.testing.assert_allclose(pooled, outputs["pooled_output"], atol=1e-6)
    changed = dict(packed)
    input_ids = packed["input_ids"].numpy().copy()
    second = ids[row] == 2
    input_ids[row, second] = (input_ids[row, second] + 7) % 94 + 5
    changed["input_ids"] = tf.constant(input_ids)
    after = model(changed)["sequence_output"].numpy()
    assert np.abs(after[row, second] - out[row, second]).max() > 1e-3  # the change is seen
    others = (ids[row] != 2) & (ids[row] != 0)  # the other sequences (padding sees all keys)
    np.testing.assert_array_equal(after[row, others], out[row, others])
    np.testing.assert_array_equal(np.delete(after, row, 0), np.delete(out, row, 0))


# ----------------------------------------------------------------------------- run_pretraining

STEP = re.compile(
    r"^step: (\d+), .*mlm_loss: ([\d.]+), nsp_loss: ([\d.]+), mlm_acc: ([\d.]+)", re.M
)


@pytest.fixture(scope="module")
def packed_records(tmp_path_factory, sample_vocab):
    from bert_data import create_pretraining_data as cpd
    from tests.conftest import SAMPLE

    out = str(tmp_path_factory.mktemp("packed") / "packed.tfrecord")
    argv = ["--input-file", SAMPLE, "--output-file", out, "--vocab-file", sample_vocab]
    argv += ["--do-lower-case", "--quiet", "--duplication-factor", "2", "--packing"]
    argv += ["--short-seq-prob", "0.5"]  # short instances: 2-3 per row
    cpd.run(cpd.build_parser().parse_args(argv))
    return out


def _train(tmp_path, capsys, *args):
    """100 steps of the tiny model (micro-batch 8 rows) -> (mlm_loss, mlm_acc) [100,2]."""
    run = small_run_args(tmp_path, "--static-mask", "false", *args)
    run += ["--micro-batch-size", "8", "--num-train-steps", "100"]
    result = local(capsys, *run, "--base-learning-rate", "0.03", "--warmup", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    steps = STEP.findall(result.stdout)
    assert [int(s[0]) for s in steps] == list(range(100))
    return np.array([[float(s[1]), float(s[3])] for s in steps]), result.stdout


def test_run_pretraining_trains_on_packed_records(
    tmp_path, capsys, sample_vocab, sample_records, packed_records
):
    with open(packed_records + ".fingerprint.json") as f:
        stamp = json.load(f)
    assert stamp["layout"] == "packed_sequences" and stamp["max_sequences_per_pack"] == 3
    vocab = ["--vocab-file", sample_vocab]
    data = ["--train-file", packed_records, "--eval-file", packed_records]
    packed, out = _train(tmp_path / "p", capsys, *data, *vocab, "--steps-per-eval", "100")
    assert "max_sequences_per_pack" not in out  # read from the records, not a setting
    # Held-out evaluation counts the real sequences of the rows.
    sequences = sum(len(unpack(parse_example(r))) for r in read_records(packed_records))
    assert re.search(rf"^eval at step 99 \({sequences} sequences\): mlm_loss", out, re.M), out[
        -500:
    ]
    unpacked, _ = _train(tmp_path / "u", capsys, "--train-file", sample_records["standard"], *vocab)
    for curve in (packed, unpacked):
        assert np.isfinite(curve).all()
        first, last = curve[:10].mean(0), curve[-30:].mean(0)
        assert last[0] < first[0] - 0.7 and last[1] > first[1] + 0.015, (first, last)
    # Like the unpacked run's (fig.: both from about 0.05 to 0.07-0.08, loss 6.3 to 5.2-5.3).
    assert abs(packed[-30:, 1].mean() - unpacked[-30:, 1].mean()) < 0.03
    # GroupBERT's convolution would mix the sequences of a row: one line.
    flags = ["--train-file", packed_records, "--groupbert", "true", "--num-train-steps", "1"]
    bad = local(capsys, *small_run_args(tmp_path / "g", "--static-mask", "false", *flags))
    assert bad.returncode == 2
    assert "GroupBERT cannot keep apart" in bad.stderr.strip().splitlines()[-1]
    flags = ["--train-file", sample_records["standard"], "--eval-file", packed_records]
    bad = local(capsys, *small_run_args(tmp_path / "e", "--static-mask", "false", *flags))
    assert bad.returncode == 2
    assert "but the training data holds unpacked sequences" in bad.stderr.strip().splitlines()[-1]


def test_packed_data_with_static_mask_is_one_line(packed_records):
    from bert_data import pretraining

    assert pretraining.check_files([packed_records], 128, 20, False, None)[1] == 3
    with pytest.raises(UserError, match="set static_mask false"):
        pretraining.check_files([packed_records], 128, 20, True, None)
