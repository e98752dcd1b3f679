"""Unanswerable questions built from answerable ones (SQuAD 2.0 style negatives), without new data.

A sampled question is paired with a passage of *another article* (another `title`; an untitled
example is its own article) and marked unanswerable: `is_impossible` true, no answers, id
`<qid>-neg`. Two kinds of passage:
- `random`: a random passage of another article, seeded per question (`seed`, question id);
- `hard`: the retriever's best wrong passage: BM25 (`kqa.retrieval.sparse`, Kiwi morphemes) over the
  set's own passages, the top-scoring one of another article; a question that shares no term with any
  such passage falls back to `random` (counted).

A pair whose passage contains one of the question's gold answers (both in NFC) is dropped: that
passage may well answer the question. Which questions get a negative is a deterministic sample of
`round(ratio * answerable questions)` by `seed`. Every drop and fallback is counted in the
`NegativesReport` (`add_negatives` returns it; the training inputs log its summary).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kqa.squad import squad_document
from kqa.text import to_nfc

NEGATIVE_KINDS = ("hard", "random")
NEGATIVE_SUFFIX = "-neg"
# Why a sampled question got no negative (`NegativesReport.dropped` reasons).
ANSWER_IN_PASSAGE = "answer in passage"
NO_OTHER_ARTICLE = "no passage of another article"
_MAX_RECORDS_LOGGED = 5


@dataclass(frozen=True)
class NegativeSettings:
    """How many negatives (`ratio`: one per 1/ratio answerable questions, in [0, 1]), of which `kind`, by `seed`."""

    ratio: float
    kind: str = "hard"
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"negative_ratio must be in [0, 1], got {self.ratio}")
        if self.kind not in NEGATIVE_KINDS:
            raise ValueError(f"negative_kind must be one of {', '.join(NEGATIVE_KINDS)}, got {self.kind!r}")


@dataclass
class NegativesReport:
    """What `add_negatives` did: questions sampled, negatives added, drops (question id, reason), fallbacks."""

    source: str
    settings: NegativeSettings
    num_questions: int = 0
    num_answerable: int = 0
    num_sampled: int = 0
    num_added: int = 0
    num_hard_fallbacks: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        by_reason = {
            reason: sum(r == reason for _, r in self.dropped) for reason in (ANSWER_IN_PASSAGE, NO_OTHER_ARTICLE)
        }
        return {
            "num_questions": self.num_questions,
            "num_answerable": self.num_answerable,
            "num_sampled": self.num_sampled,
            "num_added": self.num_added,
            "num_dropped": len(self.dropped),
            "num_dropped_answer_in_passage": by_reason[ANSWER_IN_PASSAGE],
            "num_dropped_no_other_article": by_reason[NO_OTHER_ARTICLE],
            "num_hard_fallbacks": self.num_hard_fallbacks,
        }

    def summary(self) -> str:
        c, s = self.counts(), self.settings
        line = (
            f"{self.source}: {c['num_added']} {s.kind} negatives added (ratio {s.ratio}, seed {s.seed}) to "
            f"{c['num_questions']} questions; {c['num_sampled']} sampled of {c['num_answerable']} answerable, "
            f"{c['num_dropped']} dropped ({c['num_dropped_answer_in_passage']} {ANSWER_IN_PASSAGE}, "
            f"{c['num_dropped_no_other_article']} {NO_OTHER_ARTICLE})"
        )
        if s.kind == "hard":
            line += f"; {c['num_hard_fallbacks']} hard fell back to random (no shared term)"
        return line

    def problem_lines(self, limit: int = _MAX_RECORDS_LOGGED) -> list[str]:
        lines = [f"{self.source}: question {qid!r}: no negative: {reason}" for qid, reason in self.dropped[:limit]]
        if len(self.dropped) > limit:
            lines.append(f"... and {len(self.dropped) - limit} more")
        return lines


@dataclass(frozen=True)
class _Passage:
    article: str
    title: str
    context: str
    nfc: str


def _article(row: dict[str, Any]) -> str:
    title = row.get("title") or ""
    return f"title:{title}" if title else f"context:{row['context']}"


def _passages(rows: Sequence[dict[str, Any]]) -> list[_Passage]:
    """The set's distinct (title, context) passages, in first-seen order."""
    seen: dict[tuple[str, str], _Passage] = {}
    for row in rows:
        key = (row.get("title") or "", row["context"])
        if key not in seen:
            seen[key] = _Passage(_article(row), key[0], row["context"], to_nfc(row["context"]))
    return list(seen.values())


