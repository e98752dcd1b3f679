"""Upload a saved model directory (best/, final/) to the Hugging Face Hub: `push_model_dir`, the one place
that calls `huggingface_hub`'s upload (`kqa push` and `TrainConfig.push_to_hub` both come here).

The directory is checked first: a model directory (config.json, safetensors weights, a tokenizer), no
pickle files, a card (written when missing). What is uploaded is listed file by file (`upload_files`):
the model, tokenizer, `kqa_config.json`, `metrics.json`, the card and any code files of the encoder;
not the dev-set predictions, hidden files or anything else a run leaves beside them."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Optional

from kqa.model_card import CARD_FILE, card_info_from_model_dir, write_model_card
from kqa.weights import PICKLE_WEIGHT_PATTERNS, WEIGHTS_FILE, WEIGHTS_INDEX_FILE

logger = logging.getLogger(__name__)

# Any one of these makes a tokenizer: the fast tokenizer's JSON, or a slow tokenizer's vocabulary (WordPiece,
# SentencePiece as XLM-R / DeBERTa-v2 / T5 / ALBERT name it, byte-level BPE).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spm.model",
    "spiece.model",
    "vocab.json",
)
PICKLE_PATTERNS = (*PICKLE_WEIGHT_PATTERNS, "*.pickle", "*.pkl.gz")
NOT_UPLOADED = ("predictions/*", ".*", "*/.*")
"""Dev-set predictions (large, and not the model) and hidden files (caches, temporary files)."""


class HubPushError(OSError):
    """The Hub refused or could not be reached; the message names the directory, the repository and why."""


def upload_files(model_dir: Path) -> list[str]:
    """The files of `model_dir` that an upload sends (relative POSIX paths, sorted), after checking that it
    is a model directory with safetensors weights, a tokenizer and no pickle files."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(
            f"{model_dir}: not a saved model directory (no config.json); push best/ or final/ of a run, "
            "not the run directory or a training checkpoint"
        )
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    pickles = [f for f in files if any(fnmatch.fnmatch(Path(f).name, pat) for pat in PICKLE_PATTERNS)]
    if pickles:
        raise ValueError(
            f"{model_dir}: refusing to upload pickle files ({', '.join(pickles)}): loading them can run code; "
            "save the weights as safetensors"
        )
    if WEIGHTS_FILE not in files and WEIGHTS_INDEX_FILE not in files:
        raise ValueError(f"{model_dir}: no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}): no weights to upload")
    if not any(name in files for name in TOKENIZER_FILES):
        raise ValueError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, …)")
    return [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in NOT_UPLOADED)]


def push_model_dir(
    model_dir: Path,
    repo_id: str,
    *,
    private: bool = False,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
) -> str:
    """Create `repo_id` if needed and upload the model directory to it (to branch `revision`, created if
    missing). `token` None: huggingface_hub's own (HF_TOKEN, or `hf auth login`). Returns the commit's URL."""
    from huggingface_hub import HfApi

    model_dir = Path(model_dir)
    if not (model_dir / CARD_FILE).is_file():
        upload_files(model_dir)  # check before writing into it
        write_model_card(model_dir, card_info_from_model_dir(model_dir, load_from=repo_id))
        logger.info("%s had no model card: wrote %s", model_dir, model_dir / CARD_FILE)
    files = upload_files(model_dir)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            allow_patterns=files,
            revision=revision,
            commit_message=commit_message or f"Upload {model_dir.name} with kqa",
        )
    except Exception as err:  # noqa: BLE001 (every failure of the Hub client becomes one line naming the repo)
        raise HubPushError(_push_failure(model_dir, repo_id, err, token)) from err
    url = str(getattr(commit, "commit_url", None) or commit)
    logger.info("pushed %s (%d files) to %s: %s", model_dir, len(files), repo_id, url)
    return url


def _push_failure(model_dir: Path, repo_id: str, err: Exception, token: Optional[str]) -> str:
    lines = str(err).strip().splitlines() or [""]
    reason = f"{type(err).__name__}: {lines[0]}".rstrip(": ")
    if token:
        reason = reason.replace(token, "***")
    return f"could not push {model_dir} to the Hub repository {repo_id}: {reason}"
