"""Retrieve, then read: `RetrieveAndRead` asks a `QuestionAnswerer` about the top passages of a
`Retriever` and ranks the answers of all passages together.

    pipeline = RetrieveAndRead(Retriever.load("my_index"), QuestionAnswerer.from_pretrained("outputs/kqa/best"))
    answer = pipeline("훈민정음은 언제 반포되었는가?")
    answer.text, answer.doc_id, answer.start, answer.end    # document.text[start:end] == text
    answer.location                                         # "page 3" in a PDF (None for plain text)

Comparable across passages: an answer's `probability` is P(passage | question) × P(span | passage,
question). The second factor is the reader's softmax over the spans of one passage (`Answer.probability`);
the first is a softmax over the passages read of the retriever's scores: cosine / `passage_temperature`
(0.01, the temperature e5 was trained with) when the index has embeddings, else the BM25 scores
(sums of log-odds term weights). The reader's raw span scores (`score`, start + end logit) are on one
scale too, but a reader fine-tuned on gold passages only was never taught to score a passage without
the answer low: ranking by them alone picks confident spans of wrong passages (docs/retrieval.md has
the measurement). The same span of a document found in two overlapping passages is one answer, its
probabilities summed.

With a calibrated reader (`kqa calibrate`) each answer also carries its confidence, P(correct), and none is
returned when the best answer's is below `score_threshold`. `rank_by="confidence"` ranks by that confidence
instead of the probability above; with a calibrator fitted on gold passages it is not the default because,
with a reader fine-tuned on gold passages only, it was measured far worse
(docs/retrieval.md#abstention-no-answer-over-documents).

A reader with an answer ranker (`kqa calibrate --open`, kqa.answer_ranking) is the exception: its
confidence was fitted on retrieved passages from the reader's and the retriever's scores together, so
answers are ranked by it by default and it is the confidence every answer carries. It needs both the
cosine and the BM25 score of a passage: over an index without one of them (a warning says so when the
pipeline is built), or in a call with `method="sparse"` or `"dense"`, answers are ranked by the probability
above and never withheld.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

from kqa.answer_ranking import AnswerRanker, answer_features
from kqa.calibration import check_threshold, span_confidences
from kqa.retrieval.formats import location_of
from kqa.retrieval.retriever import RetrievedPassage, Retriever

logger = logging.getLogger(__name__)

DEFAULT_PASSAGES = 5
# How answers of several passages are ranked: the first is the default, but for a reader with an answer
# ranker, whose confidence is ranked by (measured: docs/retrieval.md).
RANK_BY = ("probability", "confidence")
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
    confidence: Optional[float] = None
    location: Optional[str] = None  # where the answer is in its file, "page 3" (PDF, HTML, DOCX documents)
    null_score: Optional[float] = None  # its passage's CLS score: how strongly the reader says "not here"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpenResult:
    question: str
    answers: list[OpenAnswer]
    passages: list[RetrievedPassage]
    no_answer: bool = False
    """True when no answer is given: no passage was found, or the best answer's confidence was below
    `score_threshold` (abstention)."""
    best_confidence: Optional[float] = None
    score_threshold: Optional[float] = None

    def to_dict(self, with_passages: bool = True) -> dict:
        out = {
            "question": self.question,
            "answers": [a.to_dict() for a in self.answers],
            "no_answer": self.no_answer,
            "best_confidence": self.best_confidence,
            "score_threshold": self.score_threshold,
        }
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
        rank_by: str | None = None,
    ):
        _check_positive_int("passages", passages)
        if rank_by is not None and rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        if not isinstance(passage_temperature, (int, float)) or not passage_temperature > 0:
            raise ValueError(f"passage_temperature must be > 0, got {passage_temperature!r}")
        self.retriever = retriever
        self.reader = reader
        self.passages = passages
        self.passage_temperature = float(passage_temperature)
        self.answer_ranker = self._usable_ranker(getattr(reader, "answer_ranker", None))
        self.rank_by = rank_by or ("confidence" if self.answer_ranker is not None else RANK_BY[0])

    def _usable_ranker(self, ranker: AnswerRanker | None) -> AnswerRanker | None:
        """The reader's answer ranker when this index gives the scores it was fitted on, else None (warned)."""
        if ranker is None:
            return None
        if self.retriever.sparse is None or self.retriever.dense is None:
            logger.warning(
                "the model's answer ranker needs an index with embeddings and BM25 (hybrid); this one lacks one: "
                "answers are ranked by P(passage) x P(span) and not withheld"
            )
            return None
        fitted_with = ranker.fit_on.get("embedder_fingerprint")
        if fitted_with and fitted_with != self.retriever.embedder.fingerprint:
            logger.warning(
                "the model's answer ranker was fitted with the embedding model %s, this index uses %s: "
                "its cosines may be on another scale (run kqa calibrate --open with this embedding model)",
                ranker.fit_on.get("embedding_model"),
                self.retriever.embedder.name,
            )
        return ranker

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

    def __call__(
        self, question: str, *, top_k: int = 1, passages: int | None = None, score_threshold: float | None = None
    ):
        """The best answer (an `OpenAnswer`, or None for no answer), or a list of `top_k`."""
        answers = self.ask(question, top_k=top_k, passages=passages, score_threshold=score_threshold).answers
        if top_k == 1:
            return answers[0] if answers else None
        return answers

    def ask(
        self,
        question: str,
        *,
        top_k: int = 1,
        passages: int | None = None,
        method: str | None = None,
        score_threshold: float | None = None,
        filters=None,
    ) -> OpenResult:
        return self.ask_many(
            [question], top_k=top_k, passages=passages, method=method, score_threshold=score_threshold, filters=filters
        )[0]

    def ask_many(
        self,
        questions: Sequence[str],
        *,
        top_k: int = 1,
        passages: int | None = None,
        method: str | None = None,
        score_threshold: float | None = None,
        filters=None,
    ) -> list[OpenResult]:
        """Retrieve `passages` passages per question (only of documents whose metadata passes `filters`:
        strings or a `MetadataFilter`, kqa.retrieval.filters), read them all in one reader call, rank
        each question's answers (`rank`), and withhold them below `score_threshold`."""
        _check_positive_int("top_k", top_k)
        passages = self.passages if passages is None else _check_positive_int("passages", passages)
        threshold = self.threshold(score_threshold)
        hits = self.retriever.retrieve_many(questions, passages, method=method, filters=filters)
        candidates = self.candidates(questions, hits, top_k=top_k)
        return [
            self.rank(question, found, found_answers, top_k=top_k, score_threshold=threshold)
            for question, found, found_answers in zip(questions, hits, candidates)
        ]

    def ranker_features(self, answer: OpenAnswer, found: Sequence[RetrievedPassage]):
        """The answer ranker's features of one answer (`kqa.answer_ranking.answer_features`), or None when
        its passage lacks a cosine or a BM25 score (a sparse or dense call)."""
        hit = next(h for h in found if h.passage.id == answer.passage_id)
        if hit.dense_score is None or hit.sparse_score is None:
            return None
        return answer_features(answer.probability, answer.score, hit.dense_score, hit.sparse_score, answer.null_score)

    @property
    def calibrator(self):
        return getattr(self.reader, "calibrator", None)

    def threshold(self, score_threshold: float | None) -> float | None:
        """The abstention threshold of a call: the one given, else the answer ranker's, else the
        calibrator's; None (never abstain) for a reader with neither, which cannot take one."""
        source = self.answer_ranker or self.calibrator
        if source is None:
            if score_threshold is not None:
                raise ValueError("score_threshold needs a calibrated model (kqa calibrate); this one has no calibrator")
            return None
        return source.score_threshold if score_threshold is None else check_threshold(score_threshold)

    def candidates(
        self, questions: Sequence[str], hits: Sequence[Sequence[RetrievedPassage]], *, top_k: int = 1
    ) -> list[list[OpenAnswer]]:
        """Every question's answers in the passages found for it (one reader call for all): the n-best
        spans of each passage with P(passage) × P(span | passage) and, with a calibrator, their
        confidence. A passage where the null answer wins (`version_2_with_negative` models) gives none.
        The same span of a document read in two overlapping passages is one answer (probabilities
        summed, the higher confidence kept)."""
        rows = [
            {"id": f"{q}/{h}", "question": question, "context": hit.passage.text}
            for q, (question, found) in enumerate(zip(questions, hits))
            for h, hit in enumerate(found)
        ]
        # n-best spans of every passage: a passage's second span may outrank another passage's first.
        predictions = self.reader.predict_rows(rows, top_k=top_k) if rows else {}
        return [
            self.answers_in([predictions[f"{q}/{h}"] for h in range(len(found))], found) for q, found in enumerate(hits)
        ]

    def answers_in(self, predictions, found: Sequence[RetrievedPassage]) -> list[OpenAnswer]:
        """One question's answers from the reader's predictions in its passages (`found`, in order): see
        `candidates`; with an answer ranker, its confidence replaces the calibrator's."""
        answers = self._passage_answers(predictions, found)
        return self.score_answers(found, answers) if self.answer_ranker is not None else answers

    def score_answers(self, found: Sequence[RetrievedPassage], answers: list[OpenAnswer]) -> list[OpenAnswer]:
        """Give each answer the answer ranker's confidence (in place; returns them), or None to all when a
        passage lacks a score the ranker needs (the call then ranks by probability and never abstains)."""
        features = [self.ranker_features(a, found) for a in answers]
        usable = all(f is not None for f in features)
        confidences = self.answer_ranker.confidences(features) if usable and features else []
        for i, answer in enumerate(answers):
            answer.confidence = float(confidences[i]) if usable else None
        return answers

    def _passage_answers(self, predictions, found: Sequence[RetrievedPassage]) -> list[OpenAnswer]:
        answers: dict[tuple[str, int, int], OpenAnswer] = {}
        for prediction, hit, passage_probability in zip(predictions, found, self.passage_probabilities(found)):
            if prediction.null_score is not None and prediction.text == "":  # the null answer won here
                continue
            confidences = span_confidences(prediction, self.calibrator)
            for span, confidence in zip(prediction.nbest, confidences):
                if not span.text:  # a window without context
                    continue
                p = hit.passage
                probability = passage_probability * float(span.probability)
                key = (p.doc_id, p.start + span.start, p.start + span.end)
                if key in answers:  # the same span, read in an overlapping passage
                    same = answers[key]
                    same.probability += probability
                    if confidence is not None and confidence > same.confidence:
                        same.confidence = confidence
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
                    confidence=confidence,
                    location=location_of(self.retriever.document(p.doc_id).regions, key[1], key[2]),
                    null_score=prediction.cls_score,
                )
        return list(answers.values())

    def rank(
        self,
        question: str,
        found: Sequence[RetrievedPassage],
        answers: Sequence[OpenAnswer],
        *,
        top_k: int = 1,
        score_threshold: float | None = None,
        by: str | None = None,
    ) -> OpenResult:
        """The `top_k` best answers, ranked by `by` (default: the pipeline's `rank_by`): "probability",
        P(passage) × P(span | passage), or "confidence", the calibrated P(correct). Below `score_threshold`
        the best answer's confidence means "no answer": none is returned."""
        by = by or self.rank_by
        if by not in RANK_BY:
            raise ValueError(f"by must be one of {RANK_BY}, got {by!r}")
        if by == "confidence" and any(a.confidence is None for a in answers):
            if self.answer_ranker is None:
                raise ValueError("ranking by confidence needs a calibrated reader (kqa calibrate)")
            by = "probability"  # a call whose passages lack a score the ranker needs
        ranked = sorted(answers, key=lambda a: (-getattr(a, by), a.retrieval_rank, a.start))
        best = ranked[0].confidence if ranked else None
        withheld = score_threshold is not None and best is not None and best < score_threshold
        return OpenResult(
            question=question,
            answers=[] if withheld else ranked[:top_k],
            passages=list(found),
            no_answer=withheld or not ranked,
            best_confidence=best,
            score_threshold=score_threshold,
        )
