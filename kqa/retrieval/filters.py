"""Metadata filters: which documents a retrieval may return.

A filter is a list of conditions, all of which must hold (AND). One condition is one string,
the same on the command line (`kqa ask --filter tags=역사 --filter "mtime>=2026-01-01"`), in Python
(`RetrieveAndRead(..., filters=["tags=역사"])` or `parse_filters([...])`) and over HTTP
(`"filter": ["tags=역사"]` in `/v1/ask`):

    KEY=VALUE     equal; for a list-valued key (tags): the list holds VALUE;
                  VALUE with * or ? is a glob (fnmatch, case-sensitive) on a string value
    KEY!=VALUE    not equal (a list without VALUE; a document without KEY matches)
    KEY>=VALUE  KEY<=VALUE  KEY>VALUE  KEY<VALUE
                  numbers, or ISO 8601 dates/times (compared as UTC epoch seconds, as `mtime` is kept)

A document without KEY fails every condition on KEY except `!=`. A VALUE is compared as a number
when both it and the document's value are numbers, else as text.

Document metadata (`Document.metadata`) is a flat JSON object: str, int, float, bool, or a list of
str. Keys every document has: `path` (its file, relative to the folder indexed), `format` (the
file's suffix without the dot). Where known: `title`, `mtime` (epoch seconds), `tags`, and the extra
fields of a JSONL record or of a Markdown file's front matter.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

OPERATORS = ("!=", ">=", "<=", "=", ">", "<")  # longest first: "!=" before "=", ">=" before ">"
ORDER_OPERATORS = (">=", "<=", ">", "<")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GLOB_CHARS = ("*", "?", "[")


_COMPARE = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}
_FIRST_OPERATOR = re.compile("|".join(re.escape(op) for op in OPERATORS))  # alternation tries longest first


class FilterError(ValueError):
    """A filter string that cannot be parsed; the message quotes it and names the problem."""


@dataclass(frozen=True)
class Condition:
    key: str
    op: str  # one of OPERATORS
    value: str | float  # a float for ordered comparisons (numbers and dates), else the text given

    @property
    def is_glob(self) -> bool:
        return self.op in ("=", "!=") and isinstance(self.value, str) and any(c in self.value for c in _GLOB_CHARS)

    def matches(self, metadata: Mapping[str, object]) -> bool:
        if self.key not in metadata:
            return self.op == "!="
        actual = metadata[self.key]
        if self.op in ("=", "!="):
            values = actual if isinstance(actual, list) else [actual]
            hit = any(self._equal(v) for v in values)
            return hit if self.op == "=" else not hit
        number = _as_number(actual)
        if number is None:
            return False
        return _COMPARE[self.op](number, self.value)

    def _equal(self, actual: object) -> bool:
        if self.is_glob:
            return isinstance(actual, str) and fnmatch.fnmatchcase(actual, self.value)
        expected = _as_number(self.value)
        if expected is not None and _as_number(actual) is not None and not isinstance(actual, str):
            return _as_number(actual) == expected
        if isinstance(actual, bool):
            return str(actual).lower() == str(self.value).lower()
        return str(actual) == self.value

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class MetadataFilter:
    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def matches(self, metadata: Mapping[str, object]) -> bool:
        return all(c.matches(metadata) for c in self.conditions)

    def mask(self, metadatas: Sequence[Mapping[str, object]]):
        """A boolean numpy array: which of `metadatas` (one per document or passage) pass."""
        import numpy as np

        return np.fromiter((self.matches(m) for m in metadatas), dtype=bool, count=len(metadatas))

    def to_list(self) -> list[str]:
        return [str(c) for c in self.conditions]


def parse_condition(text: str) -> Condition:
    if not isinstance(text, str):
        raise FilterError(f"a filter must be a string like 'tags=역사', got {type(text).__name__}")
    match = _FIRST_OPERATOR.search(text)  # the first operator: a value may hold "=" or ">"
    if match is None:
        raise FilterError(
            f"filter {text!r}: no operator (use KEY=VALUE, KEY!=VALUE, KEY>=VALUE, KEY<=VALUE, KEY>VALUE, KEY<VALUE)"
        )
    op = match.group()
    key, value = text[: match.start()].strip(), text[match.end() :].strip()
    if not _KEY.match(key):
        raise FilterError(f"filter {text!r}: key {key!r} is not a metadata name (letters, digits, _ . -)")
    if not value:
        raise FilterError(f"filter {text!r}: no value after {op!r}")
    if op in ORDER_OPERATORS:
        number = _as_number(value)
        if number is None or not math.isfinite(number):
            raise FilterError(f"filter {text!r}: {op!r} needs a finite number or an ISO 8601 date, got {value!r}")
        return Condition(key, op, number)
    return Condition(key, op, value)


def parse_filters(filters: str | Iterable[str] | MetadataFilter | None) -> MetadataFilter:
    """A `MetadataFilter` from strings (one string is one condition), an existing filter, or None."""
    if filters is None:
        return MetadataFilter()
    if isinstance(filters, MetadataFilter):
        return filters
    if isinstance(filters, str):
        filters = [filters]
    return MetadataFilter(tuple(parse_condition(f) for f in filters))


def _as_number(value: object) -> float | None:
    """A number, or an ISO 8601 date/time as UTC epoch seconds (a date alone is its midnight UTC)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()
