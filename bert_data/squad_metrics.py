#!/usr/bin/env python3
"""The official SQuAD v1.1 and v2.0 evaluations (exact match and F1), written for this project.

    python3 -m bert_data.squad_metrics dev-v1.1.json predictions.json
    python3 -m bert_data.squad_metrics dev-v2.0.json predictions.json --na-prob-file null_odds.json

Semantics follow `evaluate-v1.1.py` and `evaluate-v2.0.py`: answers are normalised (lower case, ASCII
punctuation removed, articles a/an/the removed, whitespace collapsed); a question scores the maximum
over its gold answers; v2 questions without gold answers expect "" (no answer). With the
`null_odds.json` of `write_predictions` as the no-answer file, v2 also reports the dev-tuned
threshold (`best_f1_thresh`), which is the `--null-score-diff-threshold` to use (USER_NEEDS #27).

One difference: a question missing from the predictions scores 0 in both versions and is reported
on stderr (the official v2 script stops with a KeyError).
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import collections
import json
import re
import string

from common.cli import Option, parse_tool_args
from common.errors import UserError, cli_main
from common.fileio import read_json

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    """Lower-cases, drops ASCII punctuation, then the articles a/an/the, and collapses whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction, ground_truth):
    """v1.1: True when the normalised strings are equal."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def _overlap_f1(pred_tokens, gold_tokens):
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction, ground_truth):
    """v1.1: token-overlap F1 of the normalised strings (0 when either is empty)."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def compute_exact(a_gold, a_pred):
    """v2.0: 1 when the normalised strings are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    """v2.0: token-overlap F1; an empty gold (no answer) scores 1 only against an empty prediction."""
    gold = normalize_answer(a_gold).split()
    pred = normalize_answer(a_pred).split()
    if not gold or not pred:
        return float(gold == pred)
    return _overlap_f1(pred, gold)


def _questions(dataset_json_data):
    """The qas of every paragraph; accepts the whole JSON or its 'data' list."""
    articles = dataset_json_data
    if isinstance(articles, dict):
        articles = articles.get("data")
    if not isinstance(articles, list):
        raise UserError("SQuAD data is not SQuAD JSON: expected an object with a 'data' list")
    try:
        return [qa for article in articles for para in article["paragraphs"] for qa in para["qas"]]
    except (KeyError, TypeError) as err:
        raise UserError(f"SQuAD data is not SQuAD JSON: missing {err}") from None


def _report_missing(missing):
    if missing:
        print(
            f"{len(missing)} question(s) have no prediction and score 0 (first: "
            f"{', '.join(missing[:3])})",
            file=sys.stderr,
        )


def evaluate_v1(dataset_json_data, predictions):
    """The official SQuAD v1.1 evaluation.

    Args:
      dataset_json_data: SQuAD JSON (dict with "data") or its article list.
      predictions: {question id: answer text}.

    Returns:
      {"exact_match": float %, "f1": float %} over all questions of the data.
    """
    questions = _questions(dataset_json_data)
    if not questions:
        raise UserError("SQuAD data has no questions")
    exact = f1 = 0.0
    missing = []
    for qa in questions:
        if qa["id"] not in predictions:
            missing.append(qa["id"])
            continue
        golds = [answer["text"] for answer in qa["answers"]]
        pred = predictions[qa["id"]]
        exact += max(float(exact_match_score(pred, gold)) for gold in golds)
        f1 += max(f1_score(pred, gold) for gold in golds)
    _report_missing(missing)
    return {"exact_match": 100.0 * exact / len(questions), "f1": 100.0 * f1 / len(questions)}


def _best_threshold(predictions, scores, na_probs, has_answer):
    """Official `find_best_thresh`: the no-answer threshold that maximises the total score.

    Starting from "every question predicted as no answer" (all unanswerable ones right), questions
    are switched to their span prediction in increasing order of their no-answer score; the best
    running total and the score at which it was reached are kept.
    """
    current = sum(1 for qid, has in has_answer.items() if not has and qid in scores)
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(has_answer), best_thresh


def evaluate_v2(dataset_json_data, predictions, na_probs=None, na_prob_thresh=1.0):
    """The official SQuAD v2.0 evaluation.

    Args:
      dataset_json_data: SQuAD JSON (dict with "data") or its article list.
      predictions: {question id: answer text, "" for no answer}.
      na_probs: optional {question id: no-answer score}; a question whose score exceeds
        `na_prob_thresh` counts as predicted "no answer". `null_odds.json` works here.
      na_prob_thresh: float.

    Returns:
      dict of exact, f1, total, HasAns_exact/f1/total, NoAns_exact/f1/total (those present), and
      with na_probs best_exact, best_exact_thresh, best_f1, best_f1_thresh. Scores are %.
    """
    questions = _questions(dataset_json_data)
    if not questions:
        raise UserError("SQuAD data has no questions")
    has_answer = {qa["id"]: bool(qa["answers"]) for qa in questions}
    exact_raw, f1_raw, missing = {}, {}, []
    for qa in questions:
        qid = qa["id"]
        if qid not in predictions:
            missing.append(qid)
            continue
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        exact_raw[qid] = max(compute_exact(gold, predictions[qid]) for gold in golds)
        f1_raw[qid] = max(compute_f1(gold, predictions[qid]) for gold in golds)
    _report_missing(missing)
    probs = na_probs if na_probs is not None else dict.fromkeys(predictions, 0.0)
    lacking = [qid for qid in exact_raw if qid not in probs]
    if lacking:
        raise UserError(
            f"the no-answer file has no score for {len(lacking)} predicted question(s) "
            f"(first: {lacking[0]}); use the null_odds.json written with these predictions"
        )

    def thresholded(raw):
        # Predicted "no answer" when the score is above the threshold: right iff there is none.
        return {
            qid: float(not has_answer[qid]) if probs[qid] > na_prob_thresh else float(score)
            for qid, score in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids):
        return {
            "exact": 100.0 * sum(exact.get(q, 0.0) for q in qids) / len(qids),
            "f1": 100.0 * sum(f1.get(q, 0.0) for q in qids) / len(qids),
            "total": len(qids),
        }

    result = summary(list(has_answer))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, has in has_answer.items() if has == wanted]
        if qids:
            result.update({f"{prefix}_{k}": v for k, v in summary(qids).items()})
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, na_probs, has_answer
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(
            predictions, f1_raw, na_probs, has_answer
        )
    return result


def _read_predictions(path):
    """{id: text}; also accepts the reference app's {id: {"prediction_text": ...}} form."""
    data = read_json(path, "predictions file")
    if not isinstance(data, dict):
        raise UserError(f"predictions file {path} must map question ids to answer texts")
    out = {}
    for qid, value in data.items():
        if isinstance(value, dict) and isinstance(value.get("prediction_text"), str):
            value = value["prediction_text"]
        if not isinstance(value, str):
            raise UserError(f"predictions file {path}: the answer of {qid} is not a string")
        out[qid] = value
    return out


