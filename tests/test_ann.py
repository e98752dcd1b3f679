"""Approximate dense search (kqa/retrieval/ann.py): the HNSW graph against exact search, the threshold that
switches between them, the allowed-passage mask, save/load of the graph, and faiss reported missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kqa.extras import MissingExtraError
from kqa.retrieval import Document, Embedder, PassageSettings, Retriever, RetrieverSettings
from kqa.retrieval.ann import ANN_FILE, EXACT_BELOW_ALLOWED_FRACTION, AnnSettings
from kqa.retrieval.dense import DenseIndex
from kqa.testing import build_char_tokenizer, tiny_bert_config

pytest.importorskip("faiss")

DIM = 32


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters around a shared direction, as sentence embeddings are (not isotropic)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)) + 3.0
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _queries(vectors: np.ndarray, count: int = 30, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), count)] + 0.2 * rng.standard_normal((count, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _brute_force(vectors, queries, k, allowed=None) -> np.ndarray:
    """The k best allowed passages of each query, by sorting every score (independent of kqa's code)."""
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    k = min(k, len(vectors) if allowed is None else int(allowed.sum()))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _clustered(3000)


@pytest.fixture(scope="module")
def graph_index(vectors) -> DenseIndex:
    index = DenseIndex(vectors.copy(), ann=AnnSettings(mode="on", ef_search=512))
    assert index.build_graph() and index.search_kind == "hnsw"
    return index


def test_hnsw_with_a_high_ef_search_equals_exact_search(vectors, graph_index):
    queries = _queries(vectors)
    exact = DenseIndex(vectors, ann=AnnSettings(mode="off"))
    assert exact.search_kind == "exact" and not exact.build_graph()
    for k in (1, 10, 50):
        exact_ids, exact_scores = exact.search(queries, k)
        ids, scores = graph_index.search(queries, k)
        np.testing.assert_array_equal(exact_ids, _brute_force(vectors, queries, k))
        assert ids.shape == (len(queries), k)
        np.testing.assert_array_equal(ids, exact_ids)  # recall 1.0
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # the graph's vectors are the index's embeddings, held once
    np.testing.assert_array_equal(graph_index.embeddings, vectors)
    assert graph_index.embeddings.base is not None


def test_the_threshold_switches_the_search_kind():
    vectors = _clustered(300)
    settings = AnnSettings(threshold=300)
    assert [DenseIndex(vectors[:n], ann=settings).build_graph() for n in (299, 300)] == [False, True]
    assert DenseIndex(vectors[:10], ann=AnnSettings(mode="on")).build_graph()
    assert not DenseIndex(vectors, ann=AnnSettings(mode="off", threshold=1)).build_graph()
    assert DenseIndex(vectors).search_kind == "exact"  # the default threshold is far above 300
    with pytest.raises(ValueError, match="ann mode must be one of"):
        AnnSettings(mode="yes")
    with pytest.raises(ValueError, match="ann threshold must be a positive int"):
        RetrieverSettings(ann_threshold=0)


@pytest.mark.parametrize("fraction", [0.6, 0.1, 0.02, 0.001])
@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_the_allowed_mask_is_honoured(vectors, graph_index, kind, fraction):
    index = graph_index if kind == "hnsw" else DenseIndex(vectors, ann=AnnSettings(mode="off"))
    queries = _queries(vectors, seed=2)
    allowed = np.random.default_rng(3).random(len(vectors)) < fraction
    assert allowed.any()
    ids, scores = index.search(queries, 10, allowed)
    assert ids.shape == (len(queries), min(10, int(allowed.sum())))
    assert allowed[ids].all()  # never a disallowed passage
    truth = _brute_force(vectors, queries, 10, allowed)
    if kind == "exact" or fraction < EXACT_BELOW_ALLOWED_FRACTION:  # searched exactly: the allowed best ones
        np.testing.assert_array_equal(ids, truth)
    else:  # the graph skips disallowed passages as it walks: approximate, but finds nearly all of them
        found = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), truth.tolist())])
        assert found >= 0.98, found
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, ids, axis=1), atol=1e-5)


