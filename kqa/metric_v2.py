"""SQuAD 2.0-style evaluation of sets with unanswerable questions, with KorQuAD's normalisation.

The algorithm is that of the official SQuAD v2.0 script (`evaluate-v2.0.py`), function for function:
`make_qid_to_has_ans`, `get_raw_scores`, `apply_no_ans_threshold`, `make_eval_dict`, `find_best_thresh`
and `find_all_best_thresh`, in the same order of summation, so the numbers are equal, not just close.
What differs is only how two strings are compared (`normalization`):

- "korquad" (the default): KorQuAD's normalisation and character F1 (`kqa.metric`);
- "squad": the official SQuAD normalisation and whitespace-token F1, to check agreement with the
  official script (tests/test_squad_v2_eval.py runs it on the same files).

As in the official v2 script, an empty gold answer set scores 1 only against an empty prediction (EM
and F1 alike), and a gold answer that normalises to "" is dropped. `na_probs` maps an id to anything
that grows with "no answer": kqa's `null_odds.json` (null score − best span score) fits. The best
threshold `t` means: answer "" when `na_prob > t`, which is kqa's `null_score_diff_threshold` rule.

Unlike the official script, a gold question without a prediction scores 0 and counts in every total
(as in kqa's KorQuAD scores); the official script skips it in `exact`/`f1` and fails in the HasAns /
NoAns blocks. On prediction files that answer every question the two agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kqa.metric import (
    BREAKDOWN_COLUMNS,
    _characters,
    _check_predictions,
    _official_questions,
    _overlap_f1,
    _read_json,
    examples_questions,
    normalize_answer,
    squad_normalize_answer,
)

NORMALIZATIONS = ("korquad", "squad")


def _korquad_items(s: str) -> list[str]:
    return _characters(normalize_answer(s)) if s else []


def _squad_items(s: str) -> list[str]:
    return squad_normalize_answer(s).split() if s else []


# name → (normalise, the items F1 counts): KorQuAD characters or SQuAD's whitespace tokens.
_COMPARERS: dict[str, tuple[Callable[[str], str], Callable[[str], list[str]]]] = {
    "korquad": (normalize_answer, _korquad_items),
    "squad": (squad_normalize_answer, _squad_items),
}


def _comparer(normalization: str):
    if normalization not in _COMPARERS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return _COMPARERS[normalization]


def compute_exact(gold: str, prediction: str, normalization: str = "korquad") -> int:
    normalize, _ = _comparer(normalization)
    return int(normalize(gold) == normalize(prediction))


def compute_f1(gold: str, prediction: str, normalization: str = "korquad") -> float:
    """The v2 script's F1: 1 when both sides are empty, 0 when only one is, else the overlap F1."""
    _, items = _comparer(normalization)
    gold_items, pred_items = items(gold), items(prediction)
    if not gold_items or not pred_items:
        return int(gold_items == pred_items)
    return _overlap_f1(pred_items, gold_items)


def make_qid_to_has_ans(questions: Sequence[tuple[str, Sequence[str]]]) -> dict[str, bool]:
    return {qid: bool(golds) for qid, golds in questions}


def get_raw_scores(
    questions: Sequence[tuple[str, Sequence[str]]], preds: Mapping[str, str], normalization: str = "korquad"
) -> tuple[dict[str, float], dict[str, float]]:
    """Per answered question the best EM and F1 over its gold answers ([""] for an unanswerable one)."""
    normalize, _ = _comparer(normalization)
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    for qid, golds in questions:
        gold_answers = [a for a in golds if normalize(a)] or [""]
        if qid not in preds:
            continue
        exact_scores[qid] = max(compute_exact(a, preds[qid], normalization) for a in gold_answers)
        f1_scores[qid] = max(compute_f1(a, preds[qid], normalization) for a in gold_answers)
    return exact_scores, f1_scores


def apply_no_ans_threshold(
    scores: Mapping[str, float], na_probs: Mapping[str, float], qid_to_has_ans: Mapping[str, bool], thresh: float
) -> dict[str, float]:
    """Scores with "" predicted wherever `na_prob > thresh`."""
    return {qid: float(not qid_to_has_ans[qid]) if na_probs[qid] > thresh else s for qid, s in scores.items()}


def make_eval_dict(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> dict[str, Any]:
    """exact, f1 (×100, 0 for a missing question) and total over `qids`."""
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact.get(k, 0) for k in qids) / total,
        "f1": 100.0 * sum(f1.get(k, 0) for k in qids) / total,
        "total": total,
    }


def find_best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """The official search: start from "" everywhere, then answer the questions one at a time in
    ascending na_prob (a stable sort over `na_probs`' order, so ties are met in that order) and keep the
    first na_prob where the running score is strictly highest. Returns (best score ×100, threshold)."""
    cur_score = sum(1 for k, has in qid_to_has_ans.items() if not has and k in scores)
    best_score, best_thresh = cur_score, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return 100.0 * best_score / len(qid_to_has_ans), best_thresh