def is_v2_data(dataset_json_data):
    """True when any question carries `is_impossible` (SQuAD 2.0 files mark every question)."""
    return any("is_impossible" in qa for qa in _questions(dataset_json_data))


CLI_OPTIONS = [
    Option("data_file", "str", None, "SQuAD JSON with the gold answers", positional=True),
    Option("pred_file", "str", None, "predictions.json: question id -> answer text",
           positional=True),
    Option("na_prob_file", "str", None,
           "v2: no-answer scores (null_odds.json); adds the best threshold", metavar="FILE"),
    Option("na_prob_thresh", "float", 1.0, "v2: predict no answer above this score"),
    Option("version", "str", "auto", "evaluation; auto = 2.0 when the data has is_impossible "
           "fields or --na-prob-file is set", choices=("auto", "1.1", "2.0")),
]  # fmt: skip


def _parse_args(argv):
    return parse_tool_args(
        CLI_OPTIONS,
        argv,
        prog="python3 -m bert_data.squad_metrics",
        description="Official SQuAD v1.1 / v2.0 evaluation; prints the result as JSON.",
    )


@cli_main
def main(argv=None):
    args = _parse_args(argv)
    data = read_json(args.data_file, "SQuAD file")
    predictions = _read_predictions(args.pred_file)
    version = args.version
    if version == "auto":
        version = "2.0" if args.na_prob_file or is_v2_data(data) else "1.1"
    if version == "1.1":
        if args.na_prob_file:
            raise UserError("--na-prob-file is a SQuAD 2.0 option; drop it or use --version 2.0")
        result = evaluate_v1(data, predictions)
    else:
        na_probs = read_json(args.na_prob_file, "no-answer file") if args.na_prob_file else None
        if na_probs is not None and not isinstance(na_probs, dict):
            raise UserError(f"no-answer file {args.na_prob_file} must map question ids to numbers")
        result = evaluate_v2(data, predictions, na_probs, args.na_prob_thresh)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