def test_an_empty_mask_finds_nothing_and_a_bad_mask_is_an_error(vectors, graph_index):
    queries = _queries(vectors, count=3)
    ids, scores = graph_index.search(queries, 5, np.zeros(len(vectors), dtype=bool))
    assert ids.shape == scores.shape == (3, 0)
    with pytest.raises(ValueError, match=r"allowed must be a boolean mask of shape \(3000,\)"):
        graph_index.search(queries, 5, np.ones(len(vectors)))
    with pytest.raises(ValueError, match="allowed must be a boolean mask"):
        graph_index.search(queries, 5, np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="k must be a positive int"):
        graph_index.search(queries, 0)


# --- in a Retriever: built, saved, loaded --------------------------------------------------------------

DOCS = {
    f"doc{i}.txt": text
    for i, text in enumerate(
        [
            "서울은 대한민국의 수도이다. 서울에는 한강이 흐르고 경복궁이 있다. 남산타워는 서울의 명소이다.",
            "부산은 대한민국에서 가장 큰 항구 도시이다. 해운대 해수욕장이 유명하다.",
            "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.",
            "아이작 뉴턴은 영국의 물리학자로 만유인력의 법칙을 발견하였다.",
            "제주도는 한국에서 가장 큰 섬이며 한라산과 감귤로 유명하다.",
            "이순신은 조선의 장군으로 한산도 대첩에서 승리하였다. 거북선이 유명하다.",
        ]
    )
}
QUERIES = ["훈민정음은 언제 반포되었나?", "해운대는 어느 도시에?", "한라산이 있는 섬은?", "거북선을 만든 장군은?"]
SMALL = PassageSettings(max_chars=30, overlap_chars=5)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    import torch
    from transformers import BertModel

    directory = tmp_path_factory.mktemp("encoder")
    tokenizer = build_char_tokenizer(["query: passage: ", *DOCS.values(), *QUERIES])
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Embedder.from_pretrained(directory, device="cpu")


def _documents() -> list[Document]:
    return [Document(id=k, title=Path(k).stem, text=v, source=k) for k, v in DOCS.items()]


def _ranking(retriever: Retriever, method: str, k: int = 5) -> list[list[tuple[int, float]]]:
    """(passage, score) of each query's hits; scores to 1e-4 (float32 sums in another order differ by ulps)."""
    hits = retriever.retrieve_many(QUERIES, k, method=method)
    return [[(h.passage.index, pytest.approx(h.score, abs=1e-4)) for h in one] for one in hits]


@pytest.mark.parametrize("method", ["dense", "hybrid"])
def test_a_retriever_with_the_graph_ranks_as_exact_search(embedder, method):
    built = {
        ann: Retriever.build(
            _documents(),
            RetrieverSettings(method=method, analyzer="bigrams", ann=ann, candidates=8),
            embedder=embedder,
            passage_settings=SMALL,
        )
        for ann in ("on", "off")
    }
    assert built["on"].dense.search_kind == "hnsw" and built["off"].dense.search_kind == "exact"
    assert "ann" in built["on"].info.build_seconds and "ann" not in built["off"].info.build_seconds
    assert _ranking(built["on"], method) == _ranking(built["off"], method)
    # auto: the threshold decides
    few = len(built["on"].passages)
    for threshold, kind in ((few, "hnsw"), (few + 1, "exact")):
        settings = RetrieverSettings(method=method, analyzer="bigrams", ann_threshold=threshold)
        retriever = Retriever.build(_documents(), settings, embedder=embedder, passage_settings=SMALL)
        assert retriever.dense.search_kind == kind


