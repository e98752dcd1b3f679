"""What a training run publishes: the model card of best/ and final/ (`run_card_info`: the run's base model,
data, settings and the scores at the saved step) and the upload to the Hub (`push_saved_model`:
`push_to_hub`, `hub_model_id`, `hub_private`, `hub_token`, `hub_strategy`). Only the main process pushes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from kqa.hub import is_hub_id
from kqa.model_card import DevScore, ModelCardInfo, base_model_license
from kqa.publish import HubPushError, push_model_dir
from kqa.training.config import TrainConfig

logger = logging.getLogger(__name__)

CARD_SETTINGS = (
    "max_seq_length",
    "doc_stride",
    "max_query_length",
    "max_answer_length",
    "n_best_size",
    "version_2_with_negative",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "layer_lr_decay",
    "freeze_word_embeddings",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "num_train_epochs",
    "max_train_steps",
    "max_grad_norm",
    "optim",
    "mixed_precision",
    "attention_dropout",
    "seed",
)
"""The TrainConfig settings a card lists (never `hub_token`: `TrainConfig.to_flat_dict` holds no token)."""


def data_sources(config: TrainConfig) -> tuple[list[str], dict[str, tuple[str, Optional[str]]]]:
    """The training data (hub dataset id, or file names) and each validation set's (data, split)."""
    if config.train_files:
        train = [Path(path).name for path in config.train_files]
    else:
        train = [config.dataset_name]
    if config.validation_files:
        dev = {name: (path.name, None) for name, path in config.named_validation_files().items()}
    elif config.dataset_name:
        dev = {"validation": (config.dataset_name, config.validation_split)}
    else:
        dev = {}
    return train, dev


def run_card_info(
    config: TrainConfig, directory: Path, metrics: Optional[dict[str, float]], num_processes: int = 1
) -> ModelCardInfo:
    """The card of best/ or final/ (`directory`) with `metrics`, the evaluation at its step (None: none)."""
    train, dev = data_sources(config)
    metrics = metrics or {}
    scores = tuple(
        DevScore(name, data, metrics[f"{name}/exact_match"], metrics[f"{name}/f1"], split)
        for name, (data, split) in dev.items()
        if f"{name}/f1" in metrics
    )
    base = config.model_name_or_path
    flat = config.to_flat_dict()
    return ModelCardInfo(
        model_name=(config.hub_model_id or Path(config.output_dir).name).rpartition("/")[2],
        base_model=base if is_hub_id(base) else None,
        base_model_source=base,
        license=config.model_license or base_model_license(base),
        datasets=tuple(dict.fromkeys([*train, *(data for data, _ in dev.values())])),
        dev_scores=scores,
        step=metrics.get("step"),
        settings={**{name: flat[name] for name in CARD_SETTINGS}, "num_processes": num_processes},
        load_from=config.hub_model_id if config.push_to_hub else str(directory),
    )


def push_saved_model(accelerator, config: TrainConfig, saved: Path, best_dir: Optional[Path]) -> Optional[str]:
    """After best/ or final/ (`saved`) was written: push when the configuration asks for it, from the main
    process. The end of the run (final/ written) pushes best/ when the run has one (`best_dir`; None when it
    never selected a best model), else final/; with
    `hub_strategy: best` each new best/ is pushed too, and a failure there is a warning (the run goes on and
    pushes again at its end); at the end it raises `HubPushError`. Returns the commit URL, or None."""
    at_end = saved != best_dir
    if not (config.push_to_hub and accelerator.is_main_process) or not (at_end or config.hub_strategy == "best"):
        return None
    model_dir = best_dir if at_end and best_dir is not None else saved
    try:
        return push_model_dir(
            model_dir,
            config.hub_model_id,
            private=config.hub_private,
            token=config.hub_token,
            commit_message=f"{'End of training' if at_end else 'New best model'}: {model_dir.name}/ with kqa",
        )
    except HubPushError as err:
        if at_end:
            raise
        logger.warning("%s; training goes on, and the end of the run pushes again", err)
        return None