def _answerable(row: dict[str, Any]) -> bool:
    return not row.get("is_impossible") and bool(row["answers"]["text"])


def sample_questions(rows: Sequence[dict[str, Any]], settings: NegativeSettings) -> list[int]:
    """Indices of the answerable rows that get a negative: `round(ratio * answerable)` of them, by seed."""
    answerable = [i for i, row in enumerate(rows) if _answerable(row)]
    k = round(settings.ratio * len(answerable))
    return sorted(random.Random(settings.seed).sample(answerable, k))


def _random_other(row: dict[str, Any], others: list[int], seed: int) -> int:
    return others[random.Random(f"{seed}:{row['id']}").randrange(len(others))]


class _HardChooser:
    """The best-scoring passage of another article under BM25 over the set's passages (None: no shared term)."""

    def __init__(self, passages: list[_Passage], analyzer: Callable | None):
        from kqa.retrieval.sparse import BM25Index, MorphemeAnalyzer

        self.analyzer = analyzer or MorphemeAnalyzer()
        self.index = BM25Index.build(self.analyzer.analyze_many([p.context for p in passages]))

    def __call__(self, question: str, others: list[int]) -> int | None:
        scores = self.index.scores(self.analyzer(question))
        best = max(others, key=lambda i: (scores[i], -i))
        return best if scores[best] > 0 else None


def _negative_row(row: dict[str, Any], passage: _Passage) -> dict[str, Any]:
    return {
        **{k: None for k in row},  # columns carried along (e.g. question_type) have no value for a negative
        "id": f"{row['id']}{NEGATIVE_SUFFIX}",
        "title": passage.title,
        "context": passage.context,
        "question": row["question"],
        "answers": {"text": [], "answer_start": []},
        "is_impossible": True,
    }


def build_negatives(
    rows: Sequence[dict[str, Any]], settings: NegativeSettings, *, source: str = "examples", analyzer=None
) -> tuple[list[dict[str, Any]], NegativesReport]:
    """The negative rows for `rows` (flat SQuAD rows, `kqa.data`'s schema) and the report; `analyzer` (hard
    only): a `kqa.retrieval.sparse` analyzer, Kiwi morphemes by default."""
    report = NegativesReport(source, settings, num_questions=len(rows))
    report.num_answerable = sum(_answerable(r) for r in rows)
    chosen = sample_questions(rows, settings)
    report.num_sampled = len(chosen)
    passages = _passages(rows)
    hard = _HardChooser(passages, analyzer) if settings.kind == "hard" and chosen else None
    negatives = []
    for i in chosen:
        row = rows[i]
        others = [j for j, p in enumerate(passages) if p.article != _article(row)]
        if not others:
            report.dropped.append((row["id"], NO_OTHER_ARTICLE))
            continue
        pick = hard(row["question"], others) if hard else None
        if hard and pick is None:
            report.num_hard_fallbacks += 1
        if pick is None:
            pick = _random_other(row, others, settings.seed)
        if any(to_nfc(text) in passages[pick].nfc for text in row["answers"]["text"]):
            report.dropped.append((row["id"], ANSWER_IN_PASSAGE))
            continue
        negatives.append(_negative_row(row, passages[pick]))
    report.num_added = len(negatives)
    return negatives, report


def add_negatives(examples, settings: NegativeSettings, *, source: str = "examples", analyzer=None):
    """`examples` (a `datasets.Dataset` of `kqa.data`'s schema) with the negatives appended, and the report.
    A negative's id that is already an id of the set raises a `ValueError` naming it."""
    import datasets

    rows = examples.to_list()
    negatives, report = build_negatives(rows, settings, source=source, analyzer=analyzer)
    taken = {row["id"] for row in rows} & {row["id"] for row in negatives}
    if taken:
        raise ValueError(f"{source}: negative id {sorted(taken)[0]!r} is already a question id of the set")
    if not negatives:
        return examples, report
    added = datasets.Dataset.from_list(negatives, features=examples.features)
    return datasets.concatenate_datasets([examples, added]), report


def write_squad_json(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Flat rows, negatives included, as a SQuAD 2.0 JSON file (`kqa.squad.squad_document`)."""
    text = json.dumps(squad_document(rows, version="v2.0"), ensure_ascii=False, indent=1)
    Path(path).write_text(text + "\n", encoding="utf-8")
