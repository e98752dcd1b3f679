"""Validation shared by every source of QA examples: the checks of each field, answer alignment, and
the `LoadReport` of what was read, kept, repaired and rejected.

`kqa.data`'s loaders turn each source (SQuAD-layout JSON, flat rows, a `datasets.Dataset`) into raw
questions (`RawQuestion`, fields as found); `ExampleValidator` checks them one by one, repairs or
rejects answers, and collects the kept rows in the flat schema `EXAMPLE_FEATURES`. Problems that make a
record unreadable raise `DataValidationError` naming the source and the record.
"""

from __future__ import annotations

import logging
import numbers
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from pyarrow import ArrowException

from kqa.squad import SquadPath
from kqa.text import blank_problem, check_text, nfc_with_alignment, to_nfc

logger = logging.getLogger("kqa.data")  # the loaders' logger: one name for a load and its report

# Explicit features so that an empty answer list still types as list[str] / list[int32] (the types
# of `KorQuAD/squad_kor_v1`, so loaded files and hub splits can be concatenated).
EXAMPLE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
        "is_impossible": datasets.Value("bool"),
    }
)

_MAX_RECORDS_LOGGED = 5


class DataValidationError(ValueError):
    """The input cannot be read as QA examples (malformed file, layout, field or duplicate id)."""


class _Missing:
    """Marks a field absent from the source (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a record sits in its source: article/paragraph/question indices (JSON) or a row (flat)."""

    source: str
    article_index: int | None = None
    paragraph_index: int | None = None
    question_index: int | None = None
    row_index: int | None = None
    record: str | None = None  # a flat file's own label: `line 12` (JSONL, CSV), `[3]` (JSON), `row 3` (Parquet)

    def describe(self) -> str:
        """`data[0].paragraphs[1].qas[2]` (the JSON path, as `kqa.squad` writes it), `line 12` or `row 5`."""
        if self.article_index is not None:
            return str(SquadPath(self.article_index, self.paragraph_index, self.question_index))
        if self.record is not None:
            return self.record
        return "top level" if self.row_index is None else f"row {self.row_index}"


@dataclass(frozen=True)
class RepairedAnswer:
    """An answer whose `answer_start` (and, across Unicode forms, text) was corrected."""

    location: Location
    id: str
    given_text: str
    given_start: int
    text: str  # the slice of the context now stored (differs from given_text only in Unicode form)
    start: int

    def __str__(self) -> str:
        change = f"answer_start {self.given_start} → {self.start}"
        if self.text != self.given_text:
            change += " (text taken from the context in its Unicode form)"
        return f"{self.location.source}: {self.location.describe()} (id {self.id!r}): {self.given_text!r}: {change}"


@dataclass(frozen=True)
class RejectedAnswer:
    """An answer left out of the examples (its question may still be kept with other answers)."""

    location: Location
    id: str
    text: str
    answer_start: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.location.source}: {self.location.describe()} (id {self.id!r}): answer "
            f"{self.text!r} at {self.answer_start} rejected: {self.reason}"
        )


@dataclass(frozen=True)
class DroppedAnswers:
    """The answers of a question marked unanswerable (KLUE-MRC's unanswerable rows carry the answer a reader
    might find): the question is kept as unanswerable, without them."""

    location: Location
    id: str
    count: int

    def __str__(self) -> str:
        return (
            f"{self.location.source}: {self.location.describe()} (id {self.id!r}): is_impossible is true: "
            f"{self.count} answer(s) dropped, kept as unanswerable"
        )


@dataclass(frozen=True)
class RejectedQuestion:
    """A question left out of the examples."""

    location: Location
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location.source}: {self.location.describe()} (id {self.id!r}): question rejected: {self.reason}"


