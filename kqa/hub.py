"""Models by Hugging Face hub id: `resolve_model_dir` turns a hub id (`org/name`) into a local snapshot
directory through `huggingface_hub`'s own download code and cache, so that everything below the entry
points (inference, runtimes, prediction, modeling) takes a directory only.

`huggingface_hub` honours its own settings: `HF_TOKEN` or `hf auth login` when no token is given,
`HF_HUB_CACHE` / `HF_HOME` for the cache, `HF_HUB_OFFLINE=1` for cache-only look-ups.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from kqa.weights import BIN_WEIGHT_PATTERNS, SAFETENSORS_WEIGHT_PATTERNS, WEIGHTS_FILE, WEIGHTS_INDEX_FILE

# What a kqa model directory holds besides its weights: config.json, kqa_config.json, a safetensors index,
# tokenizer files (tokenizer.json, vocab.txt, merges.txt, sentencepiece *.model), a `kqa export` (model.onnx,
# its probes and export info) and the code files of a remote-code encoder (run only with trust_remote_code).
# Other frameworks' weights (TensorFlow, Flax) and pickles are never fetched unless asked for.
MODEL_FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.onnx", "*.py")
# `org/name` (or a canonical `name`) as the hub spells a repository; huggingface_hub validates it further.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(name: Optional[str | Path]) -> bool:
    """A hub repository id (`klue/bert-base`), not a path on this machine."""
    return bool(name) and not Path(name).expanduser().exists() and bool(_REPO_ID.match(str(name)))


def resolve_model_dir(
    name_or_path: str | Path,
    *,
    revision: Optional[str] = None,
    token: Optional[str | bool] = None,
    cache_dir: Optional[str | Path] = None,
    local_files_only: bool = False,
    allow_bin: bool = False,
) -> Path:
    """A local directory holding the model `name_or_path` names.

    An existing directory is returned as it is (`revision` and the other hub settings do not apply to
    it). A hub id is downloaded into the hub cache (or found there) at `revision` (default: main):
    safetensors weights only, plus `.bin` weights when the repository has no safetensors and `allow_bin`
    is set (loading them still needs `allow_bin_weights=True`). `token` None means huggingface_hub's own
    (`HF_TOKEN`, `hf auth login`); `local_files_only` or `HF_HUB_OFFLINE=1` looks in the cache only."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(
            f"{name!r} is neither an existing directory nor a hub id (org/name); give a saved model directory "
            f"(e.g. outputs/kqa/best) or a Hugging Face hub repository id (to start from a pretrained encoder, "
            f"train it: python train.py --model_name_or_path ..., or QuestionAnsweringModel.from_backbone)"
        )
    hub = dict(revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    snapshot = _download(name, patterns=(*MODEL_FILE_PATTERNS, *SAFETENSORS_WEIGHT_PATTERNS), **hub)
    if allow_bin and not _has_safetensors(snapshot):
        # Only now, so that a repository with both kinds never sends its pickles.
        snapshot = _download(name, patterns=(*MODEL_FILE_PATTERNS, *BIN_WEIGHT_PATTERNS), **hub)
    return snapshot


def _has_safetensors(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() or (directory / WEIGHTS_INDEX_FILE).is_file()


def _download(repo_id: str, *, patterns: tuple[str, ...], revision, token, cache_dir, local_files_only) -> Path:
    """`snapshot_download` with its errors said in kqa's terms: the repository, the revision and what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r} is no local directory; as hub id {repo_id}@{revision or 'main'}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only,
            allow_patterns=list(patterns),
        )
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither an existing directory nor a valid hub id: {err}") from None
    except LocalEntryNotFoundError:
        offline = "local_files_only=True (--local_files_only)" if local_files_only else "HF_HUB_OFFLINE=1"
        if not local_files_only and not constants.HF_HUB_OFFLINE:
            offline = "the hub could not be reached"
        cache = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"{where}: not in the hub cache ({cache}) and {offline}; download it once online "
            f"(unset HF_HUB_OFFLINE, drop --local_files_only) or give a local model directory"
        ) from None
    except GatedRepoError:
        raise PermissionError(
            f"{where}: a gated repository; accept its terms on the hub and log in (hf auth login, HF_TOKEN or --token)"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the repository has no such revision") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{where}: no such model repository on the hub (or a private one: log in with hf auth login, "
            f"HF_TOKEN or --token)"
        ) from None
    return Path(folder)


def hub_repo_of(directory: str | Path) -> Optional[str]:
    """The hub id a snapshot directory of the hub cache was downloaded as (`.../models--org--name/snapshots/
    <commit>`), or None for any other directory: errors then name the model as the user gave it."""
    parts = Path(directory).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--") :].replace("--", "/")
    return None


def describe_model_dir(directory: str | Path) -> str:
    """`org/name (path)` for a hub snapshot, the path for a local directory: the name in error messages."""
    repo = hub_repo_of(directory)
    return f"{repo} ({directory})" if repo else str(directory)
