"""Calibrated confidence: an answer's P(correct), fitted on a dev set (`kqa calibrate`).

"Correct" is exact match after KorQuAD normalisation (`kqa.metric.exact_match_score`) of the answer
against any gold answer. Two calibrators, both well known:

- `temperature`: the within-context softmax over the n-best (+ null) span scores divided by one
  temperature T (Guo et al., 2017). Monotone in the within-context probability, so it inherits its
  blind spot: a passage's probabilities always sum to 1, whether or not the passage holds the answer.
- `platt`: a logistic regression (Platt, 1999) on the raw span score (start + end logit, on one
  scale in every passage) and the within-context probability: P(correct) = sigmoid(w · x + b).

Expected calibration error (ECE): `CALIBRATION_BINS` = 15 equal-width confidence bins on [0, 1]
(bin i holds confidences in [i/15, (i+1)/15), the last one also 1.0); ECE = Σ_bins (n_bin / N) ×
|accuracy_bin − mean confidence_bin|.

The calibrator is saved with the model in `kqa_config.json` under `calibration` (`save_calibrator`,
`load_calibrator`); models without that section have no calibrator and no confidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

CALIBRATION_BINS = 15
CALIBRATION_SECTION = "calibration"
ANSWER_RANKING_SECTION = "answer_ranking"  # kqa.answer_ranking's
# The sections of kqa_config.json beside the prediction settings.
CONFIG_SECTIONS = (CALIBRATION_SECTION, ANSWER_RANKING_SECTION)
METHODS = ("platt", "temperature")
PLATT_FEATURES = ("score", "probability")
# Retrieve-then-read answers "no answer" below this calibrated confidence unless a call says otherwise;
# chosen by benchmarks/bench_abstention.py (docs/retrieval.md) and stored with every calibrator.
DEFAULT_SCORE_THRESHOLD = 0.2
_TEMPERATURE_GRID = np.exp(np.linspace(math.log(0.05), math.log(50.0), 801))


@dataclass(frozen=True)
class ContextScores:
    """What the reader said about one question in one context: its n-best span scores and within-context
    probabilities (best first) and the null score (SQuAD 2.0 models, else None)."""

    scores: Sequence[float]
    probabilities: Sequence[float]
    null_score: Optional[float] = None


@dataclass(frozen=True)
class Calibrator:
    """`method` with its `parameters`: platt {"features": [...], "weights": [...], "bias": b};
    temperature {"temperature": T}. `score_threshold` is retrieve-then-read's default abstention
    threshold; `fit_on`, `ece_before`, `ece_after` record how it was fitted."""

    method: str
    parameters: dict[str, Any]
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    fit_on: dict[str, Any] = field(default_factory=dict)
    ece_before: Optional[float] = None
    ece_after: Optional[float] = None
    bins: int = CALIBRATION_BINS

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        check_threshold(self.score_threshold, "score_threshold")
        if self.method == "temperature" and not float(self.parameters.get("temperature", 0)) > 0:
            raise ValueError(f"temperature calibration needs a temperature > 0, got {self.parameters}")
        if self.method == "platt":
            features = list(self.parameters.get("features", []))
            unknown = sorted(set(features) - set(PLATT_FEATURES))
            if not features or unknown or len(self.parameters.get("weights", [])) != len(features):
                raise ValueError(
                    f"platt calibration needs features from {PLATT_FEATURES} and one weight each, got {self.parameters}"
                )

    def confidences(self, context: ContextScores) -> np.ndarray:
        """P(correct) of each n-best span of one context, in their order."""
        scores = np.asarray(context.scores, dtype=np.float64)
        if self.method == "temperature":
            return within_context_softmax(scores, context.null_score, float(self.parameters["temperature"]))
        columns = {"score": scores, "probability": np.asarray(context.probabilities, dtype=np.float64)}
        x = np.stack([columns[name] for name in self.parameters["features"]], axis=1)
        return sigmoid(x @ np.asarray(self.parameters["weights"], dtype=np.float64) + float(self.parameters["bias"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = CALIBRATION_SECTION) -> Calibrator:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected an object, got {type(data).__name__}")
        known = {"method", "parameters", "score_threshold", "fit_on", "ece_before", "ece_after", "bins"}
        unknown = sorted(set(data) - known)
        if unknown or "method" not in data or "parameters" not in data:
            raise ValueError(
                f"{source}: needs 'method' and 'parameters' (known fields {sorted(known)}), got {sorted(data)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{source}: {err}") from err


def check_threshold(value: Any, name: str = "score_threshold") -> float:
    """A confidence threshold: a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number between 0 and 1 (a calibrated confidence), got {value!r}")
    return float(value)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def within_context_softmax(scores: np.ndarray, null_score: Optional[float], temperature: float = 1.0) -> np.ndarray:
    """softmax(score / T) over a context's n-best spans and its null score (when it has one)."""
    pool = np.append(scores, null_score) if null_score is not None else np.asarray(scores)
    if pool.size == 0:
        return np.zeros(0)
    z = pool / temperature
    weights = np.exp(z - z.max())
    return (weights / weights.sum())[: len(scores)]


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[float], bins: int = CALIBRATION_BINS
) -> float:
    """ECE over `bins` equal-width bins (module docstring); 0.0 for no samples."""
    table = reliability_table(confidence, correct, bins)
    total = sum(row["count"] for row in table)
    if total == 0:
        return 0.0
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]))