@dataclass
class LoadReport:
    """What a loader read, kept, repaired and rejected.

    For flat datasets `num_articles` / `num_paragraphs` count distinct titles / (title, context) pairs.
    """

    source: str
    source_kind: str = "squad-json"  # "squad-json", "file" (flat rows: json, jsonl, csv, parquet) or "dataset"
    version: str | None = None  # the JSON file's top-level `version`, when it has one
    columns: str | None = None  # flat sources: how columns became fields (`kqa.columns.ColumnPlan.describe`)
    carried: tuple[str, ...] = ()  # flat sources: the extra columns carried along on the examples
    num_articles: int = 0
    num_paragraphs: int = 0
    num_questions: int = 0  # questions read
    num_answers: int = 0  # answers read
    num_impossible: int = 0  # kept questions marked unanswerable (SQuAD 2.0)
    repaired: list[RepairedAnswer] = field(default_factory=list)
    rejected_answers: list[RejectedAnswer] = field(default_factory=list)
    rejected_questions: list[RejectedQuestion] = field(default_factory=list)
    dropped_answers: list[DroppedAnswers] = field(default_factory=list)  # of questions marked unanswerable

    @property
    def num_kept(self) -> int:
        return self.num_questions - len(self.rejected_questions)

    @property
    def num_answers_repaired(self) -> int:
        return len(self.repaired)

    @property
    def num_answers_rejected(self) -> int:
        return len(self.rejected_answers)

    @property
    def num_questions_rejected(self) -> int:
        return len(self.rejected_questions)

    @property
    def num_answers_dropped(self) -> int:
        """Answers given to questions marked unanswerable (kept as unanswerable, without them)."""
        return sum(d.count for d in self.dropped_answers)

    @property
    def has_problems(self) -> bool:
        return bool(self.repaired or self.rejected_answers or self.rejected_questions or self.dropped_answers)

    def counts(self) -> dict[str, int]:
        """Every count as a flat dict (for logging to a tracker or a JSON file)."""
        return {
            "num_articles": self.num_articles,
            "num_paragraphs": self.num_paragraphs,
            "num_questions": self.num_questions,
            "num_kept": self.num_kept,
            "num_answers": self.num_answers,
            "num_impossible": self.num_impossible,
            "num_answers_repaired": self.num_answers_repaired,
            "num_answers_rejected": self.num_answers_rejected,
            "num_questions_rejected": self.num_questions_rejected,
            "num_answers_dropped": self.num_answers_dropped,
        }

    def summary(self) -> str:
        """One line, e.g. 'train.json: 142 questions read, 142 kept, 0 answers repaired, 0 answers rejected, ...'."""
        name = self.source if self.source_kind == "dataset" else Path(self.source).name
        line = (
            f"{name}: {self.num_questions} questions read, {self.num_kept} kept, "
            f"{self.num_answers_repaired} answers repaired, {self.num_answers_rejected} answers rejected, "
            f"{self.num_questions_rejected} questions rejected"
        )
        if self.num_impossible:
            line += f" ({self.num_impossible} kept questions unanswerable)"
        if self.dropped_answers:
            line += (
                f" ({self.num_answers_dropped} answers of {len(self.dropped_answers)} questions marked "
                "unanswerable dropped)"
            )
        return line if self.columns is None else f"{line} [{self.columns}]"

    def problem_lines(self, limit: int = _MAX_RECORDS_LOGGED) -> list[str]:
        """The first `limit` rejections, then repairs, then dropped answers, as readable lines."""
        records: list[Any] = [*self.rejected_questions, *self.rejected_answers, *self.repaired, *self.dropped_answers]
        lines = [str(r) for r in records[:limit]]
        if len(records) > limit:
            lines.append(f"... and {len(records) - limit} more")
        return lines


# --------------------------------------------------------------------------------------------------
# Answer alignment
# --------------------------------------------------------------------------------------------------


def align_answer(context: str, text: str, answer_start: int) -> tuple[str, int] | None:
    """Return `(text, start)` of the answer as an exact slice of `context`, or None when it is not there.

    When `context[answer_start:answer_start + len(text)] == text` (and, in a non-NFC context, the span
    does not cut through a composed character) the answer is returned unchanged. Otherwise the text is
    searched in the NFC forms of both strings and every occurrence is mapped back to the original
    context; the occurrence whose original start is nearest `answer_start` wins (the earlier one on a
    tie). The returned text is the context's own substring, which differs from `text` only when the
    two are in different Unicode forms (e.g. NFD answer, NFC context).
    """
    end = answer_start + len(text)
    exact = context[answer_start:end] == text
    if exact and unicodedata.is_normalized("NFC", context):
        return text, answer_start
    nfc_text = to_nfc(text)
    nfc_context, origin = nfc_with_alignment(context)
    # In NFD text a slice may hold part of a syllable (its first jamo only); accept the given span
    # only when both ends fall between NFC characters.
    if exact and answer_start in origin and end in origin:
        return text, answer_start
    best: tuple[int, int, int] | None = None  # (distance, start, end) in the original context
    position = nfc_context.find(nfc_text)
    while position != -1:
        start, end = int(origin[position]), int(origin[position + len(nfc_text)])
        # An occurrence that cuts through a composed character maps to a slice of another form; skip it.
        if to_nfc(context[start:end]) == nfc_text:
            candidate = (abs(start - answer_start), start, end)
            best = candidate if best is None else min(best, candidate)
        position = nfc_context.find(nfc_text, position + 1)
    if best is None:
        return None
    _, start, end = best
    return context[start:end], start


