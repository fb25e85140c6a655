"""GLUE metrics against hand-worked values and scipy.stats (a test-only dependency)."""

import math

import numpy as np
import pytest

from bert_data import glue_metrics as gm

# A binary case worked by hand: positions 0, 4, 6 are true positives, 1 a false positive, 3 a false
# negative, 2 and 5 true negatives.
PRED = [1, 1, 0, 0, 1, 0, 1]
GOLD = [1, 0, 0, 1, 1, 0, 1]
TP, FP, FN, TN = 3, 1, 1, 2


def test_binary_metrics_by_hand():
    assert gm.accuracy(PRED, GOLD) == pytest.approx(5 / 7, abs=1e-15)
    assert gm.f1(PRED, GOLD) == pytest.approx(2 * TP / (2 * TP + FP + FN), abs=1e-15)  # 0.75
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert mcc == pytest.approx(5 / 12)
    assert gm.matthews_corrcoef(PRED, GOLD) == pytest.approx(5 / 12, abs=1e-15)
    # Swapping the roles of predictions and labels leaves MCC unchanged but matters for F1's sign.
    assert gm.matthews_corrcoef(GOLD, PRED) == pytest.approx(5 / 12, abs=1e-15)
    inverted = [1 - p for p in PRED]
    assert gm.matthews_corrcoef(inverted, GOLD) == pytest.approx(-5 / 12, abs=1e-15)


def test_multiclass_mcc_by_hand():
    # Confusion (rows true): [[2,0,0],[0,1,1],[0,1,1]]: 4 correct of 6, every class count 2.
    # (4·6 − 3·2·2) / sqrt((36 − 12)(36 − 12)) = 12 / 24.
    labels = [0, 1, 2, 0, 1, 2]
    preds = [0, 1, 2, 0, 2, 1]
    assert gm.matthews_corrcoef(preds, labels) == pytest.approx(0.5, abs=1e-15)


def test_undefined_cases():
    assert gm.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert gm.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    assert gm.f1([0, 0, 0], [0, 0, 0]) == 0.0
    assert gm.f1([0, 0, 0], [1, 0, 0]) == 0.0
    assert math.isnan(gm.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        gm.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError):
        gm.accuracy([], [])


def test_spearman_ties_by_hand():
    # Average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    np.testing.assert_array_equal(gm.rank_average([5.0, 7.0, 7.0, 9.0]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(gm.rank_average([3, 1, 3, 3, 0]), [4, 2, 4, 4, 1])
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 2, 3, 4]) - 2.5
    expected = rx @ ry / math.sqrt((rx @ rx) * (ry @ ry))
    assert gm.spearman([5.0, 7.0, 7.0, 9.0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected, 1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_equal_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    n = 101
    labels = rng.integers(0, 26, n) / 5.0  # STS-B-like scores with many ties
    predictions = labels + rng.normal(0, 1.5, n)
    predictions[:20] = np.round(predictions[:20])  # ties in the predictions too
    assert gm.pearson(predictions, labels) == pytest.approx(
        stats.pearsonr(predictions, labels)[0], abs=1e-12
    )
    assert gm.spearman(predictions, labels) == pytest.approx(
        stats.spearmanr(predictions, labels)[0], abs=1e-12
    )
    np.testing.assert_allclose(gm.rank_average(labels), stats.rankdata(labels), atol=0)


def test_task_metrics_keys_and_values():
    cola = gm.task_metrics("cola", PRED, GOLD)
    assert set(cola) == {"mcc", "accuracy"}
    assert cola["mcc"] == pytest.approx(5 / 12)
    for task in ("mrpc", "qqp"):
        out = gm.task_metrics(task, PRED, GOLD)
        assert set(out) == {"accuracy", "f1", "acc_and_f1"}
        assert out["acc_and_f1"] == pytest.approx((5 / 7 + 0.75) / 2)
    for task in ("sst2", "mnli", "mnli-mm", "qnli", "rte", "wnli", "ax"):
        assert gm.task_metrics(task, PRED, GOLD) == {"accuracy": pytest.approx(5 / 7)}
    # Logits [N, C] are reduced with argmax.
    logits = np.eye(3)[[0, 1, 2, 2]] * 2.0 - 0.5
    assert gm.task_metrics("mnli", logits, [0, 1, 2, 0])["accuracy"] == pytest.approx(0.75)
    scores = np.array([[0.5], [1.0], [4.0], [3.0]])  # [N, 1] regression outputs
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    stsb = gm.task_metrics("stsb", scores, gold)
    assert set(stsb) == {"pearson", "spearman", "corr"}
    assert stsb["spearman"] == pytest.approx(0.8)  # ranks 1,2,4,3: 1 − 6·2/(4·15)
    xs, ys = scores[:, 0] - scores.mean(), gold - gold.mean()
    assert stsb["pearson"] == pytest.approx(xs @ ys / math.sqrt((xs @ xs) * (ys @ ys)), abs=1e-15)
    assert stsb["corr"] == pytest.approx((stsb["pearson"] + 0.8) / 2)


def test_degenerate():
    labels = [0, 0, 1, 0, 1, 0, 0]  # majority class 0: 5 of 7
    message = gm.degenerate([1] * 7, labels)
    assert "class 1" in message and f"{2 / 7:.4f}" in message and f"{5 / 7:.4f}" in message
    assert gm.degenerate(np.tile([[3.0, -1.0]], (7, 1)), labels) is not None  # logits, all class 0
    assert gm.degenerate([0, 0, 0, 0, 0, 0, 1], labels) is None
    assert "2.5" in gm.degenerate(np.full(4, 2.5), [0.0, 1.0, 4.0, 5.0])
    assert gm.degenerate(np.array([2.5, 2.6, 2.5, 2.5]), [0.0, 1.0, 4.0, 5.0]) is None
