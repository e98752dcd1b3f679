"""kqa.retrieval.milvus_store against an embedded Milvus Lite (a temporary .db file): the same rankings and
scores as the default `Retriever` (sparse, dense with a tiny random encoder, hybrid), metadata filters equal
to `MetadataFilter.matches` over the default index's full ranking, upserts and deletes equal to a fresh
build, and reopening through the manifest (`open_index`, as kqa ask / serve do)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install 'kqa[milvus]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'kqa[milvus]')")

from kqa.retrieval import Document, Embedder, IndexMismatchError, Retriever, RetrieverSettings  # noqa: E402
from kqa.retrieval.filters import parse_filters  # noqa: E402
from kqa.retrieval.fusion import top_k  # noqa: E402
from kqa.retrieval.index import open_index  # noqa: E402
from kqa.retrieval.milvus_store import TOKEN_ENV, MilvusStore  # noqa: E402
from kqa.retrieval.sparse import MorphemeAnalyzer  # noqa: E402
from kqa.testing import build_char_tokenizer, tiny_bert_config  # noqa: E402

DOCS = [
    ("seoul.txt", "서울은 대한민국의 수도이다. 서울에는 한강이 흐르고 경복궁이 있다.\n\n남산타워는 서울의 명소이다.",
     {"tags": ["도시", "수도"], "year": 1394, "date": "2020-05-01", "open": True}),
    ("busan.txt", "부산은 대한민국에서 가장 큰 항구 도시이다. 해운대 해수욕장이 유명하다.",
     {"tags": ["도시", "항구"], "year": "1876", "date": "2021-01-15", "open": False}),
    ("sejong.txt", "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.",
     {"tags": ["역사"], "year": 1446, "kind": "인물-조선"}),
    ("newton.txt", "아이작 뉴턴은 영국의 물리학자로 만유인력의 법칙을 발견하였다. 뉴턴은 대한민국에 온 적이 없다.",
     {"tags": ["과학", "역사"], "year": 1687.0, "kind": "인물-영국", "date": "1687-07-05T00:00:00Z"}),
    ("jeju.txt", "제주도는 한국에서 가장 큰 섬이며 한라산과 감귤로 유명하다. 제주도는 대한민국의 도이다.",
     {"tags": ["섬"], "kind": "지역"}),
]  # fmt: skip
QUERIES = ["훈민정음은 언제 반포되었나?", "대한민국에서 가장 큰 도시", "만유인력 법칙", "한라산 섬", "서울 한강 경복궁"]
FILTERS = [
    ["tags=역사"],
    ["tags!=도시"],
    ["year=1876"],  # a string "1876" and the filter's number: equal as text
    ["year>=1446"],  # numbers and a numeric string
    ["date<2021-01-01"],  # ISO dates (with and without a time)
    ["open=true"],
    ["kind=인물-*"],  # a glob: checked on the hits
    ["kind!=인물-*", "tags=섬"],
    ["nothing=here"],
]


def _documents(extra: dict | None = None) -> list[Document]:
    docs = {i: (t, m) for i, t, m in DOCS}
    docs.update(extra or {})
    return [Document(id=i, title=i, text=t, source=i, metadata=m) for i, (t, m) in docs.items()]


@pytest.fixture(scope="module")
def analyzer() -> MorphemeAnalyzer:
    return MorphemeAnalyzer()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    from transformers import BertModel

    directory = tmp_path_factory.mktemp("encoder")
    tokenizer = build_char_tokenizer(["query: passage: ", *(t for _, t, _ in DOCS), *QUERIES])
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Embedder.from_pretrained(directory, device="cpu", batch_size=4)


def _retriever(documents, analyzer, embedder, method="hybrid") -> Retriever:
    retriever = Retriever.build(documents, RetrieverSettings(method=method), embedder=embedder)
    retriever.analyzer = analyzer  # the same Kiwi, loaded once (its terms are those of a new one)
    return retriever


@pytest.fixture(scope="module")
def both(tmp_path_factory, analyzer, embedder):
    """The default index and a Milvus Lite store of the same documents (hybrid: both parts)."""
    uri = str(tmp_path_factory.mktemp("milvus") / "kqa.db")
    documents = _documents()
    store = MilvusStore.build(documents, RetrieverSettings(), uri=uri, embedder=embedder, analyzer=analyzer)
    return _retriever(documents, analyzer, embedder), store


def _same(expected, found) -> None:
    assert [h.passage.id for h in found] == [h.passage.id for h in expected]
    assert [h.passage.text for h in found] == [h.passage.text for h in expected]
    for name in ("score", "sparse_score", "dense_score"):
        want, got = [getattr(h, name) for h in expected], [getattr(h, name) for h in found]
        assert (None in want) == (None in got), name
        if None not in want:
            # float32 in both; a min-max normalised (fused) score magnifies the last digits of close cosines
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 if name == "score" else 1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["sparse", "dense", "hybrid"])
def test_rankings_and_scores_equal_the_default_index(both, method):
    retriever, store = both
    for expected, found in zip(
        retriever.retrieve_many(QUERIES, 5, method=method), store.retrieve_many(QUERIES, 5, method=method)
    ):
        assert found, "every query has hits"
        _same(expected, found)


def test_hybrid_scores_the_side_that_missed_a_passage(tmp_path, analyzer, embedder):
    """With 2 candidates a side, a fused passage often comes from one side only: its other score is
    computed from the stored vectors (fetched by primary key) and equals the default index's."""
    settings = RetrieverSettings(method="hybrid", candidates=2)
    store = MilvusStore.build(
        _documents(), settings, uri=str(tmp_path / "kqa.db"), embedder=embedder, analyzer=analyzer
    )
    reference = Retriever.build(_documents(), settings, embedder=embedder)
    reference.analyzer = analyzer
    one_sided = 0
    for expected, found in zip(reference.retrieve_many(QUERIES, 3), store.retrieve_many(QUERIES, 3)):
        _same(expected, found)
        one_sided += sum(h.sparse_score == 0.0 for h in expected)
    assert one_sided, "some fused passage had no BM25 score: the path under test ran"


