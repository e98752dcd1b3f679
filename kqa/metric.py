"""The official KorQuAD 1.0 evaluation: exact match and character-level F1.

This reproduces `evaluate-v1.0.py` of KorQuAD 1.0 exactly, with one addition: both strings are
composed to Unicode NFC (`kqa.text.to_nfc`) before the official normalisation. On NFC text (all
official data) that changes nothing; it only keeps an NFD-decomposed prediction or gold answer from
losing points because its jamo are stored separately.

Normalisation, in the official order:
1. replace each of  ' " 《 》 < > 〈 〉 ( ) ‘ ’  with a space;
2. lowercase;
3. delete every character of Python's `string.punctuation`;
4. collapse whitespace (`" ".join(s.split())`).

Exact match: the normalised strings are equal. F1 is over characters, not words: the normalised text
is split on whitespace and the characters of all pieces are concatenated (spaces do not count), then
F1 = 2PR / (P + R) over the multiset overlap of the two character sequences (0 without overlap).
Per question the best score over all gold answers counts; totals are 100 × the mean over every
question of the gold set, where an unanswered question scores 0 and still counts.

Character F1 is what makes KorQuAD scores meaningful for Korean: a Korean word carries particles
("서울특별시는"), so SQuAD's word-level F1 (`squad_word_f1`, kept for comparison) gives no credit to
"서울특별시" against "서울특별시는", while character F1 gives 10/11.

SQuAD 2.0-style questions with no gold answer (impossible questions) are outside the official
KorQuAD 1.0 script (it would fail on them); here they score 1 for EM and F1 when the prediction
normalises to "" and 0 otherwise, as SQuAD 2.0's evaluation does.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kqa.squad import squad_questions
from kqa.text import read_utf8_text, to_nfc

logger = logging.getLogger("kqa.metric")

# Example columns that scores are also broken down by, when the examples carry them (KLUE-MRC's
# question_type: 1 paraphrased, 2 multi-sentence reasoning, 3 unanswerable).
BREAKDOWN_COLUMNS = ("question_type",)

# The official script replaces these one by one with re.sub(..., " ", text).
_OFFICIAL_REMOVED = "'\"《》<>〈〉()‘’"
_REMOVED_TO_SPACE = str.maketrans({ch: " " for ch in _OFFICIAL_REMOVED})
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """KorQuAD 1.0 normalisation (after composing to NFC); see the module docstring."""
    text = to_nfc(s).translate(_REMOVED_TO_SPACE)
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _characters(normalized: str) -> list[str]:
    """The characters of every whitespace-separated piece, concatenated (spaces do not count)."""
    return [ch for piece in normalized.split() for ch in piece]


def f1_score(prediction: str, ground_truth: str) -> float:
    """KorQuAD character-level F1 of two strings (0.0 when they share no character)."""
    return _overlap_f1(_characters(normalize_answer(prediction)), _characters(normalize_answer(ground_truth)))


def _overlap_f1(predicted: list[str], gold: list[str]) -> float:
    """F1 of the multiset overlap of two item lists (characters for KorQuAD, words for SQuAD)."""
    num_same = sum((Counter(predicted) & Counter(gold)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(predicted)
    recall = num_same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def squad_normalize_answer(s: str) -> str:
    """The official SQuAD normalisation (v1.1 and v2.0 alike; after composing to NFC): lowercase, drop
    punctuation and English articles, fix whitespace."""
    text = "".join(ch for ch in to_nfc(s).lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_word_f1(prediction: str, ground_truth: str) -> float:
    """SQuAD's word-level F1 (whitespace tokens), for comparison only: it is not the KorQuAD metric."""
    return _overlap_f1(squad_normalize_answer(prediction).split(), squad_normalize_answer(ground_truth).split())


@dataclass
class GroupScore:
    """EM and F1 (×100) over the gold questions of one group (e.g. one question_type)."""

    exact_match: float
    f1: float
    total: int


