"""A learned ranking of the answers of several passages, and their confidence (`kqa calibrate --open`).

Retrieve-then-read ranks the answers of the passages it read by P(passage) × P(span | passage). Each
factor is normalised within its own list (the passages read; one passage's spans), so neither says how
well the question is answered in absolute terms: a confident span in a passage that merely shares the
question's topic ranks as high as one in the passage that holds the answer. An `AnswerRanker` adds the
absolute scores the reader and the retriever already compute, and learns how to weigh them from a dev
set read the way `kqa ask` reads it (kqa.retrieval.open_calibration):

1. **ranking**: a logistic regression (Platt, 1999) over every candidate answer of every question (each
   passage's n-best spans): logit = w · standardised(features) + b, fitted to "the answer is correct"
   (exact match after KorQuAD normalisation). `ANSWER_FEATURES`: log P(passage) × P(span | passage)
   (the default ranking's key), the span score (start + end logit), the passage's cosine with the question,
   log(1 + its BM25 score) and the passage's null (CLS) score, the reader's own "no answer here" (windows
   without the answer are trained towards the CLS token, with or without null answers in the data). A
   ranker uses `RANKING_FEATURES` (all of them) unless fitted on fewer; one saved before the null score was
   a feature uses the first four. Answers are ranked by the logit.
2. **confidence**: P(correct) of the best answer = sigmoid(slope · logit + intercept), a second logistic
   regression on each question's best answer alone. The first is fitted on all candidates; the best of a
   question's candidates is the one whose logit was highest, so at the same logit it is right less often
   than an average candidate (selection), which the second fit corrects. Its sample holds the dev questions
   read with their document in the index and the same questions with it removed (nothing there is right),
   so the confidence also learns what an unanswerable question looks like.
3. **abstention**: `score_threshold` is the confidence below which retrieve-then-read answers "no
   answer": by default the highest one that still answers `TARGET_ANSWER_RATE` of the dev questions whose
   document is in the index.

Scores on the retriever's scale are only meaningful with the index kind it was fitted with: the ranker
records the embedding model and retrieval method (`fit_on`), and `kqa.retrieval.RetrieveAndRead` warns
when they differ. It is saved with the model in `kqa_config.json` under `answer_ranking`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kqa.calibration import (
    ANSWER_RANKING_SECTION,
    check_threshold,
    expected_calibration_error,
    fit_logistic,
    read_config_section,
    sigmoid,
    write_config_section,
)

ANSWER_FEATURES = ("log_probability", "score", "dense_score", "log_sparse_score", "null_score")
RANKING_FEATURES = ANSWER_FEATURES  # what `kqa calibrate --open` fits on
# The default abstention threshold answers this share of the fit set's questions whose document is indexed:
# high, because a threshold carries imperfectly between question styles (docs/retrieval.md: the one that
# answers 0.9 of KorQuAD's answers 0.86 of TyDi's).
TARGET_ANSWER_RATE = 0.98
_TINY = 1e-30  # log(0) guard for a probability that underflowed


def answer_features(
    probability: float,
    score: float,
    dense_score: Optional[float],
    sparse_score: Optional[float],
    null_score: Optional[float],
) -> list[float]:
    """`ANSWER_FEATURES` of one answer: P(passage) × P(span | passage), the span score, its passage's
    cosine and BM25 score (a hybrid index has both) and its passage's null score (None is refused)."""
    if dense_score is None or sparse_score is None:
        raise ValueError(
            "the answer ranker needs the passage's cosine and BM25 score: use a hybrid index (embeddings and BM25)"
        )
    if null_score is None:
        raise ValueError("the answer ranker needs the passage's null (CLS) score: features without cls_index lack it")
    return [
        math.log(max(float(probability), _TINY)),
        float(score),
        float(dense_score),
        math.log1p(float(sparse_score)),
        float(null_score),
    ]


@dataclass(frozen=True)
class QuestionCandidates:
    """One dev question read over retrieved passages: its candidate answers' features ([n, ANSWER_FEATURES]),
    whether each is correct, and whether the question's own document was among the passages' index."""

    features: np.ndarray
    correct: np.ndarray
    document_in_index: bool


