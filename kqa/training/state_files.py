"""Training state as JSON and safetensors, never pickle: a checkpoint loads without running code.

`save_state_tree(tree, directory, stem)` writes a state dict (the optimizer's, the scheduler's, the RNG
states: nested dicts, lists, tuples, numbers, strings and tensors) as `<stem>.json`, its structure, and
`<stem>.safetensors`, its tensors, bit for bit; `load_state_tree` reads it back. In the JSON a tensor is
`{"__tensor__": name}` (its name in the safetensors file), a tuple `{"__tuple__": [...]}`, and a dict
whose keys are not all strings (the optimizer's per-parameter state) `{"__items__": [[key, value], ...]}`.
Anything else (an arbitrary object) is refused when saving: it could only be stored as a pickle.

`capture_rng_state(device)` / `restore_rng_state(state, device)`: this process's Python, NumPy, torch CPU
and CUDA device generators as such a tree.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
_TAGS = {TENSOR, TUPLE, ITEMS}
_SCALARS = (bool, int, float, str, type(None))


def _encode(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """`value` as JSON, its tensors moved into `tensors` under their path in the tree."""
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two tensors of the state are named {name!r}")
        tensors[name] = value.detach().to("cpu").contiguous()
        return {TENSOR: name}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(item, tensors, f"{name}.{i}") for i, item in enumerate(value)]
        return {TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and not value.keys() & _TAGS:
            return {key: _encode(item, tensors, f"{name}.{key}") for key, item in value.items()}
        if not all(isinstance(key, _SCALARS) for key in value):
            raise TypeError(f"{name}: dict keys must be strings or numbers to be stored without pickle")
        return {ITEMS: [[key, _encode(item, tensors, f"{name}.{key}")] for key, item in value.items()]}
    raise TypeError(f"{name}: a {type(value).__name__} cannot be stored without pickle")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(item, tensors) for item in node]
    if not isinstance(node, dict):
        return node
    if node.keys() == {TENSOR}:
        return tensors[node[TENSOR]]
    if node.keys() == {TUPLE}:
        return tuple(_decode(item, tensors) for item in node[TUPLE])
    if node.keys() == {ITEMS}:
        return {key: _decode(item, tensors) for key, item in node[ITEMS]}
    return {key: _decode(item, tensors) for key, item in node.items()}


def state_tree_files(stem: str) -> tuple[str, str]:
    """The two file names of a stored tree: its structure (JSON) and its tensors (safetensors)."""
    return f"{stem}.json", f"{stem}.safetensors"


def save_state_tree(tree: Any, directory: Path, stem: str) -> list[str]:
    """Write `tree` as `<stem>.json` (+ `<stem>.safetensors` when it holds tensors); the names written."""
    from safetensors.torch import save_file

    json_name, tensors_name = state_tree_files(stem)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors, stem)
    (directory / json_name).write_text(json.dumps(structure, indent=1) + "\n", encoding="utf-8")
    if not tensors:
        return [json_name]
    save_file(tensors, str(directory / tensors_name))
    return [json_name, tensors_name]


def load_state_tree(directory: Path, stem: str) -> Any:
    """Read what `save_state_tree` wrote; a file that does not parse is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_name, tensors_name = state_tree_files(stem)
    structure_file, tensors_file = directory / json_name, directory / tensors_name
    try:
        structure = json.loads(structure_file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{structure_file}: not valid JSON ({err})") from err
    try:
        tensors = load_file(str(tensors_file)) if tensors_file.is_file() else {}
    except SafetensorError as err:
        raise ValueError(f"{tensors_file}: not a readable safetensors file ({err})") from err
    try:
        return _decode(structure, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{structure_file}: does not match {tensors_name} ({err!r})") from err


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators: Python's, NumPy's, torch's CPU one and, on a CUDA `device`, that
    device's (the only one the process draws from; other accelerators' generators are not kept)."""
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    numpy_state = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