# --------------------------------------------------------------------------------------------------
# Validation shared by every source
# --------------------------------------------------------------------------------------------------


@dataclass
class RawQuestion:
    """One question as read from a source, before any check (fields may be MISSING or ill-typed)."""

    location: Location
    id: Any
    title: Any
    context: Any
    question: Any
    answers: list[tuple[Any, Any]] | Any  # (text, answer_start) pairs, or MISSING
    is_impossible: Any = False
    extra: dict[str, Any] = field(default_factory=dict)  # carried columns (`LoadReport.carried`), as found


def record_error(location: Location, problem: str, qid: Any = MISSING) -> DataValidationError:
    where = location.describe()
    if qid is not MISSING:
        where += f" (id {qid!r})"
    return DataValidationError(f"{location.source}: {where}: {problem}")


def _check_unicode(location: Location, what: str, value: str, qid: Any = MISSING) -> str:
    """`value` when it is valid Unicode text: a lone surrogate (JSON's "\\ud800", a valid escape)
    would otherwise fail later, inside Arrow or a tokenizer, without naming the record."""
    try:
        return check_text(value, what)
    except ValueError as err:
        raise record_error(location, str(err), qid) from None


def check_text_field(location: Location, name: str, value: Any, qid: Any = MISSING) -> str:
    """A required, non-blank string field (question, context)."""
    if value is MISSING:
        raise record_error(location, f"missing field '{name}'", qid)
    if not isinstance(value, str):
        raise record_error(location, f"field '{name}' must be a string, got {type(value).__name__}", qid)
    if problem := blank_problem(value):
        raise record_error(location, f"field '{name}' is {problem}", qid)
    return _check_unicode(location, f"field '{name}'", value, qid)


def _check_id(location: Location, value: Any) -> str:
    if value is MISSING:
        raise record_error(location, "missing field 'id'")
    # Integer ids (some SQuAD-style exports) are kept as their decimal string; the schema's id is str.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise record_error(location, f"field 'id' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise record_error(location, "field 'id' is empty")
    return _check_unicode(location, "field 'id'", value)


def _check_title(location: Location, value: Any, qid: str) -> str:
    if value is MISSING or value is None:
        return ""
    if not isinstance(value, str):
        raise record_error(location, f"field 'title' must be a string, got {type(value).__name__}", qid)
    return _check_unicode(location, "field 'title'", value, qid)


def _check_is_impossible(location: Location, value: Any, qid: str) -> bool:
    if value is MISSING or value is None:
        return False
    if not isinstance(value, bool):
        raise record_error(location, f"field 'is_impossible' must be true or false, got {value!r}", qid)
    return value


def _check_answer(location: Location, qid: str, index: int, text: Any, start: Any) -> tuple[str, int]:
    """Field checks for one answer; alignment with the context is checked afterwards."""
    label = f"answer {index}"
    if text is MISSING:
        raise record_error(location, f"{label}: missing field 'text'", qid)
    if start is MISSING:
        raise record_error(location, f"{label}: missing field 'answer_start'", qid)
    if not isinstance(text, str):
        raise record_error(location, f"{label}: 'text' must be a string, got {type(text).__name__}", qid)
    if not isinstance(start, numbers.Integral) or isinstance(start, bool):
        raise record_error(location, f"{label}: 'answer_start' must be an integer, got {start!r}", qid)
    if start < 0:
        raise record_error(location, f"{label}: 'answer_start' must not be negative, got {start}", qid)
    return _check_unicode(location, f"{label}: field 'text'", text, qid), int(start)


