"""The examples a `TrainConfig` names: the train set (SQuAD files, concatenated, or a hub split) and each
validation set, kept apart (files, or the hub dataset's validation split)."""

from __future__ import annotations

from typing import Any

from kqa.data import load_hf_dataset, load_squad_json
from kqa.training.config import TrainConfig


def load_train_examples(cfg: TrainConfig):
    import datasets

    if cfg.train_files:
        parts = [load_squad_json(cfg.resolve_data_path(path))[0] for path in cfg.train_files]
        examples = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    else:
        examples, _ = load_hf_dataset(cfg.dataset_name, cfg.train_split, config_name=cfg.dataset_config_name)
    if cfg.max_train_samples is not None:
        examples = examples.select(range(min(cfg.max_train_samples, len(examples))))
    return examples


def load_validation_examples(cfg: TrainConfig) -> dict[str, Any]:
    """{set name: examples}; empty when the config names no validation data."""
    if cfg.validation_files:
        sets = {name: load_squad_json(path)[0] for name, path in cfg.named_validation_files().items()}
    elif cfg.dataset_name:
        split, _ = load_hf_dataset(cfg.dataset_name, cfg.validation_split, config_name=cfg.dataset_config_name)
        sets = {"validation": split}
    else:
        sets = {}
    if cfg.max_eval_samples is not None:
        sets = {k: v.select(range(min(cfg.max_eval_samples, len(v)))) for k, v in sets.items()}
    return sets
