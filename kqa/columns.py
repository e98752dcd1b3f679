"""Which column of a flat source means what: known schemas recognised by their columns, or a user's mapping.

The examples schema has the fields `id`, `title`, `context`, `question`, `answers` ({text, answer_start}
lists) and `is_impossible`. A flat source (a hub dataset, a JSONL / CSV / Parquet file, a `Dataset`) names
them its own way; `resolve_columns` finds a `ColumnPlan` — field → source column, and the columns carried
along unchanged (KLUE-MRC's `question_type`, ...) — and `raw_question` reads one row through it.

Answers come either from one `answers` column (an object of `text` / `answer_start` lists, a list of
`{text, answer_start}` objects, or in CSV such JSON in a cell), or from two flat columns mapped to
`answer_text` and `answer_start`: one answer per row, an empty text (and start) meaning none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kqa.validation import MISSING, DataValidationError, Location, RawQuestion, record_error

SCHEMA_FIELDS = ("id", "title", "context", "question", "answers", "is_impossible")
FLAT_ANSWER_FIELDS = ("answer_text", "answer_start")
MAPPABLE_FIELDS = SCHEMA_FIELDS + FLAT_ANSWER_FIELDS


@dataclass(frozen=True)
class KnownSchema:
    """A flat layout recognised by its columns: `required` present → `renames` (source column → field)."""

    name: str
    required: tuple[str, ...]
    renames: Mapping[str, str]


# Tried in order; the first whose required columns are all present is used.
KNOWN_SCHEMAS = (
    KnownSchema("squad-flat", ("id", "context", "question", "answers"), {}),  # KorQuAD/squad_kor_v1, squad_v2
    # KLUE-MRC (hub `klue`, config `mrc`): guid, title, context, question, answers, is_impossible,
    # question_type, news_category, source — the last three are carried along.
    KnownSchema("klue-mrc", ("guid", "context", "question", "answers"), {"guid": "id"}),
    KnownSchema("flat-answers", ("id", "context", "question", "answer_text", "answer_start"), {}),
)


@dataclass(frozen=True)
class ColumnPlan:
    """How a flat source's columns become examples: `fields` (schema field → source column) and the
    source columns `carried` along unchanged as extra example columns."""

    schema: str  # a KnownSchema name, or "mapping" for a user's column mapping
    fields: Mapping[str, str]
    carried: tuple[str, ...]

    def describe(self) -> str:
        """e.g. 'klue-mrc: guid → id; is_impossible kept; carried: question_type, news_category, source'."""
        parts = [f"{column} → {name}" for name, column in self.fields.items() if column != name]
        if "answer_text" in self.fields:
            parts.append("answer_text + answer_start → answers (one per row)")
        if "is_impossible" in self.fields:
            parts.append("is_impossible kept")
        else:
            parts.append("no is_impossible column: an empty answer list marks an unanswerable question")
        parts.append(f"carried: {', '.join(self.carried)}" if self.carried else "nothing carried")
        return f"{self.schema}: {'; '.join(parts)}"


def parse_column_mapping(text: str) -> dict[str, str]:
    """`id=qid,context=passage` → {"id": "qid", "context": "passage"} (the flag form of a mapping)."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not name or not column:
            raise ValueError(f"column mapping {text!r}: expected field=column pairs separated by commas, got {item!r}")
        mapping[name] = column
    check_mapping_fields(mapping)
    return mapping


def check_mapping_fields(mapping: Mapping[str, str]) -> None:
    """A ValueError for a key that is not a field of the examples schema (or answer_text / answer_start)."""
    unknown = sorted(set(mapping) - set(MAPPABLE_FIELDS))
    if unknown:
        raise ValueError(f"column mapping: unknown field(s) {unknown}; the fields are {', '.join(MAPPABLE_FIELDS)}")
    bad = sorted(name for name, column in mapping.items() if not isinstance(column, str) or not column)
    if bad:
        raise ValueError(f"column mapping: field(s) {bad} must name a column")


def resolve_columns(columns: Sequence[str], source: str, mapping: Mapping[str, str] | None = None) -> ColumnPlan:
    """The plan for a source with `columns`: the user's `mapping` (field → column; unmapped fields are
    read from the column of their own name), else the first of `KNOWN_SCHEMAS` that fits."""
    if mapping:
        check_mapping_fields(mapping)
        absent = [f"{column!r} (for {name})" for name, column in mapping.items() if column not in columns]
        if absent:
            raise DataValidationError(
                f"{source}: column {', '.join(absent)} not found; the columns are {list(columns)}"
            )
        used = set(mapping.values())
        fields = {n: n for n in MAPPABLE_FIELDS if n in columns and n not in used and n not in mapping}
        fields.update(mapping)
        schema = "mapping"
    else:
        known = _known_schema(columns, source)
        fields = {known.renames.get(c, c): c for c in columns if known.renames.get(c, c) in MAPPABLE_FIELDS}
        schema = known.name
    _check_required(fields, source, columns)
    carried = tuple(c for c in columns if c not in set(fields.values()))
    clash = [c for c in carried if c in SCHEMA_FIELDS]
    if clash:
        raise DataValidationError(
            f"{source}: column(s) {clash} carry a schema field's name but another column is mapped to it; "
            "rename or drop them"
        )
    return ColumnPlan(schema, dict(fields), carried)


