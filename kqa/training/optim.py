"""The optimizer and the learning-rate schedule of the recipe: AdamW with weight-decay groups
and optional layer-wise learning-rate decay; warmup then linear, cosine or constant."""

from __future__ import annotations

import logging
import math
import re

import torch

from kqa.training.config import TrainConfig

logger = logging.getLogger(__name__)


_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay: 0 for embeddings, i + 1 for encoder
    layer i, num_layers + 1 for everything above the last layer (final norms, the span head)."""
    match = _LAYER_INDEX.search(f".{name}")
    if match:
        return int(match.group(1)) + 1
    if "embed" in name.lower():
        return 0
    return num_layers + 1


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights get no weight decay. With `layer_lr_decay` < 1, each layer's
    learning rate is the one above it times the decay: the head trains at `learning_rate`, the last
    encoder layer at lr·decay, ..., the embeddings at lr·decay^(layers + 1)."""
    layer_numbers = [int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_INDEX.search(f".{name}"))]
    num_layers = max(layer_numbers, default=-1) + 1
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "layernorm" in name.lower() or "layer_norm" in name.lower() or ".ln" in name.lower()
        depth = layer_depth(name, num_layers) if config.layer_lr_decay != 1.0 else num_layers + 1
        groups.setdefault((depth, name.endswith(".bias") or is_norm), []).append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
            "lr": config.learning_rate * config.layer_lr_decay ** (num_layers + 1 - depth),
        }
        for (depth, no_decay), params in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))
    ]
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if config.optim == "adamw_torch_fused":
        # One fused kernel instead of a chain of for-each ops: on 2 CPU cores the optimizer step of a
        # 7M-parameter model drops from ~30 ms to ~10 ms (docs/benchmarks.md, training throughput).
        try:
            return torch.optim.AdamW(param_groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as err:  # older torch: no fused AdamW on this device
            logger.warning("fused AdamW is not available here (%s); using the for-each AdamW", err)
    return torch.optim.AdamW(param_groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, num_training_steps: int):
    """Linear warmup, then linear / cosine decay to 0 (or constant)."""
    warmup = config.warmup_steps if config.warmup_steps > 0 else math.ceil(config.warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # never exactly 0: the first step already learns a little
        if config.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - warmup) / max(1, num_training_steps - warmup)
        progress = min(progress, 1.0)
        if config.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def schedule_length(train_batches: int, num_processes: int, config: TrainConfig) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, epochs) for a train loader of `train_batches` batches,
    counted as each process sees it after sharding."""
    batches_per_epoch = math.ceil(train_batches / num_processes)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / config.gradient_accumulation_steps))
    if config.max_train_steps is not None:
        total_steps = config.max_train_steps
    else:
        total_steps = math.ceil(config.num_train_epochs * steps_per_epoch)
    return steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch)