@dataclass
class SquadV2Result:
    """The official v2 keys (`to_dict`), per group of `BREAKDOWN_COLUMNS` too (`breakdown`)."""

    scores: dict[str, Any]
    breakdown: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def best_f1_thresh(self) -> Optional[float]:
        return self.scores.get("best_f1_thresh")

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores, **({"breakdown": self.breakdown} if self.breakdown else {})}


def evaluate_v2(
    questions: Sequence[tuple[str, Sequence[str]]],
    preds: Mapping[str, str],
    na_probs: Optional[Mapping[str, float]] = None,
    *,
    normalization: str = "korquad",
    na_prob_thresh: Optional[float] = None,
    source: str = "na_probs",
) -> dict[str, Any]:
    """The official `main()` over (id, gold texts) pairs. `na_prob_thresh` (the official `--na-prob-thresh`,
    1.0 there) blanks predictions with a higher na_prob before `exact`/`f1`; None scores them as given.
    With `na_probs`, best_exact / best_f1 and their thresholds are added."""
    questions = list(questions)
    if not questions:
        raise ValueError("no gold questions to score")
    qid_to_has_ans = make_qid_to_has_ans(questions)
    exact_raw, f1_raw = get_raw_scores(questions, preds, normalization)
    if na_probs is not None:
        missing = [k for k in exact_raw if k not in na_probs]
        if missing:
            raise ValueError(f"{source}: no value for {len(missing)} answered question(s) (first: {missing[:5]})")
    exact, f1 = exact_raw, f1_raw
    if na_probs is not None and na_prob_thresh is not None:
        exact = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
        f1 = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out = make_eval_dict(exact, f1, list(qid_to_has_ans))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, has in qid_to_has_ans.items() if has == wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in make_eval_dict(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    return out


def has_unanswerable(questions: Sequence[tuple[str, Sequence[str]]]) -> bool:
    return any(not golds for _, golds in questions)


def score_v2(
    questions: Sequence[tuple[str, Sequence[str]]],
    preds: Mapping[str, str],
    na_probs: Optional[Mapping[str, float]] = None,
    groups: Optional[Mapping[str, Sequence[Any]]] = None,
    **options: Any,
) -> SquadV2Result:
    """`evaluate_v2` over all questions and over each group of a breakdown column (its value per question)."""
    questions = list(questions)
    breakdown: dict[str, dict[str, dict[str, Any]]] = {}
    for column, values in (groups or {}).items():
        members: dict[str, list] = {}
        for value, question in zip(values, questions, strict=True):
            members.setdefault("none" if value is None else str(value), []).append(question)
        breakdown[column] = {key: evaluate_v2(qs, preds, na_probs, **options) for key, qs in sorted(members.items())}
    return SquadV2Result(evaluate_v2(questions, preds, na_probs, **options), breakdown)


def score_predictions_v2(
    examples: Any, predictions: Mapping[str, str], na_probs: Optional[Mapping[str, float]] = None, **options: Any
) -> SquadV2Result:
    """`score_v2` of examples (a `datasets.Dataset` or rows with `id` and `answers`; a carried
    `question_type` column gives the breakdown), predictions (id → text) and optional na_probs."""
    _check_predictions(predictions, "predictions")
    questions, groups = examples_questions(examples, BREAKDOWN_COLUMNS)
    return score_v2(questions, predictions, na_probs, groups, **options)


def score_files_v2(
    dataset_json: str | Path,
    predictions_json: str | Path,
    na_prob_json: str | Path | None = None,
    **options: Any,
) -> SquadV2Result:
    """`score_v2` of a SQuAD-layout gold file, a predictions file and an optional na-prob file
    (`null_odds.json`), each read and checked as `kqa.metric.score_files` reads its files."""
    dataset_path, predictions_path = Path(dataset_json), Path(predictions_json)
    predictions = _read_json(predictions_path, "predictions", unique_keys=True)
    if not isinstance(predictions, dict):
        raise ValueError(f"{predictions_path}: expected a JSON object mapping question id to answer text")
    _check_predictions(predictions, str(predictions_path))
    na_probs = None if na_prob_json is None else read_na_probs(Path(na_prob_json))
    questions = list(_official_questions(_read_json(dataset_path, "gold dataset"), dataset_path))
    return score_v2(questions, predictions, na_probs, source=str(na_prob_json), **options)


def read_na_probs(path: Path) -> dict[str, float]:
    na_probs = _read_json(path, "null odds / na-prob", unique_keys=True)
    if not isinstance(na_probs, dict):
        raise ValueError(f"{path}: expected a JSON object mapping question id to a number")
    for qid, value in na_probs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: the value for question {qid!r} is a {type(value).__name__}, not a number")
    return na_probs