@dataclass(frozen=True)
class AnswerRanker:
    """The two logistic regressions of the module docstring: `weights` / `bias` over the standardised
    `features` ((x - mean) / scale; a subset of `ANSWER_FEATURES`, in their order) give the ranking logit;
    `slope` / `intercept` turn it into P(correct)."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    slope: float
    intercept: float
    score_threshold: float
    fit_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _feature_columns(self.features)
        width = len(self.features)
        if not all(len(getattr(self, name)) == width for name in ("mean", "scale", "weights")):
            raise ValueError(f"mean, scale and weights need {width} numbers each")
        if not all(float(s) > 0 for s in self.scale):
            raise ValueError(f"scale must be positive, got {self.scale}")
        check_threshold(self.score_threshold, "score_threshold")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The ranking logit of each row of x ([n, ANSWER_FEATURES]; the ranker reads its own columns)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(ANSWER_FEATURES))[:, _feature_columns(self.features)]
        z = (x - self.mean) / np.asarray(self.scale)
        return z @ np.asarray(self.weights, dtype=np.float64) + self.bias

    def confidences(self, x: np.ndarray) -> np.ndarray:
        """P(correct) of each row of x, monotone in its logit."""
        return sigmoid(self.slope * self.logits(x) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = ANSWER_RANKING_SECTION) -> AnswerRanker:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected an object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        missing, unknown = sorted(known - set(data) - {"fit_on"}), sorted(set(data) - known)
        if missing or unknown:
            raise ValueError(f"{source}: missing field(s) {missing}, unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err


def fit_answer_ranker(
    questions: Sequence[QuestionCandidates],
    *,
    score_threshold: Optional[float] = None,
    target_answer_rate: float = TARGET_ANSWER_RATE,
    fit_on: Optional[dict[str, Any]] = None,
    features: Sequence[str] = RANKING_FEATURES,
) -> AnswerRanker:
    """Fit both regressions (module docstring) on dev questions read over retrieved passages, over
    `features` (some of `ANSWER_FEATURES`). The threshold is `score_threshold` when given, else the highest
    confidence that still answers `target_answer_rate` of the questions whose document is in the index.
    Questions without a candidate are left out of both fits and count as unanswered for the threshold.
    `fit_on` gains the counts and, over the questions with a candidate, the best answers' accuracy and the
    ECE of their confidence."""
    asked = [q for q in questions if len(q.correct)]
    if not asked:
        raise ValueError("no question has a candidate answer to rank")
    features, columns = list(features), _feature_columns(features)
    x = np.concatenate([np.asarray(q.features, dtype=np.float64) for q in asked])
    y = np.concatenate([np.asarray(q.correct, dtype=np.float64) for q in asked])
    if x.shape[1] != len(ANSWER_FEATURES):
        raise ValueError(f"candidates need {len(ANSWER_FEATURES)} features each ({ANSWER_FEATURES}), got {x.shape[1]}")
    x = x[:, columns]
    if y.min() == y.max():
        raise ValueError("every candidate answer is right, or every one wrong: nothing to learn a ranking from")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    weights, bias = fit_logistic((x - mean) / scale, y)
    ranking = AnswerRanker(features, mean.tolist(), scale.tolist(), weights.tolist(), bias, 1.0, 0.0, 0.0)
    logits = [ranking.logits(q.features) for q in asked]
    best = [int(np.argmax(question_logits)) for question_logits in logits]
    best_logit = np.array([question_logits[b] for question_logits, b in zip(logits, best)])
    best_correct = np.array([float(q.correct[b]) for q, b in zip(asked, best)])
    (slope,), intercept = fit_logistic(best_logit[:, None], best_correct)
    confidence = sigmoid(slope * best_logit + intercept)
    in_index = np.array([q.document_in_index for q in asked])
    # An indexed question without a candidate (the null answer won in every passage read) is unanswered
    # at any threshold: it counts towards the answer rate as a confidence of 0.
    unanswered = [0.0] * sum(q.document_in_index and not len(q.correct) for q in questions)
    if score_threshold is None:
        score_threshold = threshold_for_answer_rate(confidence[in_index].tolist() + unanswered, target_answer_rate)
    summary = {
        "questions": len(questions),
        "questions_without_candidates": len(questions) - len(asked),
        "questions_document_in_index": sum(q.document_in_index for q in questions),
        "candidates": int(len(y)),
        "best_answer_accuracy": float(best_correct.mean()),
        "ece": expected_calibration_error(confidence, best_correct),
        "target_answer_rate": target_answer_rate,
    }
    return AnswerRanker(
        **{
            **ranking.to_dict(),
            "slope": float(slope),
            "intercept": float(intercept),
            "score_threshold": check_threshold(float(score_threshold)),
            "fit_on": dict(fit_on or {}, **summary),
        }
    )


def _feature_columns(names: Sequence[str]) -> list[int]:
    """The columns of `names` in an [n, ANSWER_FEATURES] matrix; `names` must be distinct `ANSWER_FEATURES`,
    at least one, in that tuple's order (an error says so otherwise)."""
    positions = [ANSWER_FEATURES.index(n) for n in names if n in ANSWER_FEATURES]
    if not names or len(positions) != len(names) or positions != sorted(set(positions)):
        raise ValueError(f"features must be some of {list(ANSWER_FEATURES)}, in that order, got {list(names)!r}")
    return positions


def threshold_for_answer_rate(confidence: Sequence[float], rate: float) -> float:
    """The highest threshold t with at least `rate` of `confidence` >= t (0.0 for no confidences)."""
    values = np.sort(np.asarray(confidence, dtype=np.float64))
    if values.size == 0:
        return 0.0
    keep = math.ceil(rate * values.size)  # answered: the `keep` highest
    return float(values[values.size - keep]) if keep else 1.0


def load_answer_ranker(model_dir: str | Path) -> Optional[AnswerRanker]:
    """The answer ranker saved with a model, or None for a model without an `answer_ranking` section."""
    return read_config_section(model_dir, ANSWER_RANKING_SECTION, AnswerRanker.from_dict)


def save_answer_ranker(model_dir: str | Path, ranker: AnswerRanker) -> Path:
    """Write (or replace) the `answer_ranking` section of a model's kqa_config.json, keeping the rest."""
    return write_config_section(model_dir, ANSWER_RANKING_SECTION, ranker.to_dict())
