"""Features → logits → answers: the one prediction path.

The training loop's evaluation (`kqa.training.recipe`), model evaluation (`kqa.training.evaluation`, `evaluate.py`),
`QuestionAnswerer` (`kqa.inference`) and `kqa predict` all run a model through `predict_logits`,
decode the logits with the n-best post-processor (`kqa.postprocess.decode_answers`) and, where gold
answers exist, score them with the official metric (`kqa.metric.score_predictions`). So the numbers
that choose a checkpoint are the numbers a served model reproduces.

`PredictionSettings` is what a saved model needs to predict the way it was evaluated: the window
geometry (`FeatureConfig`) and the post-processing settings (`PostprocessConfig`). It is written to
`kqa_config.json` beside the weights and read back into the same two dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from kqa.features import FeatureConfig
from kqa.metric import BREAKDOWN_COLUMNS, EvalResult, examples_questions, score_predictions
from kqa.metric_v2 import SquadV2Result, has_unanswerable, score_v2
from kqa.postprocess import ExamplePrediction, PostprocessConfig, decode_answers

# Logits past a feature's own length (every batch is padded to one width so that processes can be
# gathered). The post-processor reads only a feature's context tokens, so this value is never chosen.
LOGIT_PAD_VALUE = -1e4

# The sections of the saved settings (kqa_config.json) and of TrainConfig: one dataclass each.
SETTING_SECTIONS = {"features": FeatureConfig, "postprocess": PostprocessConfig}
# The flat settings a user may override when loading a model (flags of `kqa predict`, `evaluate.py`).
OVERRIDABLE_SETTINGS = (
    "max_seq_length",
    "doc_stride",
    "max_query_length",
    "n_best_size",
    "max_answer_length",
    "answer_boundaries",
    "null_score_diff_threshold",
)
# Windows per forward pass: evaluation (training's, evaluate.py) and answering (QuestionAnswerer, kqa
# predict / serve / ask). Evaluation has no latency to keep, so it batches more.
EVAL_BATCH_SIZE = 64
PREDICT_BATCH_SIZE = 32


@dataclass(frozen=True)
class PredictionSettings:
    """Window geometry and post-processing: saved with a model, restored when it is loaded."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SETTING_SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> PredictionSettings:
        """The nested layout of `to_dict`. Models saved by kqa 0.1.0 wrote the same fields flat; they
        are read into the same dataclasses."""
        if not _is_nested(data):
            return cls().with_overrides(source, **{k: v for k, v in data.items() if k != "kqa_version"})
        parts = {}
        for name, section in SETTING_SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"{source}: {name!r} must be an object of {section.__name__} fields")
            parts[name] = _build(section, values, f"{source}: {name}")
        return cls(**parts)

    def with_overrides(self, source: str = "overrides", **values: Any) -> PredictionSettings:
        """A copy with flat field overrides (`max_seq_length=512`, `n_best_size=5`, …) routed to the
        dataclass that owns them; `None` values leave a field as it is."""
        values = {k: v for k, v in values.items() if v is not None}
        parts = {}
        for name, section in SETTING_SECTIONS.items():
            names = {f.name for f in dataclasses.fields(section)}
            mine = {k: values.pop(k) for k in list(values) if k in names}
            parts[name] = _build(section, {**dataclasses.asdict(getattr(self, name)), **mine}, source)
        if values:
            raise ValueError(f"{source}: unknown setting(s) {sorted(values)}")
        return PredictionSettings(**parts)