@dataclass
class EvalResult:
    """Official scores (×100, over every gold question) and how many questions were answered."""

    exact_match: float
    f1: float
    total: int
    """Questions in the gold set (each counts, answered or not)."""
    answered: int
    """Gold questions with a prediction (an empty prediction counts as answered)."""
    unanswered: int
    """Gold questions without a prediction: scored 0."""
    impossible: int = 0
    """Gold questions without any answer (SQuAD 2.0 style)."""
    unknown_predictions: int = 0
    """Predictions whose id is not in the gold set (ignored, as by the official script)."""
    breakdown: dict[str, dict[str, GroupScore]] = field(default_factory=dict)
    """Scores per value of each of `BREAKDOWN_COLUMNS` the examples carry: {"question_type": {"1": ...}}."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_question(prediction: str, gold_answers: Sequence[str]) -> tuple[float, float]:
    """EM and F1 of one prediction: the best over the gold answers; for an impossible question (no gold
    answer), 1.0 each when nothing is predicted, else 0.0."""
    if not gold_answers:  # impossible question: right only when nothing is predicted
        right = float(normalize_answer(prediction) == "")
        return right, right
    return (
        max(exact_match_score(prediction, g) for g in gold_answers),
        max(f1_score(prediction, g) for g in gold_answers),
    )


def _evaluate(
    questions: Iterable[tuple[str, Sequence[str]]],
    predictions: Mapping[str, str],
    source: str,
    groups: Mapping[str, Sequence[Any]] | None = None,
) -> EvalResult:
    """Score `(id, gold answer texts)` pairs; `source` names the gold set in messages. `groups`: for a
    breakdown column, its value for every question, in order."""
    scores: list[tuple[float, float]] = []
    em_sum = f1_sum = 0.0
    total = answered = impossible = 0
    seen: set[str] = set()
    unanswered_ids: list[str] = []
    duplicates = 0
    for question_id, gold_answers in questions:
        total += 1
        if question_id in seen:
            duplicates += 1
        seen.add(question_id)
        if not gold_answers:
            impossible += 1
        if question_id not in predictions:
            unanswered_ids.append(question_id)
            scores.append((0.0, 0.0))
            continue
        prediction = predictions[question_id]
        answered += 1
        em, f1 = score_question(prediction, gold_answers)
        scores.append((em, f1))
        em_sum += em
        f1_sum += f1
    unknown = [k for k in predictions if k not in seen]
    if unanswered_ids:
        logger.warning(
            "%s: %d of %d questions have no prediction and score 0 (first: %s)",
            source,
            len(unanswered_ids),
            total,
            unanswered_ids[:5],
        )
    if unknown:
        logger.warning(
            "%s: %d predictions are for ids not in the gold set and are ignored (first: %s)",
            source,
            len(unknown),
            unknown[:5],
        )
    if duplicates:
        logger.warning("%s: %d question ids appear more than once; each occurrence is scored", source, duplicates)
    return EvalResult(
        exact_match=100.0 * em_sum / total if total else 0.0,
        f1=100.0 * f1_sum / total if total else 0.0,
        total=total,
        answered=answered,
        unanswered=len(unanswered_ids),
        impossible=impossible,
        unknown_predictions=len(unknown),
        breakdown={column: _group_scores(values, scores) for column, values in (groups or {}).items()},
    )


def _group_scores(values: Sequence[Any], scores: Sequence[tuple[float, float]]) -> dict[str, GroupScore]:
    """{str(value): GroupScore} over the questions that have each value (a missing value: "none")."""
    grouped: dict[str, list[tuple[float, float]]] = {}
    for value, score in zip(values, scores, strict=True):
        grouped.setdefault("none" if value is None else str(value), []).append(score)
    return {
        key: GroupScore(
            exact_match=100.0 * sum(em for em, _ in items) / len(items),
            f1=100.0 * sum(f1 for _, f1 in items) / len(items),
            total=len(items),
        )
        for key, items in sorted(grouped.items())
    }


def _answer_texts(answers: Any, where: str) -> list[str]:
    """Gold texts from a flat `answers` column ({text: [...]}) or an official list of {text: ...}."""
    if isinstance(answers, Mapping):
        texts = answers.get("text")
    elif isinstance(answers, list):
        texts = [a.get("text") if isinstance(a, Mapping) else None for a in answers]
    else:
        texts = None
    if texts is None or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: answers must hold text strings, got {answers!r}")
    return list(texts)


def _check_predictions(predictions: Mapping[str, str], source: str) -> None:
    """Every prediction must be a string, also for an id outside the gold set: a non-string value shows
    a malformed predictions file or mapping (e.g. an n-best list), so both entry points refuse it."""
    for question_id, text in predictions.items():
        if not isinstance(text, str):
            raise ValueError(
                f"{source}: the prediction for question {question_id!r} is a {type(text).__name__}, not a string"
            )


def score_predictions(examples: Any, predictions: Mapping[str, str]) -> EvalResult:
    """Score `predictions` (id → text) against examples (a `datasets.Dataset` or list of rows with
    `id` and `answers` = {"text": [...], ...}) with the official KorQuAD 1.0 metric; examples that carry a
    column of `BREAKDOWN_COLUMNS` (KLUE-MRC's `question_type`) are also scored per value of it.

    A prediction that is not a string raises a ValueError naming its id, whether or not the id is in
    the gold set (as `score_files` does)."""
    _check_predictions(predictions, "predictions")
    questions, groups = examples_questions(examples, BREAKDOWN_COLUMNS)
    return _evaluate(questions, predictions, "examples", groups=groups)


def examples_questions(
    examples: Any, breakdown_columns: Sequence[str]
) -> tuple[list[tuple[str, list[str]]], dict[str, list[Any]]]:
    """(id, gold texts) of every example, in order, and the values of each of `breakdown_columns` the
    examples carry (a `datasets.Dataset` or rows with `id` and `answers` = {"text": [...], ...})."""
    if hasattr(examples, "column_names"):
        for column in ("id", "answers"):
            if column not in examples.column_names:
                raise ValueError(f"examples have no {column!r} column (columns: {examples.column_names})")
        names = ["id", "answers", *(c for c in breakdown_columns if c in examples.column_names)]
        view = examples.with_format("arrow", columns=names)
        columns = {name: view[name].to_pylist() for name in names}
    else:
        rows = list(examples)
        for i, row in enumerate(rows):
            if "id" not in row or "answers" not in row:
                raise ValueError(f"examples row {i} needs 'id' and 'answers' keys, has {sorted(row)}")
        names = ["id", "answers", *(c for c in breakdown_columns if rows and all(c in row for row in rows))]
        columns = {name: [row[name] for row in rows] for name in names}
    ids = [str(i) for i in columns.pop("id")]
    questions = [
        (qid, _answer_texts(a, f"examples row {i} (id {qid!r})"))
        for i, (qid, a) in enumerate(zip(ids, columns.pop("answers")))
    ]
    return questions, columns


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):  # rare: find the first key given twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _read_json(path: Path, what: str, *, unique_keys: bool = False) -> Any:
    """The JSON document in `path`. The file must be UTF-8 (a leading byte-order mark is accepted);
    bad bytes, bad JSON and, with `unique_keys`, a key given twice in one object (JSON would keep only
    the last value) raise a ValueError naming the file and where."""
    try:
        text = read_utf8_text(path)  # a NotUtf8Error (ValueError) names file, line, column and byte
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys if unique_keys else None)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except _DuplicateKey as dup:
        raise ValueError(
            f"{path}: key {dup.key!r} appears more than once in one JSON object; as a question "
            "id only its last prediction would be kept, so the file is refused"
        ) from None


def _official_questions(dataset: Any, path: Path):
    """(id, gold texts) for every question of an official SQuAD/KorQuAD JSON file, in file order."""
    for item in squad_questions(dataset, str(path)):
        where = f"{path}: {item.path}"
        if "id" not in item.qa:
            raise ValueError(f"{where} has no 'id'")
        qid = item.qa["id"]
        answers = item.qa.get("answers", [])
        if not isinstance(answers, list):
            raise ValueError(f"{where} (id {qid!r}): 'answers' is not a list")
        yield str(qid), _answer_texts(answers, f"{where} (id {qid!r})")


def score_files(dataset_json: str | Path, predictions_json: str | Path) -> EvalResult:
    """The official scorer: a SQuAD/KorQuAD gold file (data → paragraphs → qas → answers) and a
    predictions file (id → text). Unanswered questions score 0; predictions for unknown ids are
    counted and logged. Both files are read as UTF-8 (a leading byte-order mark is accepted); bad
    bytes, bad JSON, a layout error, a non-string prediction or an id given twice raise a ValueError
    naming the file and the record."""
    dataset_path = Path(dataset_json)
    dataset = _read_json(dataset_path, "gold dataset")
    predictions = read_predictions(predictions_json)
    return _evaluate(_official_questions(dataset, dataset_path), predictions, str(dataset_path))


def read_predictions(predictions_json: str | Path) -> dict[str, str]:
    """A predictions file (a JSON object: id → answer text), read as `score_files` reads it: UTF-8, every id
    once, every prediction a string (a ValueError naming the file and the record otherwise)."""
    predictions_path = Path(predictions_json)
    predictions = _read_json(predictions_path, "predictions", unique_keys=True)
    if not isinstance(predictions, dict):
        raise ValueError(f"{predictions_path}: expected a JSON object mapping question id to answer text")
    _check_predictions(predictions, str(predictions_path))
    return predictions