def test_documents_and_passages_are_those_of_the_default_index(both):
    retriever, store = both
    assert len(store.documents) == len(retriever.documents) and len(store.passages) == len(retriever.passages)
    assert [d.id for d in store.documents] == [d.id for d in retriever.documents]
    assert [(p.index, p.id, p.text) for p in store.passages] == [(p.index, p.id, p.text) for p in retriever.passages]
    doc = store.document("sejong.txt")
    assert doc.text == retriever.document("sejong.txt").text and doc.metadata["year"] == 1446
    with pytest.raises(KeyError):
        store.document("missing.txt")


@pytest.mark.parametrize(("ann", "kind"), [("auto", "FLAT"), ("on", "HNSW"), ("off", "FLAT")])
def test_the_dense_index_kind_follows_the_ann_setting(tmp_path, analyzer, embedder, ann, kind):
    """`ann` picks Milvus's dense index as it picks DenseIndex's search ("auto": a graph from ann_threshold
    passages on, never for this corpus); on a corpus this small HNSW's beam covers every passage, so its
    rankings and scores are the exact ones, filtered or not, and a reopened store knows its kind."""
    settings = RetrieverSettings(method="dense", ann=ann)
    index_dir = tmp_path / "index"
    store = MilvusStore.build(
        _documents(), settings, uri=str(index_dir / "kqa.db"), embedder=embedder, analyzer=analyzer
    )
    assert store.dense_index_kind == kind
    reference = _retriever(_documents(), analyzer, embedder, "dense")
    for expected, found in zip(reference.retrieve_many(QUERIES, 5), store.retrieve_many(QUERIES, 5)):
        _same(expected, found)
    metadata_filter = parse_filters(["tags=역사"])
    for query in QUERIES:
        found = [h.passage.id for h in store.retrieve(query, 5, filters=["tags=역사"])]
        assert found == _filtered_reference(reference, query, metadata_filter, 5, "dense")
    store.save(index_dir)
    store.close()
    reopened = open_index(index_dir, embedder=embedder)
    try:
        assert reopened.dense_index_kind == kind
    finally:
        reopened.close()


def _filtered_reference(retriever: Retriever, query: str, metadata_filter, k: int, method: str) -> list[str]:
    """The default index's ranking restricted to passages of documents passing the filter."""
    keep = metadata_filter.mask([retriever.document(p.doc_id).metadata for p in retriever.passages])
    if method == "sparse":
        scores = retriever.sparse.scores(retriever.analyzer(query)) * keep
        return [retriever.passages[i].id for i in top_k(scores, k, positive_only=True)]
    scores = retriever.dense.scores(retriever.embedder.embed_queries([query]))[0]
    return [retriever.passages[i].id for i in top_k(np.where(keep, scores, -np.inf), k) if keep[i]]


@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: " & ".join(f))
def test_filters_select_what_metadata_filter_matches(both, method, filters):
    retriever, store = both
    metadata_filter = parse_filters(filters)
    for query in QUERIES:
        found = store.retrieve(query, 5, method=method, filters=filters)
        assert [h.passage.id for h in found] == _filtered_reference(retriever, query, metadata_filter, 5, method)
        assert all(metadata_filter.matches(store.document(h.passage.doc_id).metadata) for h in found)


