"""The feature cache: features of in-memory examples are written once, to a file named by the content
of the examples, the tokenizer, the settings and the code that shapes features, and read back on the
next run (`datasets` caches maps over file-backed datasets only)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

# The modules whose code shapes features: any change to them is a cache miss, not stale features.
FEATURE_CODE_FILES = ("features.py", "spans.py", "text.py")


def feature_cache_dir() -> Path:
    """Where features of in-memory examples are cached: $KQA_CACHE_DIR/features, else under the
    `datasets` cache (HF_DATASETS_CACHE)."""
    import datasets

    root = os.environ.get("KQA_CACHE_DIR")
    return Path(root) / "features" if root else Path(datasets.config.HF_DATASETS_CACHE) / "kqa" / "features"


def in_memory_cache_file(
    examples, tokenizer, config, with_labels: bool, with_offsets: bool, keep_token_types: bool
) -> str:
    """A cache file named by the content of the examples, the tokenizer, the settings and the code.

    Examples loaded from JSON live in memory, and `datasets` caches only maps over file-backed
    datasets; naming the output file by a content digest gives in-memory examples the same
    "tokenise once" behaviour across runs.
    """
    digest = hashlib.sha256()
    columns = [c for c in ("id", "question", "context", "answers", "is_impossible") if c in examples.column_names]
    table = examples.select_columns(columns).with_format("arrow")[:]
    digest.update(json.dumps(table.to_pydict(), ensure_ascii=False).encode())
    _update_with_settings(digest, tokenizer, (config, with_labels, with_offsets, keep_token_types))
    cache_dir = feature_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = "eval" if with_offsets else "train"
    return str(cache_dir / f"{kind}-{digest.hexdigest()[:40]}.arrow")


def file_backed_fingerprint(
    examples, tokenizer, config, with_labels: bool, with_offsets: bool, keep_token_types: bool
) -> str:
    """The fingerprint that names the cached features of file-backed examples: `datasets`' fingerprint of
    the examples, the tokenizer, the settings and the code. Left to itself, `datasets` hashes the tokenizer
    with dill, and with transformers 4.45-4.56 those bytes hold the truncation state the last call left:
    every second call would be a cache miss."""
    digest = hashlib.sha256(examples._fingerprint.encode())
    _update_with_settings(digest, tokenizer, (config, with_labels, with_offsets, keep_token_types))
    return digest.hexdigest()[:40]


def _update_with_settings(digest, tokenizer, settings: tuple) -> None:
    digest.update(type(tokenizer).__name__.encode())
    digest.update(_tokenizer_digest(tokenizer.backend_tokenizer).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update(repr((*settings, code_digest())).encode())


def _tokenizer_digest(backend) -> str:
    """A digest of a `tokenizers.Tokenizer`'s serialised form without its truncation and padding, which
    are per-call state the backend keeps from the last call, not identity. The state is switched off
    for the serialisation and put back: hashing the string is ~10x cheaper than parsing the JSON
    (17 MB for an XLM-R vocabulary) to drop two keys."""
    truncation, padding = backend.truncation, backend.padding
    try:
        backend.no_truncation()
        backend.no_padding()
        return hashlib.sha256(backend.to_str().encode()).hexdigest()
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


@functools.cache
def code_digest() -> str:
    """A digest of the code that shapes features. `datasets` fingerprints a map function by its own
    bytecode only, not the functions it calls; passing this digest as an argument makes any change to
    `FEATURE_CODE_FILES` or to the tokenizer libraries a cache miss instead of stale features."""
    import tokenizers
    import transformers

    digest = hashlib.sha256()
    for name in FEATURE_CODE_FILES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    digest.update(f"tokenizers={tokenizers.__version__} transformers={transformers.__version__}".encode())
    return digest.hexdigest()
