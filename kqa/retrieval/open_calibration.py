"""A dev set read the way `kqa ask` reads documents, to fit and to measure an answer ranker
(`kqa calibrate --open`, kqa.answer_ranking, benchmarks/bench_open_ranking.py).

The index holds the dev set's distinct contexts, one document each (hybrid: BM25 and the embedding model's
cosines, both of which the ranker reads). Each question is read twice over `passages` retrieved passages:

- **document in index**: the top passages, as `kqa ask` would read them;
- **document removed**: the top passages that are not of the question's own document (the next ones take
  their place; BM25 statistics and the fusion's normalisation still count it, a small difference from
  rebuilding the index). Its answers are what a question the documents do not answer looks like.

An answer is correct when it matches a gold answer exactly after KorQuAD normalisation; in the removed
setting that is rare but possible (another document may hold the same answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kqa.answer_ranking import ANSWER_FEATURES, QuestionCandidates
from kqa.metric import score_question
from kqa.retrieval.corpus import Document
from kqa.retrieval.pipeline import OpenAnswer, RetrieveAndRead
from kqa.retrieval.retriever import RetrievedPassage, Retriever, RetrieverSettings

SETTINGS = ("document in index", "document removed")
# Passages retrieved beyond `passages` so that the removed setting still has `passages` of other documents.
_REMOVED_MARGIN = 10


@dataclass
class OpenReading:
    """One question in one setting: the passages read and the answers found in them (not yet ranked)."""

    example: dict
    doc_id: str
    setting: str
    passages: list[RetrievedPassage]
    answers: list[OpenAnswer]

    def correct(self, answer: OpenAnswer | None) -> tuple[float, float]:
        """EM and F1 of an answer (None: no answer) against the question's gold answers."""
        return score_question("" if answer is None else answer.text, self.example["answers"]["text"])


def dev_documents(examples: Sequence[dict]) -> tuple[list[Document], list[str]]:
    """One document per distinct context (in first-seen order) and each example's document id."""
    ids: dict[str, str] = {}
    for example in examples:
        ids.setdefault(example["context"], f"context-{len(ids)}")
    documents = [Document(id=doc_id, title="", text=context, source=doc_id) for context, doc_id in ids.items()]
    return documents, [ids[e["context"]] for e in examples]


def dev_index(documents: Sequence[Document], embedder) -> Retriever:
    """A hybrid index of the dev documents with `embedder` (an `Embedder`)."""
    return Retriever.build(list(documents), RetrieverSettings(method="hybrid"), embedder=embedder)


def read_open(
    pipeline: RetrieveAndRead, examples: Sequence[dict], doc_ids: Sequence[str], passages: int
) -> list[OpenReading]:
    """Every example in both settings (module docstring): one retrieval, one reader call over the union of
    the passages; two readings per example, in-index first."""
    questions = [e["question"] for e in examples]
    retrieved = pipeline.retriever.retrieve_many(questions, passages + _REMOVED_MARGIN)
    in_index = [found[:passages] for found in retrieved]
    removed = [[h for h in found if h.passage.doc_id != doc_id][:passages] for found, doc_id in zip(retrieved, doc_ids)]
    union = [a + [h for h in b if h.passage.id not in {x.passage.id for x in a}] for a, b in zip(in_index, removed)]
    readings = [
        OpenReading(example, doc_id, setting, found, [])
        for example, doc_id, found_in, found_out in zip(examples, doc_ids, in_index, removed)
        for setting, found in zip(SETTINGS, (found_in, found_out))
    ]
    # One reader call for everything; each setting's answers are then made from its own passages (their
    # P(passage) is a softmax over the passages of that setting).
    rows = [
        {"id": f"{i}/{h.passage.id}", "question": e["question"], "context": h.passage.text}
        for i, (e, found) in enumerate(zip(examples, union))
        for h in found
    ]
    predictions = pipeline.reader.predict_rows(rows) if rows else {}
    for n, reading in enumerate(readings):
        mine = [predictions[f"{n // 2}/{h.passage.id}"] for h in reading.passages]
        reading.answers = pipeline.answers_in(mine, reading.passages)
    return readings


def question_candidates(pipeline: RetrieveAndRead, readings: Sequence[OpenReading]) -> list[QuestionCandidates]:
    """The answer ranker's training data: each reading's candidates, their features and EM (none for a
    reading where the null answer won in every passage)."""
    out = []
    for reading in readings:
        features = [pipeline.ranker_features(a, reading.passages) for a in reading.answers]
        out.append(
            QuestionCandidates(
                features=np.array(features, dtype=np.float64).reshape(len(features), len(ANSWER_FEATURES)),
                correct=np.array([reading.correct(a)[0] for a in reading.answers], dtype=np.float64),
                document_in_index=reading.setting == SETTINGS[0],
            )
        )
    return out
