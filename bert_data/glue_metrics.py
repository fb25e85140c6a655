"""GLUE metrics in NumPy: accuracy, F1, Matthews correlation, Pearson, Spearman; degenerate runs.

Each task reports what the GLUE leaderboard reports for it: CoLA Matthews correlation, MRPC and QQP
accuracy and F1, STS-B Pearson and Spearman, the others accuracy. The reference app computed
accuracy (or Pearson/Spearman) per batch and averaged the batches; these are over the whole set.
"""

import numpy as np

from bert_data.glue import get_task


def _pair(predictions, labels):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or predictions.size == 0:
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must be equal non-empty [N]"
        )
    return predictions, labels


def accuracy(predictions, labels):
    """Fraction of equal entries of two int arrays [N]."""
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions, labels):
    """Binary F1 of class 1: 2·TP / (2·TP + FP + FN); 0 when there is no positive at all."""
    predictions, labels = _pair(predictions, labels)
    predicted, actual = predictions == 1, labels == 1
    true_pos = np.sum(predicted & actual)
    denominator = np.sum(predicted) + np.sum(actual)
    return float(2 * true_pos / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels):
    """Matthews correlation coefficient (the multi-class R_K form; binary MCC for two classes).

    Returns 0 when it is undefined (all predictions or all labels one class).
    """
    predictions, labels = _pair(predictions, labels)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    n = labels.size
    confusion = np.zeros((classes.size, classes.size), np.float64)  # [true, predicted]
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_count, pred_count = confusion.sum(axis=1), confusion.sum(axis=0)
    correct = np.trace(confusion)
    covariance = correct * n - true_count @ pred_count
    spread = (n * n - pred_count @ pred_count) * (n * n - true_count @ true_count)
    return float(covariance / np.sqrt(spread)) if spread > 0 else 0.0


def pearson(predictions, labels):
    """Pearson correlation of two float arrays [N]; NaN when either is constant."""
    x, y = (np.asarray(a, np.float64) for a in _pair(predictions, labels))
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / norm) if norm > 0 else float("nan")


def rank_average(values):
    """Ranks 1..N of a float array [N], tied values sharing the mean of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Runs of equal values: first position of each run, and each element's run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    ends = np.r_[starts[1:], values.size]  # one past each run
    ranks = np.empty(values.size, np.float64)
    ranks[order] = (starts + ends + 1)[run] / 2.0  # mean of 1-based ranks starts+1 .. ends
    return ranks


def spearman(predictions, labels):
    """Spearman rank correlation (Pearson of average ranks); NaN when either is constant."""
    predictions, labels = _pair(predictions, labels)
    return pearson(rank_average(predictions), rank_average(labels))


def _class_ids(predictions):
    """Label ids [N] from ids [N] or logits [N, C]."""
    predictions = np.asarray(predictions)
    return predictions.argmax(axis=-1) if predictions.ndim == 2 else predictions


def task_metrics(task, predictions, labels):
    """The GLUE metrics of one task.

    Args:
      task: task name (see bert_data.glue.TASKS).
      predictions: label ids int [N] or logits [N, C]; for stsb scores float [N] or [N, 1].
      labels: label ids int [N]; for stsb scores float [N].

    Returns:
      dict of floats: cola {mcc, accuracy}; mrpc, qqp {accuracy, f1, acc_and_f1}; stsb {pearson,
      spearman, corr} (corr = their mean); every other task {accuracy}.
    """
    spec = get_task(task)
    if spec.is_regression:
        scores = np.asarray(predictions, np.float64)
        scores = scores.reshape(scores.shape[0], -1)[:, 0] if scores.ndim == 2 else scores
        result = {"pearson": pearson(scores, labels), "spearman": spearman(scores, labels)}
        result["corr"] = (result["pearson"] + result["spearman"]) / 2
        return result
    ids = _class_ids(predictions)
    result = {"accuracy": accuracy(ids, labels)}
    if spec.name == "cola":
        result["mcc"] = matthews_corrcoef(ids, labels)
    elif spec.name in ("mrpc", "qqp"):
        result["f1"] = f1(ids, labels)
        result["acc_and_f1"] = (result["accuracy"] + result["f1"]) / 2
    return result


def degenerate(predictions, labels):
    """A warning when a run collapsed to one output (USER_NEEDS #19), else None.

    Classification (integer predictions or logits [N, C]): every prediction is the same class; the
    text gives the accuracy that earns and the majority-class rate of the labels. Regression (float
    predictions [N]): every score is the same, so correlations are undefined.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if np.issubdtype(predictions.dtype, np.floating) and predictions.ndim == 1:
        scale = max(float(np.ptp(labels)), 1.0) if labels.size else 1.0
        if predictions.size and np.ptp(predictions) <= 1e-6 * scale:
            return (
                f"degenerate run: every prediction is {float(predictions[0]):.4g}, so Pearson and "
                "Spearman are undefined; try another seed or a lower learning rate"
            )
        return None
    ids = _class_ids(predictions)
    if ids.size == 0 or np.any(ids != ids.flat[0]):
        return None
    constant = ids.flat[0]
    classes, counts = np.unique(labels, return_counts=True)
    majority = classes[np.argmax(counts)]
    return (
        f"degenerate run: every prediction is class {constant} (accuracy "
        f"{np.mean(labels == constant):.4f}); the majority class {majority} makes up "
        f"{counts.max() / labels.size:.4f} of the labels; try another seed or a lower learning rate"
    )
