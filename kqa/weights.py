"""Model weights on disk: safetensors (single or sharded), or `pytorch_model.bin` (single or sharded) only when
the caller opts in (`allow_bin_weights`: a pickle can run code when loaded, so it is read with
`torch.load(weights_only=True)` and never by default), loaded into a `QuestionAnsweringModel` only on an
exact match, and the settings file saved beside them (`kqa_config.json`)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

logger = logging.getLogger("kqa.modeling")  # the model's logger: loading is part of the model's story

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
KQA_CONFIG_FILE = "kqa_config.json"
SAFETENSORS_SHARDS = "model-*-of-*.safetensors"
PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
BIN_WEIGHTS_FILE = "pytorch_model.bin"
BIN_WEIGHTS_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SHARDS = "pytorch_model-*-of-*.bin"
# The files of each kind of weights as hub downloads ask for them (kqa.hub): safetensors always, `.bin` only
# for a repository without safetensors and with the opt-in.
SAFETENSORS_WEIGHT_PATTERNS = (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, SAFETENSORS_SHARDS)
BIN_WEIGHT_PATTERNS = (BIN_WEIGHTS_FILE, BIN_WEIGHTS_INDEX_FILE, BIN_SHARDS)
# Weight files another writer may have left in a directory we save into; a loader could pick them up
# instead of (or besides) ours, so they are removed before saving: every kind but our own model.safetensors.
STALE_WEIGHT_PATTERNS = ("pytorch_model*.bin", BIN_WEIGHTS_INDEX_FILE, WEIGHTS_INDEX_FILE, SAFETENSORS_SHARDS)
# How the opt-in is spelled, for error messages (the flag of kqa.flags.add_hub_flags, the keyword of
# from_pretrained).
BIN_OPT_IN = "--allow_bin_weights / allow_bin_weights=True"


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


def find_weight_files(model_dir: Path, *, allow_bin: bool = False) -> list[Path]:
    """`model.safetensors`, or the shards a `model.safetensors.index.json` lists; with `allow_bin` and no
    safetensors, `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json`."""
    found = _indexed_or_single(model_dir, WEIGHTS_FILE, WEIGHTS_INDEX_FILE)
    if found:
        return found
    if allow_bin:
        found = _indexed_or_single(model_dir, BIN_WEIGHTS_FILE, BIN_WEIGHTS_INDEX_FILE)
        if found:
            return found
    pickles = sorted({p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    if pickles and not allow_bin:
        raise ValueError(
            f"{model_dir}: found only pickle-based weights ({', '.join(pickles)}) and no {WEIGHTS_FILE}. "
            f"Only safetensors weights are loaded by default, because unpickling can run arbitrary code. If you "
            f"trust the files, load them with {BIN_OPT_IN} (read with torch.load(weights_only=True)), or "
            f"convert them once, e.g. "
            f"transformers.AutoModelForQuestionAnswering.from_pretrained(dir).save_pretrained(dir)"
        )
    raise FileNotFoundError(
        f"{model_dir}: no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE}"
        + (f", {BIN_WEIGHTS_FILE}, {BIN_WEIGHTS_INDEX_FILE})" if allow_bin else ")")
    )


def _indexed_or_single(model_dir: Path, single_name: str, index_name: str) -> list[Path]:
    """`[single]`, the shards `index` lists, or `[]` when neither file is there."""
    single = model_dir / single_name
    if single.is_file():
        return [single]
    index = model_dir / index_name
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index}: not a weights index (expected a 'weight_map' object): {err}") from err
    shards = [model_dir / name for name in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"{index} lists shard(s) that do not exist: {missing}")
    return shards


def read_weights(files: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of the files `find_weight_files` found: safetensors, or `.bin` (found only with the opt-in)."""
    if all(path.suffix == ".safetensors" for path in files):
        return read_safetensors(files)
    return read_bin(files), {}


def read_bin(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors of `pytorch_model*.bin` files: `weights_only=True` unpickles tensors and plain containers only
    (no arbitrary objects, no code), memory-mapped where the file format allows it."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (pre-zip) file cannot be memory-mapped
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors: say which file
            raise ValueError(f"{path}: not a weights-only PyTorch file ({err})") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ValueError(f"{path}: expected a state dict (names → tensors), got {type(loaded).__name__}")
        state.update(loaded)
    return state


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


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    aliases: dict[str, str],
    source: Path | str,
    start_from: Optional[str] = None,
) -> None:
    """Copy `state` into `model` (a `QuestionAnsweringModel`), accepting only a complete, exact match (up to
    shared tensors). `source` names the weights in errors; `start_from` is how the user names the model (a
    hub id or a directory; default `source`), for the advice to train an encoder first."""
    expected = model.state_dict()
    if not any(key.startswith("qa_outputs.") for key in state):
        name = start_from or str(source)
        raise ValueError(
            f"{source}: the weights have no qa_outputs.* (span head) tensors: this is an encoder without a "
            f"question-answering head, so it cannot answer questions yet. Train it first: "
            f"python train.py --model_name_or_path {name} ... (in Python, start from it with "
            f"QuestionAnsweringModel.from_backbone({name!r}))"
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
