"""Metadata filters: parsing, and which documents each operator lets through."""

import pytest

from kqa.retrieval.filters import FilterError, parse_filters

DOCS = [
    {"path": "history/세종.md", "format": "md", "tags": ["역사", "조선"], "mtime": 1767225600.0, "year": 1446},
    {"path": "science/뉴턴.txt", "format": "txt", "tags": ["과학"], "mtime": 1735689600.0},
    {"path": "notes.jsonl", "format": "jsonl", "public": True},
]


def passing(*filters):
    f = parse_filters(list(filters))
    return [i for i, d in enumerate(DOCS) if f.matches(d)]


def test_equality_list_membership_and_glob():
    assert passing("tags=역사") == [0]
    assert passing("format=txt") == [1]
    assert passing("path=history/*") == [0]
    assert passing("path=*.jsonl") == [2]
    assert passing("tags!=역사") == [1, 2]  # a document without the key passes !=
    assert passing("public=true") == [2]


def test_ordered_comparisons_on_numbers_and_dates():
    assert passing("mtime>=2026-01-01") == [0]
    assert passing("mtime<2026-01-01T00:00:00Z") == [1]
    assert passing("year>1400", "year<=1446") == [0]
    assert passing("year=1446") == [0]
    assert passing("year>2000") == []


def test_conditions_are_anded_and_empty_filter_passes_all():
    assert passing("tags=역사", "format=txt") == []
    assert passing() == [0, 1, 2]
    assert not parse_filters(None)
    assert parse_filters(["a=b"]).to_list() == ["a=b"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("tags", "no operator"),
        ("=x", "not a metadata name"),
        ("tags=", "no value"),
        ("mtime>=yesterday", "ISO 8601"),
        ("n<inf", "finite"),
        ("n>nan", "finite"),
    ],
)
def test_bad_filters_name_the_problem(text, problem):
    with pytest.raises(FilterError, match=problem):
        parse_filters([text])


def test_value_may_hold_an_operator():
    f = parse_filters(["title=a>=b"])
    assert f.conditions[0].key == "title" and f.conditions[0].value == "a>=b"