def reliability_table(
    confidence: Sequence[float], correct: Sequence[float], bins: int = CALIBRATION_BINS
) -> list[dict]:
    """Per bin: its edges, how many samples, their mean confidence and their accuracy (NaN when empty)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.shape} vs {hit.shape}")
    index = np.minimum((np.clip(conf, 0.0, 1.0) * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": n,
                "confidence": float(conf[mask].mean()) if n else math.nan,
                "accuracy": float(hit[mask].mean()) if n else math.nan,
            }
        )
    return rows


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and bias of the logistic regression of y (0/1) on the columns of x: Newton's method on the
    mean log loss with a small L2 penalty on the weights (so that separable data still converges)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"fit_logistic needs x [n, d] and y [n] with n > 0, got {x.shape} and {y.shape}")
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(design @ theta)
        gradient = design.T @ (p - y) / len(y) + penalty * theta
        hessian = (design.T * (p * (1 - p))) @ design / len(y) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fit_temperature(contexts: Sequence[ContextScores], y: np.ndarray) -> float:
    """The temperature (on a log grid from 0.05 to 50) whose best-span softmax probability has the
    lowest log loss against y."""
    width = max(len(c.scores) + (c.null_score is not None) for c in contexts)
    pool = np.full((len(contexts), width), -np.inf)
    for i, c in enumerate(contexts):
        row = list(c.scores) + ([c.null_score] if c.null_score is not None else [])
        pool[i, : len(row)] = row
    pool -= pool[:, :1]  # the best span at 0: softmax(pool / T)[0] = 1 / sum(exp(pool / T))
    losses = [_log_loss(1.0 / np.exp(pool / t).sum(axis=1), y) for t in _TEMPERATURE_GRID]
    return float(_TEMPERATURE_GRID[int(np.argmin(losses))])


def fit_calibrator(
    contexts: Sequence[ContextScores],
    correct: Sequence[float],
    method: str = "platt",
    *,
    features: Sequence[str] = PLATT_FEATURES,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    fit_on: dict[str, Any] | None = None,
) -> Calibrator:
    """Fit on each question's best span (`contexts[i]`'s first) and whether it was correct. Questions
    without any span are left out (there is nothing to be confident about). ECE before is that of the
    within-context probability, after that of the calibrated confidence, both on these questions."""
    kept = [(c, float(y)) for c, y in zip(contexts, correct, strict=True) if len(c.scores)]
    if not kept:
        raise ValueError("no question has an answer span to calibrate on")
    y = np.array([k[1] for k in kept])
    before = [float(c.probabilities[0]) for c, _ in kept]
    if method == "temperature":
        parameters: dict[str, Any] = {"temperature": _fit_temperature([c for c, _ in kept], y)}
    elif method == "platt":
        columns = {"score": [c.scores[0] for c, _ in kept], "probability": before}
        x = np.array([[columns[name][i] for name in features] for i in range(len(kept))])
        weights, bias = fit_logistic(x, y)
        parameters = {"features": list(features), "weights": [float(w) for w in weights], "bias": bias}
    else:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    calibrator = Calibrator(
        method, parameters, score_threshold, dict(fit_on or {}, questions=len(kept), accuracy=float(y.mean()))
    )
    after = [float(calibrator.confidences(c)[0]) for c, _ in kept]
    return Calibrator(
        **{
            **calibrator.to_dict(),
            "ece_before": expected_calibration_error(before, y),
            "ece_after": expected_calibration_error(after, y),
        }
    )


def span_confidences(prediction, calibrator: Calibrator | None) -> list[Optional[float]]:
    """The calibrated P(correct) of each n-best span of a `kqa.postprocess.ExamplePrediction`, or None each
    without a calibrator."""
    if calibrator is None or not prediction.nbest:
        return [None] * len(prediction.nbest)
    context = ContextScores(
        [float(s.score) for s in prediction.nbest],
        [float(s.probability) for s in prediction.nbest],
        prediction.null_score,
    )
    return [float(c) for c in calibrator.confidences(context)]


def load_calibrator(model_dir: str | Path) -> Optional[Calibrator]:
    """The calibrator saved with a model, or None for a model without a `calibration` section."""
    return read_config_section(model_dir, CALIBRATION_SECTION, Calibrator.from_dict)


def read_config_section(model_dir: str | Path, section: str, parse):
    """`parse(value, source)` of one top-level section of a model's kqa_config.json (`source` names the file
    and the section for errors), or None for a model without it."""
    from kqa.weights import KQA_CONFIG_FILE, load_kqa_config

    data = load_kqa_config(model_dir)
    if section not in data:
        return None
    return parse(data[section], f"{Path(model_dir) / KQA_CONFIG_FILE}: {section}")


def save_calibrator(model_dir: str | Path, calibrator: Calibrator) -> Path:
    """Write (or replace) the `calibration` section of a model's kqa_config.json, keeping the rest."""
    return write_config_section(model_dir, CALIBRATION_SECTION, calibrator.to_dict())


def write_config_section(model_dir: str | Path, section: str, value: dict[str, Any]) -> Path:
    """Write (or replace) one top-level section of a model's kqa_config.json, keeping the rest. The
    prediction settings are written in their nested layout (`PredictionSettings.to_dict`: a 0.1.0 model's
    flat keys are moved into it), where every loader reads them and skips the sections it does not know."""
    from kqa.prediction import PredictionSettings
    from kqa.weights import KQA_CONFIG_FILE, load_kqa_config

    path = Path(model_dir) / KQA_CONFIG_FILE
    saved = {k: v for k, v in load_kqa_config(model_dir).items() if k != section}
    settings = PredictionSettings.from_dict(saved, str(path)).to_dict()
    if not any(name in saved for name in settings):  # the flat layout: only kqa_version and sections stay
        saved = {k: v for k, v in saved.items() if k in ("kqa_version", *CONFIG_SECTIONS)}
    data = {**saved, **settings, section: value}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path