def _build(section: type, values: dict[str, Any], source: str):
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: {section.__name__} has no field(s) {unknown}")
    try:
        return section(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def load_settings(model_dir: str | Path, **overrides: Any) -> PredictionSettings:
    """The settings saved with a model (defaults for a directory without `kqa_config.json`, e.g. a
    `transformers` QA checkpoint), with flat overrides applied."""
    from kqa.modeling import KQA_CONFIG_FILE, load_kqa_config

    source = str(Path(model_dir) / KQA_CONFIG_FILE)
    return PredictionSettings.from_dict(load_kqa_config(model_dir), source).with_overrides(source, **overrides)


# The key of kqa_config.json that records where a stored null threshold came from.
NULL_THRESHOLD_SOURCE_KEY = "null_threshold_source"


def store_null_threshold(model_dir: str | Path, threshold: float, source: dict[str, Any]) -> Path:
    """Write `threshold` into the saved settings of `model_dir` (kqa_config.json: the postprocess section's
    `null_score_diff_threshold`) and `source` (data file, best_f1, date) beside them under
    `NULL_THRESHOLD_SOURCE_KEY`; `load_settings` then returns it, so every loader of the model uses it.
    Only a model trained with `version_2_with_negative` has a null answer to tune."""
    import json
    import math

    from kqa.modeling import KQA_CONFIG_FILE, load_kqa_config

    path = Path(model_dir) / KQA_CONFIG_FILE
    data = load_kqa_config(model_dir)
    settings = PredictionSettings.from_dict(data, str(path))
    if not settings.postprocess.version_2_with_negative:
        raise ValueError(
            f"{path}: the model was not trained with version_2_with_negative, so it has no null answer "
            "whose threshold could be stored"
        )
    if not math.isfinite(threshold):
        raise ValueError(f"{path}: the null threshold to store must be a finite number, got {threshold}")
    tuned = settings.with_overrides(str(path), null_score_diff_threshold=float(threshold))
    kept = {k: v for k, v in data.items() if k in ("kqa_version",)} if not _is_nested(data) else data
    payload = {**kept, **tuned.to_dict(), NULL_THRESHOLD_SOURCE_KEY: source}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path


def store_best_threshold(model_dir: str | Path, v2: Optional[SquadV2Result], data_file: str | Path) -> Path:
    """`store_null_threshold` with the best-F1 threshold of `v2` (the SQuAD 2.0-style scores of
    `data_file` with null odds), recording the data file, best_f1 and the date (UTC)."""
    import datetime

    if v2 is None or v2.best_f1_thresh is None:
        raise ValueError(
            f"{data_file}: no unanswerable question (or no null scores from the model), so there is no null "
            "threshold to tune"
        )
    source = {
        "data_file": str(Path(data_file).resolve()),
        "best_f1": v2.scores["best_f1"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return store_null_threshold(model_dir, v2.best_f1_thresh, source)


def _is_nested(data: dict[str, Any]) -> bool:
    return any(name in data for name in SETTING_SECTIONS)


@dataclass
class PredictionSet:
    """Examples, their evaluation features (any order: answers are decoded per `example_id`; the loop
    sorts them by length) and a loader over those features in their row order."""

    name: str
    examples: Any
    features: Any
    dataloader: Any = None


@dataclass
class FeatureLogits:
    """Start/end logits `[num_features, width]` (float32, in feature order) and the mean loss when the
    features carry labels."""

    start: np.ndarray
    end: np.ndarray
    loss: Optional[float] = None


@dataclass
class SetEvaluation:
    """The answers to one prediction set and their official score."""

    predictions: dict[str, ExamplePrediction]
    result: EvalResult
    loss: Optional[float]
    v2: Optional[SquadV2Result] = None
    """The SQuAD 2.0-style scores (`score_v2_predictions`) when the set has unanswerable questions."""


def _pad(logits: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(logits.float(), (0, width - logits.shape[1]), value=LOGIT_PAD_VALUE)


def _input_device(model) -> torch.device:
    """Where a batch goes: the model's `device` attribute when it has one (an ONNX Runtime backend of
    `kqa.inference.runtimes` has no parameters), else the device of its first parameter."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@torch.no_grad()
def predict_logits(
    model, dataloader, width: int, *, accelerator=None, desc: str = "predict", disable_tqdm: bool = False
) -> FeatureLogits:
    """Run `model` over an evaluation loader (batches in feature order).

    With an `accelerator` the loader is a prepared (sharded) one and the logits of all processes are
    gathered without duplicates (`gather_for_metrics`); without one the batches are moved to the model's
    device. `width` (the feature config's `max_seq_length`) is the same on every process.
    """
    model.eval()
    device = None if accelerator is not None else _input_device(model)
    show = not disable_tqdm and (accelerator is None or accelerator.is_local_main_process)
    starts, ends, losses = [], [], []
    for batch in tqdm(dataloader, desc=desc, disable=not show, leave=False):
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        start, end = _pad(out.start_logits, width), _pad(out.end_logits, width)
        loss = None if out.loss is None else out.loss.detach().float().repeat(len(start))
        if accelerator is not None:
            start, end = accelerator.gather_for_metrics((start, end))
            loss = None if loss is None else accelerator.gather_for_metrics(loss)
        starts.append(start.cpu().numpy())
        ends.append(end.cpu().numpy())
        if loss is not None:
            losses.append(loss.cpu())
    if not starts:
        empty = np.zeros((0, width), dtype=np.float32)
        return FeatureLogits(empty, empty.copy(), None)
    mean_loss = float(torch.cat(losses).mean()) if losses else None
    return FeatureLogits(np.concatenate(starts), np.concatenate(ends), mean_loss)


def predict_answers(
    model,
    prediction_set: PredictionSet,
    settings: PredictionSettings,
    *,
    accelerator=None,
    decode: Optional[Callable] = None,
    disable_tqdm: bool = False,
) -> tuple[dict[str, ExamplePrediction], FeatureLogits]:
    """Logits of every feature of the set, decoded into the answer of every example (keyed by id)."""
    logits = predict_logits(
        model,
        prediction_set.dataloader,
        settings.features.max_seq_length,
        accelerator=accelerator,
        desc=f"predict {prediction_set.name}",
        disable_tqdm=disable_tqdm,
    )
    if len(logits.start) != len(prediction_set.features):
        raise RuntimeError(
            f"{prediction_set.name}: got logits for {len(logits.start)} features, "
            f"expected {len(prediction_set.features)}"
        )
    decode = decode or decode_answers
    predictions = decode(
        prediction_set.examples, prediction_set.features, logits.start, logits.end, settings.postprocess
    )
    return predictions, logits


def predict_and_score(
    model,
    prediction_set: PredictionSet,
    settings: PredictionSettings,
    *,
    accelerator=None,
    decode: Optional[Callable] = None,
    metric: Optional[Callable] = None,
    disable_tqdm: bool = False,
) -> SetEvaluation:
    """`predict_answers`, then the official metric against the set's gold answers."""
    predictions, logits = predict_answers(
        model, prediction_set, settings, accelerator=accelerator, decode=decode, disable_tqdm=disable_tqdm
    )
    result = (metric or score_predictions)(prediction_set.examples, {k: p.text for k, p in predictions.items()})
    v2 = score_v2_predictions(prediction_set.examples, predictions, settings.postprocess)
    return SetEvaluation(predictions=predictions, result=result, loss=logits.loss, v2=v2)


def score_v2_predictions(
    examples: Any, predictions: dict[str, ExamplePrediction], postprocess: PostprocessConfig
) -> Optional[SquadV2Result]:
    """SQuAD 2.0-style scores (`kqa.metric_v2`, KorQuAD normalisation) of decoded predictions, or None
    when every question of `examples` has an answer. With null scores (SQuAD 2.0 mode) the threshold
    search runs over each question's best span and its null odds, and `exact`/`f1` apply the
    post-processor's own `null_score_diff_threshold`: the same answers as `.text`, but the search can
    also find that a higher threshold (answering more) is better."""
    questions, groups = examples_questions(examples, BREAKDOWN_COLUMNS)
    if not has_unanswerable(questions):
        return None
    if all(p.null_score is None for p in predictions.values()):
        return score_v2(questions, {k: p.text for k, p in predictions.items()}, None, groups)
    spans = {k: p.nbest[0].text if p.nbest else "" for k, p in predictions.items()}
    odds = {k: p.null_odds for k, p in predictions.items()}
    return score_v2(questions, spans, odds, groups, na_prob_thresh=postprocess.null_score_diff_threshold)
