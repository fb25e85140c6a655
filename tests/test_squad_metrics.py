"""Official SQuAD v1.1 / v2.0 metrics (bert_data/squad_metrics.py) on hand-computed cases."""

import json

import pytest

from bert_data import squad_metrics as m
from common.errors import UserError


def dataset(questions):
    """[(id, [gold texts], is_impossible or None)] -> SQuAD JSON, one question per paragraph."""
    paragraphs = []
    for qid, golds, impossible in questions:
        qa = {
            "id": qid,
            "question": "?",
            "answers": [{"text": g, "answer_start": 0} for g in golds],
        }
        if impossible is not None:
            qa["is_impossible"] = impossible
        paragraphs.append({"context": "c", "qas": [qa]})
    return {"version": "x", "data": [{"title": "t", "paragraphs": paragraphs}]}


def test_normalize_answer():
    assert m.normalize_answer("The  Quick, Brown fox!") == "quick brown fox"
    assert m.normalize_answer("An apple a day") == "apple day"
    assert m.normalize_answer("theater anthem") == "theater anthem"  # whole words only
    assert m.normalize_answer("U.S.A.") == "usa"
    assert m.normalize_answer("Ça va—bien") == "ça va—bien"  # only ASCII punctuation goes
    assert m.normalize_answer(" the ") == ""


