"""`open_index`: the one place a saved index directory is opened, whichever backend built it — the default
in-process `Retriever` or the Milvus-backed `MilvusStore` — chosen by the `format` of its index.json."""

from __future__ import annotations

import json
from pathlib import Path


def index_format(directory: str | Path) -> str | None:
    """The `format` an index.json names (None when it is missing or unreadable: `Retriever.load` says why)."""
    try:
        manifest = json.loads((Path(directory) / "index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def open_index(directory: str | Path, **kwargs):
    """`Retriever.load` or `MilvusStore.load` (same keyword arguments: embedder, method, device)."""
    from kqa.retrieval.milvus_store import MANIFEST_FORMAT

    if index_format(directory) == MANIFEST_FORMAT:
        from kqa.retrieval.milvus_store import MilvusStore

        return MilvusStore.load(directory, **kwargs)
    from kqa.retrieval.retriever import Retriever

    return Retriever.load(directory, **kwargs)