def test_upsert_and_delete_equal_a_fresh_build(tmp_path, analyzer):
    settings = RetrieverSettings(method="sparse")
    store = MilvusStore.build(_documents(), settings, uri=str(tmp_path / "kqa.db"), analyzer=analyzer)
    changed = {
        "jeju.txt": ("제주도는 작은 섬이다. 한라산은 높다.", {"tags": ["섬", "산"]}),
        "new.txt": ("훈민정음 해례본은 1446년에 간행되었다.", {"tags": ["역사"]}),
    }
    before = [h.passage.doc_id for h in store.retrieve("훈민정음 1446년", 5)]
    counts = store.upsert(_documents(changed)[-2:])  # jeju.txt replaced, new.txt added
    assert counts == {"documents": 2, "passages_added": 2, "passages_removed": 1}
    expected = _retriever(_documents(changed), analyzer, None, "sparse")
    for query in [*QUERIES, "훈민정음 1446년"]:
        _same(expected.retrieve(query, 5), store.retrieve(query, 5))
    assert "new.txt" in [h.passage.doc_id for h in store.retrieve("훈민정음 1446년", 5)] and "new.txt" not in before
    assert store.retrieve("한라산", 5, filters=["tags=산"])[0].passage.doc_id == "jeju.txt"

    with pytest.raises(ValueError, match="no document with id 'gone.txt'"):  # as Retriever.delete: nothing removed
        store.delete(["busan.txt", "gone.txt"])
    report = store.delete(["busan.txt"])
    assert (report.removed, report.unchanged) == (["busan.txt"], len(_documents(changed)) - 1)
    kept = [d for d in _documents(changed) if d.id != "busan.txt"]
    expected = _retriever(kept, analyzer, None, "sparse")
    for query in QUERIES:
        _same(expected.retrieve(query, 5), store.retrieve(query, 5))
    assert all(h.passage.doc_id != "busan.txt" for q in QUERIES for h in store.retrieve(q, 5))
    assert len(store.documents) == len(kept)
    with pytest.raises(KeyError):
        store.document("busan.txt")


def test_reopened_from_the_manifest_with_no_secret_in_it(tmp_path, analyzer, embedder, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-token")
    index_dir = tmp_path / "index"
    store = MilvusStore.build(
        _documents(), RetrieverSettings(), uri=str(index_dir / "kqa.db"), collection="docs", embedder=embedder,
        analyzer=analyzer,
    )  # fmt: skip
    expected = store.retrieve_many(QUERIES, 3)
    store.save(index_dir)
    store.close()
    text = (index_dir / "index.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert "s3cr3t" not in text and manifest["uri"] == "kqa.db" and manifest["collection"] == "docs"
    assert manifest["embedder"]["fingerprint"] == embedder.fingerprint and manifest["analyzer"]["name"] == "morphemes"

    moved = tmp_path / "moved"
    index_dir.rename(moved)  # the Lite file is recorded relative to the manifest: the folder moves as one
    reopened = open_index(moved, embedder=embedder)
    assert isinstance(reopened, MilvusStore)
    for want, got in zip(expected, reopened.retrieve_many(QUERIES, 3)):
        _same(want, got)
    assert reopened.retrieve(QUERIES[0], 3, method="sparse")[0].dense_score is None
    assert reopened.settings.method == "hybrid" and reopened.embedder is embedder
    reopened.close()


def test_a_different_embedder_or_a_bad_manifest_is_refused(tmp_path, analyzer, embedder):
    store = MilvusStore.build(
        _documents(), RetrieverSettings(method="dense", analyzer=None), uri=str(tmp_path / "kqa.db"), embedder=embedder
    )
    store.save(tmp_path)
    store.close()
    manifest = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    manifest["embedder"]["fingerprint"] = "0" * 64
    (tmp_path / "index.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(IndexMismatchError, match="embedded with"):
        open_index(tmp_path, embedder=embedder)
    manifest["format_version"] = 99
    (tmp_path / "index.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="manifest version 99"):
        open_index(tmp_path, embedder=embedder)


def test_bad_calls_are_clear_errors(both, tmp_path):
    _, store = both
    with pytest.raises(ValueError, match="k must be a positive int"):
        store.retrieve("서울", 0)
    with pytest.raises(ValueError, match="query 1: expected a non-empty string"):
        store.retrieve_many(["서울", " "])
    with pytest.raises(ValueError, match="no operator"):
        store.retrieve("서울", filters=["tags"])
    with pytest.raises(ValueError, match="duplicate document ids"):
        store.upsert(_documents()[:1] * 2)
    with pytest.raises(ValueError, match="needs an embedder"):
        MilvusStore.build(_documents(), RetrieverSettings(), uri=str(tmp_path / "x.db"))