def test_exact_and_f1():
    assert m.exact_match_score("The Denver Broncos", "denver broncos!")
    assert not m.exact_match_score("Denver", "Denver Broncos")
    # pred [cat sat on mat] vs gold [cat sat]: 2 common, P = 1/2, R = 1, F1 = 2/3.
    assert m.f1_score("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    # Counts are clipped: {dog 2, cat 1} & {dog 1, cat 2} = 2 common of 3 each.
    assert m.f1_score("dog dog cat", "dog cat cat") == pytest.approx(2 / 3)
    assert m.f1_score("x", "y") == 0
    # v1 gives 0 for two empty answers; v2 counts "no answer" vs "no answer" as right.
    assert m.f1_score("", "") == 0
    assert m.compute_f1("", "") == 1 and m.compute_f1("", "x") == 0 and m.compute_f1("x", "") == 0
    assert m.compute_f1("the", "") == 1  # "the" normalises to nothing
    assert m.compute_exact("", "") == 1 and m.compute_exact("Paris", "paris.") == 1
    assert m.compute_exact("Paris", "Lyon") == 0
    assert m.compute_f1("big red dog", "red dog") == pytest.approx(0.8)  # P 1, R 2/3


def test_evaluate_v1(capsys):
    data = dataset(
        [
            ("q1", ["Denver Broncos", "The Denver Broncos"], None),
            ("q2", ["Santa Clara, California", "Levi's Stadium"], None),
            ("q3", ["Super Bowl"], None),
        ]
    )
    predictions = {"q1": "denver broncos!", "q2": "Levi's Stadium in Santa Clara"}
    result = m.evaluate_v1(data, predictions)
    # q1 exact; q2 best gold is [levis stadium]: P 2/5, R 1, F1 4/7; q3 missing scores 0.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)
    assert "1 question(s) have no prediction" in capsys.readouterr().err
    assert m.evaluate_v1(data["data"], {**predictions, "q3": "super bowl"})["exact_match"] == (
        pytest.approx(200 / 3)
    )


V2_DATA = dataset(
    [
        ("a1", ["Paris"], False),
        ("a2", ["big red dog"], False),
        ("n1", [], True),
        ("n2", [], True),
    ]
)
V2_PREDICTIONS = {"a1": "Paris", "a2": "red dog", "n1": "", "n2": "something"}


def test_evaluate_v2_without_no_answer_scores():
    result = m.evaluate_v2(V2_DATA, V2_PREDICTIONS)
    # exact: a1 1, a2 0, n1 1, n2 0; f1: 1, 0.8, 1, 0.
    assert result == pytest.approx(
        {
            "exact": 50.0,
            "f1": 70.0,
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 90.0,
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        }
    )


def test_evaluate_v2_threshold_and_best_threshold():
    na_probs = {"a1": 0.1, "a2": 0.6, "n2": 0.7, "n1": 0.9}
    result = m.evaluate_v2(V2_DATA, V2_PREDICTIONS, na_probs, na_prob_thresh=0.5)
    # Above 0.5 counts as "no answer": a2 becomes wrong (0), n1 and n2 right (1); a1 keeps 1.
    assert result["exact"] == pytest.approx(75.0) and result["f1"] == pytest.approx(75.0)
    assert result["HasAns_f1"] == pytest.approx(50.0) and result["NoAns_exact"] == 100.0
    # Search from "all no answer" (2 right), switching questions on in na_prob order:
    # exact: a1 +1 -> 3 (at 0.1), a2 +0 -> 3, n2 -1 -> 2, n1 +0 -> 2: best 3/4 at 0.1.
    # f1:    a1 +1 -> 3 (at 0.1), a2 +0.8 -> 3.8 (at 0.6), n2 -1, n1 +0: best 3.8/4 at 0.6.
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == 0.1
    assert result["best_f1"] == pytest.approx(95.0) and result["best_f1_thresh"] == 0.6
    with pytest.raises(UserError, match="no score for 1 predicted question"):
        m.evaluate_v2(V2_DATA, V2_PREDICTIONS, {"a1": 0.0, "a2": 0.0, "n1": 0.0})


def test_evaluate_v2_missing_predictions(capsys):
    result = m.evaluate_v2(V2_DATA, {"a1": "Paris", "n1": ""})
    assert result["exact"] == pytest.approx(50.0) and result["total"] == 4
    assert result["HasAns_exact"] == pytest.approx(50.0) and result["NoAns_f1"] == 50.0
    assert "2 question(s) have no prediction" in capsys.readouterr().err
    best = m.evaluate_v2(V2_DATA, {"a1": "Paris", "n1": ""}, {"a1": 0.2, "n1": 0.5})
    # Start: n1 right (n2 has no prediction, never right): 1; a1 +1 -> 2 at 0.2; n1 +0.
    assert best["best_exact"] == pytest.approx(50.0) and best["best_exact_thresh"] == 0.2


def test_cli(tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(V2_DATA), encoding="utf-8")
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps(V2_PREDICTIONS), encoding="utf-8")
    odds = tmp_path / "null_odds.json"
    odds.write_text(json.dumps({"a1": 0.1, "a2": 0.6, "n2": 0.7, "n1": 0.9}), encoding="utf-8")
    m.main([str(data), str(preds)])
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(70.0)  # v2: auto-detected
    m.main([str(data), str(preds), "--na-prob-file", str(odds), "--na-prob-thresh", "0.5"])
    out = json.loads(capsys.readouterr().out)
    assert out["best_f1_thresh"] == 0.6 and out["exact"] == pytest.approx(75.0)

    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps(dataset([("q", ["Denver Broncos"], None)])), encoding="utf-8")
    hf_style = tmp_path / "hf.json"  # the reference app's v2 output format is accepted too
    hf_style.write_text(
        json.dumps({"q": {"prediction_text": "Denver", "no_answer_probability": 0.0}}),
        encoding="utf-8",
    )
    m.main([str(v1), str(hf_style)])
    assert json.loads(capsys.readouterr().out) == pytest.approx(
        {"exact_match": 0.0, "f1": 100 / 1.5}
    )

    for argv, message in (
        (
            [str(v1), str(preds), "--na-prob-file", str(odds), "--version", "1.1"],
            "SQuAD 2.0 option",
        ),
        ([str(v1), str(tmp_path / "nope.json")], "cannot read predictions file"),
        ([str(odds), str(preds)], "not SQuAD JSON"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            m.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