def test_save_and_load_keep_the_graph_and_its_results(embedder, tmp_path):
    settings = RetrieverSettings(method="hybrid", analyzer="bigrams", ann="on", candidates=8)
    retriever = Retriever.build(_documents(), settings, embedder=embedder, passage_settings=SMALL)
    directory = retriever.save(tmp_path / "index")
    manifest = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    recorded = manifest["dense_search"]
    assert recorded["kind"] == "hnsw" and recorded["metric"] == "inner_product"
    assert {k: recorded[k] for k in ("m", "ef_construction", "ef_search")} == {
        "m": retriever.dense.ann.m,
        "ef_construction": retriever.dense.ann.ef_construction,
        "ef_search": retriever.dense.ann.ef_search,
    }
    assert (directory / ANN_FILE).is_file()
    loaded = Retriever.load(directory, embedder=embedder)
    assert loaded.dense.search_kind == "hnsw"
    np.testing.assert_array_equal(loaded.dense.embeddings, retriever.dense.embeddings)
    for method in ("dense", "hybrid"):
        assert _ranking(loaded, method) == _ranking(retriever, method)
    # the graph is derived data: without its file, loading rebuilds it from the stored embeddings
    (directory / ANN_FILE).unlink()
    rebuilt = Retriever.load(directory, embedder=embedder)
    assert rebuilt.dense.search_kind == "hnsw" and _ranking(rebuilt, "dense") == _ranking(retriever, "dense")
    # saved again without a graph: the new generation holds no graph file
    exact = Retriever(
        rebuilt.documents,
        rebuilt.passages,
        rebuilt.settings,
        analyzer=rebuilt.analyzer,
        sparse=rebuilt.sparse,
        embedder=embedder,
        dense=DenseIndex(rebuilt.dense.embeddings.copy(), ann=AnnSettings(mode="off")),
    )
    generation = exact.save(tmp_path / "index")
    assert generation != directory and not (generation / ANN_FILE).exists()
    assert json.loads((generation / "index.json").read_text(encoding="utf-8"))["dense_search"]["kind"] == "exact"


def test_a_corrupt_graph_file_is_a_clear_error(embedder, tmp_path):
    settings = RetrieverSettings(method="dense", analyzer=None, ann="on")
    directory = Retriever.build(_documents(), settings, embedder=embedder, passage_settings=SMALL).save(tmp_path / "ix")
    (directory / ANN_FILE).write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match=f"{ANN_FILE}: not a readable HNSW index"):
        Retriever.load(directory, embedder=embedder)


def test_without_faiss_the_graph_asks_for_the_retrieval_extra(monkeypatch, vectors):
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss "not installed"
    exact = DenseIndex(vectors, ann=AnnSettings(mode="auto"))
    assert exact.search(vectors[:2], 3)[0][:, 0].tolist() == [0, 1]  # exact search needs no faiss
    with pytest.raises(MissingExtraError) as caught:
        DenseIndex(vectors, ann=AnnSettings(mode="on")).build_graph()
    message = str(caught.value)
    assert "\n" not in message and message.endswith("needs faiss-cpu, not installed: pip install 'kqa[retrieval]'")


def test_an_update_keeps_the_graph_and_its_parameters(embedder, tmp_path):
    """`Retriever.update` rebuilds the dense index: it must keep approximate search (ann="on"), with the
    graph parameters the index was built / loaded with, not fall back to exact search until a reload."""
    settings = RetrieverSettings(method="hybrid", analyzer="bigrams", ann="on", candidates=8)
    documents = _documents()
    retriever = Retriever.build(documents[:-1], settings, embedder=embedder, passage_settings=SMALL)
    custom = AnnSettings(mode="on", ef_search=256, m=16)
    retriever.dense = DenseIndex(retriever.dense.embeddings.copy(), ann=custom)
    assert retriever.dense.build_graph()
    retriever.update(documents)
    assert retriever.dense.search_kind == "hnsw"
    assert retriever.dense.ann == custom and retriever.dense.graph.settings == custom
    fresh = Retriever.build(
        documents,
        RetrieverSettings(method="hybrid", analyzer="bigrams", ann="off", candidates=8),
        embedder=embedder,
        passage_settings=SMALL,
    )
    assert _ranking(retriever, "dense") == _ranking(fresh, "dense")
    directory = retriever.save(tmp_path / "index")
    recorded = json.loads((directory / "index.json").read_text(encoding="utf-8"))["dense_search"]
    assert recorded["kind"] == "hnsw" and recorded["ef_search"] == 256 and recorded["m"] == 16