class ExampleValidator:
    """Checks raw questions one by one, fills the report and collects the kept rows as columns."""

    def __init__(self, report: LoadReport):
        self.report = report
        self.columns: dict[str, list] = {name: [] for name in EXAMPLE_FEATURES}
        self.extra: dict[str, list] = {name: [] for name in report.carried}
        self.first_seen: dict[str, Location] = {}

    def add(self, raw: RawQuestion) -> None:
        loc = raw.location
        qid = _check_id(loc, raw.id)
        question = check_text_field(loc, "question", raw.question, qid)
        context = check_text_field(loc, "context", raw.context, qid)
        title = _check_title(loc, raw.title, qid)
        is_impossible = _check_is_impossible(loc, raw.is_impossible, qid)
        if qid in self.first_seen:
            raise record_error(
                loc, f"duplicate id {qid!r}: first at {self.first_seen[qid].describe()}, again at {loc.describe()}"
            )
        self.first_seen[qid] = loc
        self.report.num_questions += 1

        if raw.answers is MISSING:
            if not is_impossible:
                raise record_error(loc, "missing field 'answers'", qid)
            given: list[tuple[str, int]] = []
        else:
            given = [_check_answer(loc, qid, i, t, s) for i, (t, s) in enumerate(raw.answers)]
        self.report.num_answers += len(given)
        if is_impossible and given:  # kept as unanswerable; the answers are counted, never kept
            self.report.dropped_answers.append(DroppedAnswers(loc, qid, len(given)))
            given = []

        kept = [answer for answer in (self._align(loc, qid, context, t, s) for t, s in given) if answer]
        if not is_impossible and not kept:
            reason = "no answers given" if not given else f"none of its {len(given)} answers is in the context"
            self.report.rejected_questions.append(RejectedQuestion(loc, qid, reason))
            return

        self.report.num_impossible += int(is_impossible)
        for name, value in (
            ("id", qid),
            ("title", title),
            ("context", context),
            ("question", question),
            ("is_impossible", is_impossible),
        ):
            self.columns[name].append(value)
        for name, values in self.extra.items():
            values.append(raw.extra.get(name))
        self.columns["answers"].append({"text": [t for t, _ in kept], "answer_start": [s for _, s in kept]})

    def _align(self, loc: Location, qid: str, context: str, text: str, start: int) -> tuple[str, int] | None:
        if problem := blank_problem(text):
            reason = f"answer text is {problem}"
            self.report.rejected_answers.append(RejectedAnswer(loc, qid, text, start, reason))
            return None
        aligned = align_answer(context, text, start)
        if aligned is None:
            self.report.rejected_answers.append(
                RejectedAnswer(loc, qid, text, start, "answer text not found in the context")
            )
            return None
        if aligned != (text, start):
            self.report.repaired.append(RepairedAnswer(loc, qid, text, start, aligned[0], aligned[1]))
        return aligned

    def finish(self, strict: bool) -> tuple[datasets.Dataset, LoadReport]:
        report = self.report
        if report.num_questions == 0:
            raise DataValidationError(f"{report.source}: contains no questions")
        if strict and (report.rejected_answers or report.rejected_questions):
            rejections = [*report.rejected_questions, *report.rejected_answers]
            details = "; ".join(str(r) for r in rejections[:_MAX_RECORDS_LOGGED])
            raise DataValidationError(
                f"{report.source}: {report.num_answers_rejected} answers and {report.num_questions_rejected} "
                f"questions rejected (strict mode): {details}"
            )
        if report.num_kept == 0:
            raise DataValidationError(
                f"{report.source}: all {report.num_questions} questions were rejected: {report.problem_lines(1)[0]}"
            )
        _log_report(report)
        return self._dataset(), report

    def _dataset(self) -> datasets.Dataset:
        examples = datasets.Dataset.from_dict(self.columns, features=EXAMPLE_FEATURES)
        for name, values in self.extra.items():
            try:
                examples = examples.add_column(name, values)
            except (ValueError, TypeError, ArrowException) as err:  # mixed types in one column (JSONL)
                raise DataValidationError(f"{self.report.source}: column {name!r} cannot be carried: {err}") from None
        return examples


def _log_report(report: LoadReport) -> None:
    logger.info("%s", report.summary())
    if report.has_problems:
        logger.warning(
            "%s: %d answers repaired, %d answers and %d questions rejected, %d answers of unanswerable "
            "questions dropped:\n  %s",
            report.source,
            report.num_answers_repaired,
            report.num_answers_rejected,
            report.num_questions_rejected,
            report.num_answers_dropped,
            "\n  ".join(report.problem_lines()),
        )