def _known_schema(columns: Sequence[str], source: str) -> KnownSchema:
    """The first known schema whose columns are all there, or an error naming the nearest one's missing."""
    missing = {s.name: [c for c in s.required if c not in columns] for s in KNOWN_SCHEMAS}
    fits = [s for s in KNOWN_SCHEMAS if not missing[s.name]]
    if fits:
        return fits[0]
    nearest = min(KNOWN_SCHEMAS, key=lambda s: len(missing[s.name]))
    raise DataValidationError(
        f"{source}: missing columns {missing[nearest.name]} of the {nearest.name} schema (has {list(columns)}); "
        f"no known schema ({', '.join(missing)}) fits: give a column mapping (field=column)"
    )


def _check_required(fields: Mapping[str, str], source: str, columns: Sequence[str]) -> None:
    missing = [name for name in ("id", "context", "question") if name not in fields]
    flat = [name for name in FLAT_ANSWER_FIELDS if name in fields]
    if "answers" in fields and flat:
        raise DataValidationError(f"{source}: answers come from 'answers' or from answer_text/answer_start, not both")
    if "answers" not in fields and len(flat) != 2:
        missing.append("answers (or answer_text and answer_start)")
    if missing:
        raise DataValidationError(f"{source}: no column for {', '.join(missing)}; the columns are {list(columns)}")


# --------------------------------------------------------------------------------------------------
# One row through a plan
# --------------------------------------------------------------------------------------------------


def raw_question(plan: ColumnPlan, location: Location, row: Mapping[str, Any], text_cells: bool) -> RawQuestion:
    """The row as a `RawQuestion` (unchecked; `ExampleValidator` checks it). `text_cells`: every value is
    text (CSV), so `answer_start`, `is_impossible` and an `answers` cell are parsed from their text."""

    def get(name: str) -> Any:
        return row.get(plan.fields[name], MISSING) if name in plan.fields else MISSING

    qid = get("id")
    answers = _answers(plan, location, row, text_cells, qid)
    is_impossible = get("is_impossible")
    if text_cells and isinstance(is_impossible, str):
        is_impossible = _cell_bool(is_impossible)
    if "is_impossible" not in plan.fields and isinstance(answers, list):
        is_impossible = not answers  # the hub's squad_v2 convention
    return RawQuestion(
        location=location,
        id=qid,
        title=get("title"),
        context=get("context"),
        question=get("question"),
        answers=answers,
        is_impossible=is_impossible,
        extra={column: row.get(column) for column in plan.carried},
    )


def _answers(plan: ColumnPlan, loc: Location, row: Mapping[str, Any], text_cells: bool, qid: Any):
    if "answers" not in plan.fields:
        text, start = row.get(plan.fields["answer_text"]), row.get(plan.fields["answer_start"])
        if text_cells and isinstance(start, str):
            start = int(start) if start.strip().isdigit() else (None if not start.strip() else start)
        if text in (None, "") and start is None:
            return []
        return [(MISSING if text is None else text, MISSING if start is None else start)]
    value = row.get(plan.fields["answers"], MISSING)
    if text_cells and isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as err:
            raise record_error(loc, f"the 'answers' cell is not valid JSON: {err}", qid) from None
    if value is MISSING or value is None:
        return MISSING
    if isinstance(value, list):
        if not all(isinstance(a, Mapping) for a in value):
            raise record_error(loc, "'answers' must be a list of {text, answer_start} objects", qid)
        return [(a.get("text", MISSING), a.get("answer_start", MISSING)) for a in value]
    if not isinstance(value, Mapping) or "text" not in value or "answer_start" not in value:
        raise record_error(loc, "'answers' must hold 'text' and 'answer_start' lists", qid)
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list):
        raise record_error(loc, "'answers' must hold 'text' and 'answer_start' lists", qid)
    if len(texts) != len(starts):
        raise record_error(loc, f"'answers' has {len(texts)} texts but {len(starts)} answer_start values", qid)
    return list(zip(texts, starts))


_CELL_BOOLS = {"true": True, "1": True, "false": False, "0": False, "": None}


def _cell_bool(text: str) -> Any:
    """A CSV cell as a boolean (true/false/1/0, any case; empty: unset), else the text (refused later)."""
    return _CELL_BOOLS.get(text.strip().lower(), text)
