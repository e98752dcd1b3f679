"""Model weights on disk: safetensors only (pickle-based `.bin` files can run code when loaded), single
or sharded, loaded into a `QuestionAnsweringModel` only on an exact match, and the settings file saved
beside them (`kqa_config.json`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("kqa.modeling")  # the model's logger: loading is part of the model's story

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
KQA_CONFIG_FILE = "kqa_config.json"
# Weight files another writer may have left in a directory we save into; a loader could pick them up
# instead of (or besides) ours, so they are removed before saving.
STALE_WEIGHT_PATTERNS = (
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    WEIGHTS_INDEX_FILE,
    "model-*-of-*.safetensors",
)
PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def load_kqa_config(model_dir: str | Path) -> dict[str, Any]:
    """The settings saved with a model (`kqa_config.json`), or `{}` for a directory without one (e.g. a
    `transformers` QA checkpoint): callers fall back to their defaults."""
    path = Path(model_dir) / KQA_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def find_weight_files(model_dir: Path) -> list[Path]:
    """`model.safetensors`, or the shards a `model.safetensors.index.json` lists."""
    single = model_dir / WEIGHTS_FILE
    if single.is_file():
        return [single]
    index = model_dir / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index (expected a 'weight_map' object): {err}") from err
        shards = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) that do not exist: {missing}")
        return shards
    pickles = sorted({p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    if pickles:
        raise ValueError(
            f"{model_dir}: found only pickle-based weights ({', '.join(pickles)}) and no {WEIGHTS_FILE}. "
            f"Only safetensors weights are loaded, because unpickling can run arbitrary code. If you trust "
            f"the files, convert them once, e.g. "
            f"transformers.AutoModelForQuestionAnswering.from_pretrained(dir).save_pretrained(dir)"
        )
    raise FileNotFoundError(f"{model_dir}: no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE})")


def read_safetensors(files: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of `files`, plus the names save_model dropped for shared tensors → the name it kept."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        aliases.update({k: v for k, v in metadata.items() if k != "format"})
    return state, aliases


def load_state(model: nn.Module, state: dict[str, torch.Tensor], aliases: dict[str, str], source: Path) -> None:
    """Copy `state` into `model` (a `QuestionAnsweringModel`), accepting only a complete, exact match (up to
    shared tensors)."""
    expected = model.state_dict()
    if not any(key.startswith("qa_outputs.") for key in state):
        raise ValueError(
            f"{source}: the weights have no qa_outputs.* (span head) tensors; this looks like an encoder "
            f"checkpoint. Start from it with QuestionAnsweringModel.from_backbone({str(source)!r})"
        )
    prefix = model.backbone_prefix
    non_persistent = {name for name, _ in model.named_buffers()} - set(expected)
    pooler = sorted(k for k in state if k not in expected and k.startswith(f"{prefix}.pooler."))
    unexpected = sorted(k for k in state if k not in expected and k not in pooler and k not in non_persistent)
    if unexpected:
        raise ValueError(
            f"{source}: weights that {type(model.backbone).__name__} has no place for: {preview_names(unexpected)}"
        )
    if pooler:
        # Older checkpoints carry an encoder pooler; a span head never uses it.
        logger.warning("%s: ignoring %d unused pooler tensor(s): %s", source, len(pooler), preview_names(pooler))
    state = {k: v for k, v in state.items() if k in expected}
    for name in expected:
        if name not in state and aliases.get(name) in state:
            state[name] = state[aliases[name]]  # a shared tensor stored once under another name
    missing = set(expected) - set(state)
    loaded_storage = {expected[k].data_ptr() for k in state}
    # Tensors the architecture itself ties to a loaded one are filled by loading that one.
    missing = sorted(k for k in missing if expected[k].data_ptr() not in loaded_storage)
    if missing:
        raise ValueError(f"{source}: weights missing for {preview_names(missing)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{source}: {name} has shape {list(tensor.shape)}, the model built from config.json "
                f"expects {list(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)


def preview_names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def remove_stale_weights(directory: Path) -> None:
    stale = sorted({p for pattern in STALE_WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()})
    for path in stale:
        path.unlink()
    if stale:
        logger.warning(
            "%s: removed old weight file(s) that would shadow the new %s: %s",
            directory,
            WEIGHTS_FILE,
            ", ".join(p.name for p in stale),
        )


def write_weights(model: nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """`model`'s tensors (or a gathered `state_dict` of it) as one safetensors file."""
    from safetensors.torch import save_file, save_model

    # save_model drops duplicate names of shared tensors (safetensors stores each tensor once) and
    # records them in the metadata; "format": "pt" is what transformers' loader requires.
    if state_dict is None:
        save_model(model, str(path), metadata={"format": "pt"})
    else:
        tensors, aliases = distinct_tensors(state_dict, expected=model.state_dict().keys(), source=path.parent)
        save_file(tensors, str(path), metadata={**aliases, "format": "pt"})


def distinct_tensors(
    state_dict: dict[str, torch.Tensor],
    expected,
    source: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A gathered state dict as safetensors stores it: every name of this model present, each storage once
    (a shared tensor keeps its first name and the others are recorded as aliases, as `save_model` does),
    contiguous, on the CPU."""
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(
            f"{source}: the state dict to save lacks {preview_names(missing)} (was it gathered from every shard?)"
        )
    kept_by_storage: dict[tuple[int, int], str] = {}
    tensors, aliases = {}, {}
    for name in sorted(state_dict):
        tensor = state_dict[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else (id(tensor), 0)
        if key in kept_by_storage:
            aliases[name] = kept_by_storage[key]
            continue
        kept_by_storage[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, aliases
