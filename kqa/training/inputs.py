"""The examples a `TrainConfig` names: the train set (data files, concatenated, or a hub split) and each
validation set, kept apart (files, or the hub dataset's validation split)."""

from __future__ import annotations

import logging
from typing import Any

from kqa.data import EXAMPLE_FEATURES, load_data_file, load_hf_dataset
from kqa.negatives import add_negatives
from kqa.training.config import TrainConfig, negative_settings

logger = logging.getLogger(__name__)


def _hub_split(cfg: TrainConfig, split: str):
    examples, _ = load_hf_dataset(
        cfg.dataset_name,
        split,
        config_name=cfg.dataset_config_name,
        revision=cfg.dataset_revision,
        columns=cfg.column_mapping or None,
    )
    return examples


def load_train_examples(cfg: TrainConfig):
    import datasets

    if cfg.train_files:
        parts = [
            load_data_file(cfg.resolve_data_path(p), columns=cfg.column_mapping or None)[0] for p in cfg.train_files
        ]
        # Training reads only the schema; files of different schemas concatenate on it.
        parts = [part.select_columns(list(EXAMPLE_FEATURES)) for part in parts]
        examples = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    else:
        examples = _hub_split(cfg, cfg.train_split)
    if cfg.max_train_samples is not None:
        examples = examples.select(range(min(cfg.max_train_samples, len(examples))))
    if cfg.negative_ratio:
        examples = _with_negatives(cfg, examples)
    return examples


def _with_negatives(cfg: TrainConfig, examples):
    """The train set with its negatives (`kqa.negatives`), the report's summary and drops logged."""
    source = "train set (" + ", ".join(cfg.train_files or [f"{cfg.dataset_name}:{cfg.train_split}"]) + ")"
    examples, report = add_negatives(examples, negative_settings(cfg), source=source)
    logger.info(report.summary())
    for line in report.problem_lines():
        logger.info(line)
    return examples


def load_validation_examples(cfg: TrainConfig) -> dict[str, Any]:
    """{set name: examples}, with the columns each source carries (e.g. KLUE-MRC's question_type, which
    the scores are broken down by); empty when the config names no validation data."""
    if cfg.validation_files:
        columns = cfg.column_mapping or None
        sets = {name: load_data_file(path, columns=columns)[0] for name, path in cfg.named_validation_files().items()}
    elif cfg.dataset_name:
        sets = {"validation": _hub_split(cfg, cfg.validation_split)}
    else:
        sets = {}
    if cfg.max_eval_samples is not None:
        sets = {k: v.select(range(min(cfg.max_eval_samples, len(v)))) for k, v in sets.items()}
    return sets
