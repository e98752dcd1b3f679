"""Retrieve, then read: `RetrieveAndRead` asks a `QuestionAnswerer` about the top passages of a
`Retriever` and ranks the answers of all passages together.

    pipeline = RetrieveAndRead(Retriever.load("my_index"), QuestionAnswerer.from_pretrained("outputs/kqa/best"))
    answer = pipeline("훈민정음은 언제 반포되었는가?")
    answer.text, answer.doc_id, answer.start, answer.end    # document.text[start:end] == text

Comparable across passages: an answer's `probability` is P(passage | question) × P(span | passage,
question). The second factor is the reader's softmax over the spans of one passage (`Answer.probability`);
the first is a softmax over the passages read of the retriever's scores: cosine / `passage_temperature`
(0.01, the temperature e5 was trained with) when the index has embeddings, else the BM25 scores
(sums of log-odds term weights). The reader's raw span scores (`score`, start + end logit) are on one
scale too, but a reader fine-tuned on gold passages only was never taught to score a passage without
the answer low: ranking by them alone picks confident spans of wrong passages (docs/retrieval.md has
the measurement). The same span of a document found in two overlapping passages is one answer, its
probabilities summed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kqa.retrieval.retriever import RetrievedPassage, Retriever

DEFAULT_PASSAGES = 5
E5_TEMPERATURE = 0.01  # the InfoNCE temperature multilingual-e5 was trained with: softmax(cos / 0.01)


@dataclass
class OpenAnswer:
    """An answer in its document: `document.text[start:end] == text`; `passage_start` /
    `passage_end` delimit the passage it was read in, and `retrieval_rank` its place in retrieval."""

    text: str
    score: float
    probability: float
    doc_id: str
    title: str
    start: int
    end: int
    passage_id: str
    passage_start: int
    passage_end: int
    retrieval_rank: int
    retrieval_score: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpenResult:
    question: str
    answers: list[OpenAnswer]
    passages: list[RetrievedPassage]

    def to_dict(self, with_passages: bool = True) -> dict:
        out = {"question": self.question, "answers": [a.to_dict() for a in self.answers]}
        if with_passages:
            out["passages"] = [p.to_dict() for p in self.passages]
        return out


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class RetrieveAndRead:
    def __init__(
        self,
        retriever: Retriever,
        reader,
        *,
        passages: int = DEFAULT_PASSAGES,
        passage_temperature: float = E5_TEMPERATURE,
    ):
        _check_positive_int("passages", passages)
        if not isinstance(passage_temperature, (int, float)) or not passage_temperature > 0:
            raise ValueError(f"passage_temperature must be > 0, got {passage_temperature!r}")
        self.retriever = retriever
        self.reader = reader
        self.passages = passages
        self.passage_temperature = float(passage_temperature)

    def passage_probabilities(self, found: Sequence[RetrievedPassage]) -> list[float]:
        """P(passage | question) over the passages read: a softmax of cosine / temperature, or of BM25."""
        logits = [
            h.dense_score / self.passage_temperature if h.dense_score is not None else h.sparse_score or 0.0
            for h in found
        ]
        top = max(logits, default=0.0)
        weights = [math.exp(x - top) for x in logits]
        total = sum(weights)
        return [w / total for w in weights]

    def __call__(self, question: str, *, top_k: int = 1, passages: int | None = None):
        """The best answer (an `OpenAnswer`, or None when no passage was found), or a list of `top_k`."""
        answers = self.ask(question, top_k=top_k, passages=passages).answers
        if top_k == 1:
            return answers[0] if answers else None
        return answers

    def ask(
        self, question: str, *, top_k: int = 1, passages: int | None = None, method: str | None = None
    ) -> OpenResult:
        return self.ask_many([question], top_k=top_k, passages=passages, method=method)[0]

    def ask_many(
        self, questions: Sequence[str], *, top_k: int = 1, passages: int | None = None, method: str | None = None
    ) -> list[OpenResult]:
        """Retrieve `passages` passages per question, read them all in one reader call, rank each
        question's answers by P(passage) × P(span | passage)."""
        _check_positive_int("top_k", top_k)
        passages = self.passages if passages is None else _check_positive_int("passages", passages)
        hits = self.retriever.retrieve_many(questions, passages, method=method)
        rows = [
            {"id": f"{q}/{h}", "question": question, "context": hit.passage.text}
            for q, (question, found) in enumerate(zip(questions, hits))
            for h, hit in enumerate(found)
        ]
        # n-best spans of every passage: a passage's second span may outrank another passage's first.
        predictions = self.reader.predict_rows(rows, top_k=top_k) if rows else {}
        results = []
        for q, (question, found) in enumerate(zip(questions, hits)):
            answers: dict[tuple[str, int, int], OpenAnswer] = {}
            for h, (hit, passage_probability) in enumerate(zip(found, self.passage_probabilities(found))):
                for span in predictions[f"{q}/{h}"].nbest:
                    if not span.text:  # no span in this passage (null answer, or a window without context)
                        continue
                    p = hit.passage
                    probability = passage_probability * float(span.probability)
                    key = (p.doc_id, p.start + span.start, p.start + span.end)
                    if key in answers:  # the same span, read in an overlapping passage
                        answers[key].probability += probability
                        continue
                    answers[key] = OpenAnswer(
                        text=span.text,
                        score=float(span.score),
                        probability=probability,
                        doc_id=p.doc_id,
                        title=p.title,
                        start=key[1],
                        end=key[2],
                        passage_id=p.id,
                        passage_start=p.start,
                        passage_end=p.end,
                        retrieval_rank=hit.rank,
                        retrieval_score=hit.score,
                    )
            ranked = sorted(answers.values(), key=lambda a: (-a.probability, a.retrieval_rank, a.start))
            results.append(OpenResult(question=question, answers=ranked[:top_k], passages=found))
        return results
