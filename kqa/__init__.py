"""kqa: Korean extractive question answering with explicit, swappable stages.

Heavy modules (torch, transformers, datasets) load on first use: `import kqa` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_squad_json": "kqa.data",
    "load_hf_dataset": "kqa.data",
    "load_examples": "kqa.data",
    "LoadReport": "kqa.data",
    "DataValidationError": "kqa.data",
    "FeatureConfig": "kqa.features",
    "prepare_train_features": "kqa.features",
    "prepare_eval_features": "kqa.features",
    "QACollator": "kqa.dataloaders",
    "QuestionAnsweringModel": "kqa.modeling",
    "PostprocessConfig": "kqa.postprocess",
    "decode_answers": "kqa.postprocess",
    "score_predictions": "kqa.metric",
    "PredictionSettings": "kqa.prediction",
    "TrainConfig": "kqa.training.config",
    "QATrainingRecipe": "kqa.training.recipe",
    "QuestionAnswerer": "kqa.inference",
    "Answer": "kqa.inference",
    "QuestionAnsweringPipeline": "kqa.inference",
    "pipeline": "kqa.inference",
    "Retriever": "kqa.retrieval",
    "RetrieveAndRead": "kqa.retrieval",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kqa' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from kqa.data import DataValidationError, LoadReport, load_examples, load_hf_dataset, load_squad_json
    from kqa.dataloaders import QACollator
    from kqa.features import FeatureConfig, prepare_eval_features, prepare_train_features
    from kqa.inference import Answer, QuestionAnswerer, QuestionAnsweringPipeline, pipeline
    from kqa.metric import score_predictions
    from kqa.modeling import QuestionAnsweringModel
    from kqa.postprocess import PostprocessConfig, decode_answers
    from kqa.prediction import PredictionSettings
    from kqa.retrieval import RetrieveAndRead, Retriever
    from kqa.training.config import TrainConfig
    from kqa.training.recipe import QATrainingRecipe
