"""kqa.metric_v2: the SQuAD 2.0-style evaluation, equal to the official v2.0 script's output on hand-made
files (with the official normalisation), and KorQuAD's character F1 variant on hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kqa.metric_v2 import compute_f1, find_best_thresh, score_files_v2, score_predictions_v2

OFFICIAL_SCRIPT = Path(__file__).resolve().parents[1] / ".cache" / "squad_v2_official" / "evaluate-v2.0.py"
needs_official = pytest.mark.skipif(
    not OFFICIAL_SCRIPT.is_file(),
    reason=f"the official SQuAD v2.0 script is not at {OFFICIAL_SCRIPT}: run scripts/fetch_squad_v2_script.sh",
)

CONTEXT = "The Eiffel Tower in Paris, France was designed by Gustave Eiffel's company and finished in 1889."
# id → gold answers ([] = unanswerable), prediction, na_prob (null odds: ties, values above 1, infinity)
CASES = {
    "q1": (["the Eiffel Tower", "Eiffel Tower"], "Eiffel Tower", 0.1),
    "q2": (["Paris, France", "Paris"], "in Paris", 0.5),
    "q3": (["1889"], "", 0.5),
    "q4": (["Gustave Eiffel"], "Eiffel", 0.5),
    "q5": ([], "", float("inf")),
    "q6": ([], "Lyon", 0.5),
    "q7": ([], "the", 1.5),  # normalises to "": right by EM/F1, but an answer for the threshold search
    "q8": (["Gustave Eiffel's company"], "London", 0.2),
    "q9": (["the", "a company"], "company", -1.0),  # the gold "the" normalises to "" and is dropped
    "q10": ([], "", 0.1),
    "q11": (["finished in 1889", "1889"], "finished in 1889.", 2.5),
}


def _write_files(tmp_path: Path, cases=CASES) -> tuple[Path, Path, Path]:
    qas = []
    for qid, (golds, _, _) in cases.items():
        answers = [{"text": g, "answer_start": max(CONTEXT.find(g), 0)} for g in golds]
        qas.append({"id": qid, "question": f"question {qid}?", "answers": answers, "is_impossible": not golds})
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    paths = tmp_path / "data.json", tmp_path / "pred.json", tmp_path / "na.json"
    paths[0].write_text(json.dumps(data), encoding="utf-8")
    paths[1].write_text(json.dumps({qid: c[1] for qid, c in cases.items()}), encoding="utf-8")
    paths[2].write_text(json.dumps({qid: c[2] for qid, c in cases.items()}), encoding="utf-8")
    return paths


def _official(data: Path, pred: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(OFFICIAL_SCRIPT), str(data), str(pred), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@needs_official
@pytest.mark.parametrize("thresh", [None, 0.3, 0.5, -2.0])
def test_equals_the_official_script_with_na_probs(tmp_path, thresh):
    data, pred, na = _write_files(tmp_path)
    extra = ["--na-prob-file", str(na)] + ([] if thresh is None else ["--na-prob-thresh", str(thresh)])
    official = _official(data, pred, *extra)
    ours = score_files_v2(data, pred, na, normalization="squad", na_prob_thresh=1.0 if thresh is None else thresh)
    assert set(official) == set(ours.scores)
    for key, value in official.items():
        assert ours.scores[key] == value, key
    assert official["NoAns_total"] == 4 and official["HasAns_total"] == 7
    assert 0 < official["best_f1"] and official["best_f1"] >= official["f1"] - 1e-9


@needs_official
def test_equals_the_official_script_without_na_probs(tmp_path):
    data, pred, _ = _write_files(tmp_path)
    official = _official(data, pred)
    ours = score_files_v2(data, pred, normalization="squad", na_prob_thresh=1.0)
    assert ours.scores == official
    assert "best_f1" not in ours.scores


@needs_official
def test_ties_are_met_in_file_order_like_the_official_script(tmp_path):
    """All na_probs equal: the best may fall inside the tie group, at the same threshold value."""
    cases = {
        "a": ([], "x", 0.0),
        "b": (["Paris"], "Paris", 0.0),
        "c": (["1889"], "1889", 0.0),
        "d": ([], "y", 0.0),
        "e": ([], "z", 0.0),
    }
    data, pred, na = _write_files(tmp_path, cases)
    official = _official(data, pred, "--na-prob-file", str(na))
    ours = score_files_v2(data, pred, na, normalization="squad", na_prob_thresh=1.0)
    assert ours.scores == official
    # 3 right with "" everywhere; a: 2, b: 3, c: 4 (best), d: 3, e: 2
    assert ours.scores["best_exact"] == 80.0 and ours.scores["best_exact_thresh"] == 0.0


def test_best_thresh_search_by_hand():
    has_ans = {"h1": True, "h2": True, "n1": False, "n2": False}
    preds = {"h1": "a", "h2": "b", "n1": "c", "n2": ""}
    scores = {"h1": 1, "h2": 0.5, "n1": 0, "n2": 1}
    na = {"n2": 3.0, "h1": -2.0, "n1": 1.0, "h2": 0.5}
    # "" everywhere: 2; answer h1 (-2.0): 3; h2 (0.5): 3.5 best; n1 (1.0): 2.5; n2: 2.5
    assert find_best_thresh(preds, scores, na, has_ans) == (87.5, 0.5)


# ---------------------------------------------------------------------------------------------------
# KorQuAD normalisation and character F1 (the default)
# ---------------------------------------------------------------------------------------------------

KOREAN = [
    {"id": "k1", "answers": {"text": ["서울특별시"], "answer_start": [0]}, "question_type": 1},
    {"id": "k2", "answers": {"text": [], "answer_start": []}, "question_type": 3},
    {"id": "k3", "answers": {"text": [], "answer_start": []}, "question_type": 3},
    {"id": "k4", "answers": {"text": ["세종대왕"], "answer_start": [0]}, "question_type": 1},
]
KOREAN_PREDS = {"k1": "서울", "k2": "", "k3": "부산", "k4": "《세종대왕》"}
KOREAN_ODDS = {"k1": 0.5, "k2": 3.0, "k3": 1.0, "k4": -2.0}
SEOUL_F1 = 2 * 1.0 * 0.4 / 1.4  # 서울 vs 서울특별시: P = 2/2, R = 2/5


def test_korean_char_f1_by_hand():
    result = score_predictions_v2(KOREAN, KOREAN_PREDS, KOREAN_ODDS)
    s = result.scores
    assert s["total"] == 4 and s["HasAns_total"] == 2 and s["NoAns_total"] == 2
    assert s["exact"] == pytest.approx(50.0) and s["f1"] == pytest.approx(100 * (SEOUL_F1 + 2) / 4)
    assert s["HasAns_exact"] == pytest.approx(50.0) and s["HasAns_f1"] == pytest.approx(100 * (SEOUL_F1 + 1) / 2)
    assert s["NoAns_exact"] == pytest.approx(50.0) and s["NoAns_f1"] == pytest.approx(50.0)
    # order k4 (-2), k1 (0.5), k3 (1.0), k2 (3.0) from 2: F1 3 → 3 + 0.571 (best) → 2.571 → 2.571
    assert s["best_f1"] == pytest.approx(100 * (3 + SEOUL_F1) / 4) and s["best_f1_thresh"] == 0.5
    # EM: 3 at k4 (best), k1 adds nothing
    assert s["best_exact"] == pytest.approx(75.0) and s["best_exact_thresh"] == -2.0
    per_type = result.breakdown["question_type"]
    assert per_type["1"]["total"] == 2 and "NoAns_total" not in per_type["1"]
    assert per_type["3"]["NoAns_exact"] == pytest.approx(50.0) and per_type["3"]["best_f1"] == pytest.approx(100.0)


def test_korean_threshold_blanks_predictions():
    s = score_predictions_v2(KOREAN, KOREAN_PREDS, KOREAN_ODDS, na_prob_thresh=0.0).scores
    # k1 (0.5), k2 (3.0), k3 (1.0) blanked: k1 0, k2 1, k3 1, k4 1
    assert s["exact"] == pytest.approx(75.0) and s["f1"] == pytest.approx(75.0)


def test_char_f1_empty_sides_and_squad_word_f1_differ():
    assert compute_f1("", "") == 1 and compute_f1("서울", "") == 0 and compute_f1("", "서울") == 0
    assert compute_f1("서울특별시", "서울") == pytest.approx(SEOUL_F1)
    assert compute_f1("서울특별시", "서울", "squad") == 0
    assert compute_f1("서울특별시는", "서울특별시") == pytest.approx(2 * (5 / 5) * (5 / 6) / (1 + 5 / 6))


def test_missing_predictions_score_zero_and_count():
    s = score_predictions_v2(KOREAN, {"k1": "서울특별시", "k2": ""}, {"k1": 0.0, "k2": 0.0}).scores
    assert s["total"] == 4 and s["exact"] == pytest.approx(50.0) and s["NoAns_exact"] == pytest.approx(50.0)
    assert s["best_exact"] == pytest.approx(50.0)


def test_errors_name_the_file_and_the_problem(tmp_path):
    data, pred, na = _write_files(tmp_path)
    na.write_text(json.dumps({"q1": 0.1}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"na\.json: no value for 10 answered question"):
        score_files_v2(data, pred, na)
    na.write_text(json.dumps({"q1": "high"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"na\.json: the value for question 'q1' is a str"):
        score_files_v2(data, pred, na)
    with pytest.raises(ValueError, match="normalization must be one of"):
        score_predictions_v2(KOREAN, KOREAN_PREDS, normalization="english")
