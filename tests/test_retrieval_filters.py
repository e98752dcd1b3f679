"""Document metadata (load_corpus) and metadata filters in retrieval: `Retriever.retrieve_many`,
`DenseIndex.search(allowed=)`, `RetrieveAndRead`, `kqa ask --filter` and `POST /v1/ask` over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from kqa.retrieval import (
    CorpusError,
    DenseIndex,
    Embedder,
    FilterError,
    PassageSettings,
    RetrieveAndRead,
    Retriever,
    RetrieverSettings,
    load_corpus,
)
from kqa.testing import build_char_tokenizer, tiny_bert_config, token_scoring_model

ROOT = Path(__file__).resolve().parent.parent
MARK = 8.0
READER_SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
# Two documents answer the port question (부산 is the marked span in both); their metadata tells them apart.
FILES = {
    "history/busan.md": "---\ntitle: 부산의 역사\ntags: [역사, 항구]\nyear: 1876\nopened: 1876-02-27\n---\n"
    "가장 큰 항구 도시는 부산이다. 부산항은 1876년에 열렸다.\n",
    "geo/port.txt": "가장 큰 항구 도시는 어디인가? 답은 부산이다.\n",
    "notes.jsonl": json.dumps(
        {"id": "jeju", "title": "제주", "text": "제주도는 가장 큰 섬이다.", "tags": "섬", "year": 2020}
    )
    + "\n"
    + json.dumps(
        {"id": "seoul", "text": "서울은 수도이다. 한강이 흐른다.", "tags": ["도시"], "public": True}, ensure_ascii=False
    )
    + "\n",
}
QUESTION = "가장 큰 항구 도시는 어디인가?"
SMALL = PassageSettings(max_chars=40, overlap_chars=10)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def documents(corpus_dir):
    return load_corpus(corpus_dir)[0]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    from transformers import BertModel

    tokenizer = build_char_tokenizer(["query: passage: ", *FILES.values(), QUESTION])
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("encoder")
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Embedder.from_pretrained(directory, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def hybrid(documents, embedder) -> Retriever:
    settings = RetrieverSettings(method="hybrid", analyzer="bigrams", candidates=3)
    return Retriever.build(documents, settings, embedder=embedder, passage_settings=SMALL)


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory) -> Path:
    tokenizer = build_char_tokenizer([*FILES.values(), QUESTION])
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    directory = tmp_path_factory.mktemp("reader") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=READER_SETTINGS)
    return directory


# ================================================================================================
# Metadata


def test_every_document_has_path_format_mtime_title_and_its_own_fields(corpus_dir, documents):
    by_id = {d.id: d for d in documents}
    assert sorted(by_id) == ["geo/port.txt", "history/busan.md", "jeju", "seoul"]
    busan = by_id["history/busan.md"]
    assert busan.metadata == {
        "path": "history/busan.md",
        "format": "md",
        "mtime": os.stat(corpus_dir / "history/busan.md").st_mtime,
        "title": "부산의 역사",
        "tags": ["역사", "항구"],
        "year": 1876,
        "opened": "1876-02-27",  # a YAML date, kept as its ISO text (filters compare it as a date)
    }
    assert busan.title == "부산의 역사"
    assert busan.text == "가장 큰 항구 도시는 부산이다. 부산항은 1876년에 열렸다.\n"  # no front matter
    port = by_id["geo/port.txt"].metadata
    assert (port["path"], port["format"], port["title"]) == ("geo/port.txt", "txt", "port")
    assert by_id["jeju"].metadata["tags"] == ["섬"] and by_id["jeju"].metadata["year"] == 2020
    assert by_id["seoul"].metadata["public"] is True and by_id["seoul"].metadata["path"] == "notes.jsonl"
    assert {d.metadata["format"] for d in documents} == {"md", "txt", "jsonl"}


def test_a_file_given_directly_has_its_name_as_path(corpus_dir):
    (doc,) = load_corpus(corpus_dir / "geo" / "port.txt")[0]
    assert doc.metadata["path"] == "port.txt"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"text": "글", "author": {"name": "x"}}\n', r"a\.jsonl:1: field 'author' must be a string"),
        ("a.jsonl", '{"text": "글"}\n{"text": "글", "tags": [1, [2]]}\n', r"a\.jsonl:2: field 'tags\[1\]'"),
        ("a.jsonl", '{"text": "글", "path": "x"}\n', r"a\.jsonl:1: field 'path' is set by kqa itself"),
        ("a.md", "---\n- a\n- b\n---\n본문\n", r"a\.md: front matter must be a mapping"),
        ("a.md", "---\ntitle: [\n---\n본문\n", r"a\.md: front matter is not valid YAML"),
        ("a.md", "---\nmtime: 3\n---\n본문\n", r"a\.md: field 'mtime' is set by kqa itself"),
    ],
)
def test_wrong_metadata_is_an_error_naming_the_file_and_field(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        load_corpus(tmp_path)


def test_a_markdown_file_of_front_matter_only_is_skipped_and_counted(tmp_path):
    (tmp_path / "only.md").write_text("---\ntags: [a]\n---\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("본문", encoding="utf-8")
    documents, report = load_corpus(tmp_path)
    assert [d.id for d in documents] == ["b.txt"]
    assert report.skipped == [(str(tmp_path / "only.md"), "empty: no text after the front matter")]


def test_metadata_is_saved_and_loaded_with_the_index(hybrid, tmp_path):
    loaded = Retriever.load(hybrid.save(tmp_path / "index"))
    assert [d.metadata for d in loaded.documents] == [d.metadata for d in hybrid.documents]
    assert loaded.documents[0].metadata  # not empty


# ================================================================================================
# Filters in retrieval


def _doc_ids(hits) -> list[str]:
    return [h.passage.doc_id for h in hits]


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_a_filter_gives_the_unfiltered_ranking_restricted_to_matching_documents(hybrid, method):
    everything = hybrid.retrieve(QUESTION, k=len(hybrid.passages), method=method)
    for filters in (["tags=역사"], ["format=txt"], ["year>=1900"], ["tags!=역사", "path=notes.*"]):
        allowed = {d.id for d in hybrid.documents if all(_passes(d.metadata, f) for f in filters)}
        expected = [h.passage.index for h in everything if h.passage.doc_id in allowed][:2]
        got = hybrid.retrieve(QUESTION, k=2, method=method, filters=filters)
        assert [h.passage.index for h in got] == expected, filters
        assert [h.score for h in got] == pytest.approx([hybrid_score(everything, h.passage.index) for h in got])


def _passes(metadata, condition):
    from kqa.retrieval import parse_filters

    return parse_filters([condition]).matches(metadata)


def hybrid_score(hits, index):
    return next(h.score for h in hits if h.passage.index == index)


def test_hybrid_returns_only_matching_documents_and_fewer_when_fewer_match(hybrid):
    hits = hybrid.retrieve(QUESTION, k=10, filters=["tags=역사"])
    busan_passages = [p.index for p in hybrid.passages if p.doc_id == "history/busan.md"]
    assert sorted(h.passage.index for h in hits) == busan_passages  # all of them, and nothing else
    assert all(h.dense_score is not None and h.sparse_score is not None for h in hits)
    assert hybrid.retrieve(QUESTION, k=5, filters=["tags=없는태그"]) == []
    assert hybrid.retrieve_many([QUESTION, "제주도"], k=3, filters=["format=jsonl"])[1][0].passage.doc_id == "jeju"


def test_a_bad_filter_is_a_filter_error(hybrid):
    with pytest.raises(FilterError, match="no operator"):
        hybrid.retrieve(QUESTION, filters=["tags"])


def test_dense_search_is_exact_and_respects_allowed():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, queries = DenseIndex(vectors), vectors[:3] + 0.1
    allowed = rng.random(50) < 0.3
    indices, scores = index.search(queries, 5, allowed=allowed)
    full = queries @ vectors.T
    for row in range(3):
        expected = [i for i in np.argsort(-full[row], kind="stable") if allowed[i]][:5]
        assert indices[row].tolist() == expected
        assert scores[row] == pytest.approx(full[row][expected], abs=1e-6)
    few = np.zeros(50, dtype=bool)
    few[[3, 7]] = True
    assert index.search(queries, 5, allowed=few)[0].shape == (3, 2)
    assert index.search(queries, 5, allowed=np.zeros(50, dtype=bool))[0].shape == (3, 0)
    assert index.search(queries, 5)[0].tolist() == [np.argsort(-r, kind="stable")[:5].tolist() for r in full]
    with pytest.raises(ValueError, match="boolean mask of shape"):
        index.search(queries, 5, allowed=np.ones(3, dtype=bool))


def test_retrieve_and_read_takes_filters_per_call(hybrid, reader_dir):
    from kqa.inference import QuestionAnswerer

    pipeline = RetrieveAndRead(hybrid, QuestionAnswerer.from_pretrained(reader_dir, device="cpu"), passages=2)
    history = pipeline.ask(QUESTION, filters=["tags=역사"])
    geo = pipeline.ask(QUESTION, filters=["path=geo/*"])
    assert (history.answers[0].text, history.answers[0].doc_id) == ("부산", "history/busan.md")
    assert (geo.answers[0].text, geo.answers[0].doc_id) == ("부산", "geo/port.txt")
    assert {p.passage.doc_id for p in history.passages} == {"history/busan.md"}
    nothing = pipeline.ask(QUESTION, filters=["year>3000"])
    assert nothing.no_answer and nothing.passages == [] and nothing.answers == []
    many = pipeline.ask_many([QUESTION, QUESTION], filters=["format=txt"])
    assert [r.answers[0].doc_id for r in many] == ["geo/port.txt", "geo/port.txt"]


# ================================================================================================
# kqa ask --filter, POST /v1/ask "filter"


@pytest.fixture(scope="module")
def sparse_index(documents, tmp_path_factory) -> Path:
    retriever = Retriever.build(
        documents, RetrieverSettings(method="sparse", analyzer="bigrams"), passage_settings=SMALL
    )
    index = tmp_path_factory.mktemp("sparse") / "index"
    retriever.save(index)
    return index  # the index directory (its CURRENT generation is read), as a user gives it


def _kqa(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "kqa", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_kqa_ask_filter(sparse_index, reader_dir):
    common = [
        "ask",
        QUESTION,
        "--index",
        sparse_index,
        "--model",
        reader_dir,
        "--device",
        "cpu",
        "--json",
        "--show_passages",
    ]
    for filters, doc_id in ((["tags=역사"], "history/busan.md"), (["format=txt", "title=port"], "geo/port.txt")):
        done = _kqa(*common, *[a for f in filters for a in ("--filter", f)])
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["answers"][0]["doc_id"] == doc_id
        assert {p["doc_id"] for p in result["passages"]} == {doc_id}
    bad = _kqa(*common, "--filter", "year>=soon")
    assert (
        bad.returncode != 0
        and "needs a finite number or an ISO 8601 date" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_ask_filter_over_http(sparse_index, reader_dir, tmp_path):
    pytest.importorskip("fastapi")
    from kqa.serving.harness import ServerProcess

    with ServerProcess(reader_dir, ["--index", sparse_index, "--device", "cpu"], log_path=tmp_path / "log") as server:
        url = server.url + "/v1/ask"
        status, body = _post(url, {"question": QUESTION, "filter": ["tags=역사"]})
        assert status == 200, body
        assert body["answers"][0]["doc_id"] == "history/busan.md"
        assert {p["doc_id"] for p in body["passages"]} == {"history/busan.md"}
        status, body = _post(url, {"question": QUESTION, "filter": ["path=geo/*"]})
        assert status == 200 and body["answers"][0]["doc_id"] == "geo/port.txt"
        status, body = _post(url, {"question": QUESTION, "filter": ["year>3000"]})
        assert status == 200 and body["no_answer"] and body["passages"] == []
        for bad, problem in (
            (["tags"], "no operator"),
            (["mtime>=later"], "needs a finite number"),
            ("tags=역사", "list"),
        ):
            status, body = _post(url, {"question": QUESTION, "filter": bad})
            assert status == 422, body
            assert body["error"]["field"] == "filter" and problem in body["error"]["message"], body
        status, body = _post(url, {"question": QUESTION})  # still serving
        assert status == 200 and body["answers"]
