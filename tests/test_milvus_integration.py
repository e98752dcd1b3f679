"""The Milvus backend through every door the default index has: `MilvusStore.update` / `delete` (what
changed, by `document_hash`, equal to a fresh build; unknown ids as the default index), `kqa index
--update` / `--delete` on a Milvus index, PDF regions kept so answers name their `location`, and `kqa ask
--filter` and `kqa serve` (POST /v1/ask with a filter, a bad filter → 422) as real processes. Milvus Lite
on a temporary .db file, BM25 over character bigrams (no Kiwi, no embedder needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install 'kqa[milvus]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'kqa[milvus]')")

from kqa.retrieval import RetrieveAndRead, Retriever, RetrieverSettings, load_corpus  # noqa: E402
from kqa.retrieval.index import open_index  # noqa: E402
from kqa.retrieval.milvus_store import MilvusStore  # noqa: E402
from kqa.testing import build_char_tokenizer, text_pdf, token_scoring_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPARSE = RetrieverSettings(method="sparse", analyzer="bigrams")
PDF_PAGES = [
    "세종대왕은 1443년에 훈민정음을 창제하였다.\n백성을 가르치는 바른 소리라는 뜻이다.",
    None,  # a page without a text layer
    "가장 큰 항구 도시는 부산이다.\n해운대가 유명하다.",
]
FILES = {
    "seoul.txt": "서울은 대한민국의 수도이다. 한강이 흐른다.",
    "port.txt": "인천은 서해의 항구 도시이다. 가장 큰 공항이 있다.",
    "jeju.txt": "제주도는 가장 큰 섬이다. 한라산이 있다.",
    "notes.md": "---\ntags: [역사]\n---\n경주는 신라의 수도였다.",
}
QUERIES = ["가장 큰 항구 도시", "신라의 수도", "한라산 섬", "훈민정음 창제", "서해 공항"]
# The reader's best span runs from 부 to 산: 부산, on page 3 of the PDF only.
MARK = 8.0
READER_SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
QUESTION = "가장 큰 항구 도시는?"


def write_corpus(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """Write `files` under root (None: remove the file)."""
    for name, content in files.items():
        path = root / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture()
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus", {**FILES, "sejong.pdf": text_pdf(PDF_PAGES)})


# What the edit below does to the corpus: one text changed, one tag changed, one removed, one added.
EDIT = {
    "port.txt": "인천은 서해의 큰 항구 도시이다. 국제 공항이 있다.",
    "notes.md": "---\ntags: [역사, 신라]\n---\n경주는 신라의 수도였다.",
    "jeju.txt": None,
    "daegu.txt": "대구는 분지 도시이다. 여름이 덥다.",
}


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory) -> Path:
    texts = [p for p in PDF_PAGES if p] + list(FILES.values()) + [QUESTION]
    tokenizer = build_char_tokenizer(texts)
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    directory = tmp_path_factory.mktemp("reader") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=READER_SETTINGS)
    return directory


def _ranked(hits) -> list[tuple[float, str]]:
    """A ranking as (score, passage id), ties in id order (Milvus breaks ties by indexing order, which an
    update keeps and a fresh build does not)."""
    return sorted((-round(h.score, 5), h.passage.id) for h in hits)


def assert_same_store(got: MilvusStore, expected: MilvusStore) -> None:
    assert sorted((d.id, d.title, d.text) for d in got.documents) == sorted(
        (d.id, d.title, d.text) for d in expected.documents
    )
    for doc in expected.documents:
        mine = got.document(doc.id)
        assert (mine.metadata, mine.regions) == (doc.metadata, doc.regions), doc.id
    assert sorted((p.id, p.text, p.location) for p in got.passages) == sorted(
        (p.id, p.text, p.location) for p in expected.passages
    )
    for query in QUERIES:
        assert _ranked(got.retrieve(query, 5)) == _ranked(expected.retrieve(query, 5)), query
        for filters in (["tags=신라"], ["format=txt"]):
            want = expected.retrieve(query, 5, filters=filters)
            assert _ranked(got.retrieve(query, 5, filters=filters)) == _ranked(want), (query, filters)


def test_update_changes_exactly_what_changed_and_equals_a_fresh_build(corpus, tmp_path):
    documents = load_corpus(corpus)[0]
    store = MilvusStore.build(documents, SPARSE, uri=str(tmp_path / "kqa.db"))
    passages_before = {p.id: p for p in store.passages}
    written = []
    original_upsert = store.upsert
    store.upsert = lambda docs, **kw: written.append([d.id for d in docs]) or original_upsert(docs, **kw)

    report = store.update(load_corpus(write_corpus(corpus, EDIT))[0])
    assert (report.added, report.changed, report.removed) == (["daegu.txt"], ["notes.md", "port.txt"], ["jeju.txt"])
    assert report.unchanged == 2  # seoul.txt and sejong.pdf (their mtime alone may differ)
    assert written == [["daegu.txt", "port.txt"]]  # notes.md: tags only, its passages kept
    after = {p.id: p for p in store.passages}
    assert report.passages_analysed == sum(p.doc_id in ("daegu.txt", "port.txt") for p in after.values())
    assert report.passages_reused == len(after) - report.passages_analysed
    assert after["notes.md#0-13"].index == passages_before["notes.md#0-13"].index  # not rewritten

    fresh = MilvusStore.build(load_corpus(corpus)[0], SPARSE, uri=str(tmp_path / "fresh.db"))
    assert_same_store(store, fresh)
    assert store.retrieve("신라의 수도", 1, filters=["tags=신라"])[0].passage.doc_id == "notes.md"

    again = store.update(load_corpus(corpus)[0])
    assert (again.added, again.changed, again.removed, again.unchanged) == ([], [], [], 5)
    assert again.passages_analysed == 0 and written == [["daegu.txt", "port.txt"], []]
    fresh.close()
    store.close()


def test_delete_and_unknown_ids_as_the_default_index(corpus, tmp_path):
    documents = load_corpus(corpus)[0]
    store = MilvusStore.build(documents, SPARSE, uri=str(tmp_path / "kqa.db"))
    default = Retriever.build(documents, SPARSE)
    for index in (default, store):
        with pytest.raises(ValueError, match="no document with id 'nope' in the index"):
            index.delete(["seoul.txt", "nope"])
        with pytest.raises(ValueError, match="at least one document"):
            index.delete([d.id for d in documents])
    assert len(store.documents) == len(documents)  # nothing was removed by the refused calls
    report = store.delete(["seoul.txt", "jeju.txt"])
    assert (report.removed, report.unchanged, report.added, report.changed) == (["seoul.txt", "jeju.txt"], 3, [], [])
    kept = [d for d in documents if d.id not in ("seoul.txt", "jeju.txt")]
    fresh = MilvusStore.build(kept, SPARSE, uri=str(tmp_path / "fresh.db"))
    assert_same_store(store, fresh)
    fresh.close()
    store.close()


def test_pdf_regions_and_locations_as_the_default_index(corpus, reader_dir, tmp_path):
    from kqa.inference import QuestionAnswerer

    documents = load_corpus(corpus)[0]
    default = Retriever.build(documents, SPARSE)
    store = MilvusStore.build(documents, SPARSE, uri=str(tmp_path / "index" / "kqa.db"))
    store.save(tmp_path / "index")
    store.close()
    store = open_index(tmp_path / "index")
    assert store.document("sejong.pdf").regions == default.document("sejong.pdf").regions != ()
    assert store.document("seoul.txt").regions == ()
    assert sorted((p.id, p.location) for p in store.passages) == sorted((p.id, p.location) for p in default.passages)
    for query in QUERIES:
        want = [h.to_dict() for h in default.retrieve(query, 5)]
        got = [h.to_dict() for h in store.retrieve(query, 5)]
        assert sorted((h["passage_id"], h["location"]) for h in got) == sorted(
            (h["passage_id"], h["location"]) for h in want
        )
    assert any(h.passage.location for h in store.retrieve("훈민정음 창제", 5))
    qa = QuestionAnswerer.from_pretrained(reader_dir, device="cpu")
    expected = RetrieveAndRead(default, qa).ask(QUESTION, filters=["format=pdf"]).answers[0]
    best = RetrieveAndRead(store, qa).ask(QUESTION, filters=["format=pdf"]).answers[0]
    assert (best.text, best.doc_id, best.location) == ("부산", "sejong.pdf", "page 3")
    assert (best.start, best.end, best.location) == (expected.start, expected.end, expected.location)
    store.close()


# ---- the CLI and the server, as processes ----------------------------------------------------------------


def _kqa(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "kqa", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def _build_cli_index(corpus: Path, index: Path) -> None:
    done = _kqa(
        "index", "--corpus", corpus, "--output_dir", index, "--backend", "milvus", "--milvus_uri",
        index / "kqa.db", "--method", "sparse", "--analyzer", "bigrams", "--disable_tqdm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((index / "index.json").read_text(encoding="utf-8"))["format"] == "kqa-milvus-index"


def test_kqa_index_update_and_delete_on_a_milvus_index(corpus, tmp_path):
    index = tmp_path / "index"
    _build_cli_index(corpus, index)
    write_corpus(corpus, EDIT)
    done = _kqa("index", "--corpus", corpus, "--output_dir", index, "--update", "--disable_tqdm")
    assert done.returncode == 0, done.stderr
    assert "1 added, 2 changed, 1 removed, 2 unchanged documents" in done.stderr, done.stderr
    assert "Milvus collection 'kqa'" in done.stderr and "now 5 documents" in done.stderr
    store = open_index(index)
    fresh = MilvusStore.build(load_corpus(corpus)[0], SPARSE, uri=str(tmp_path / "fresh.db"))
    assert_same_store(store, fresh)
    fresh.close()
    store.close()

    done = _kqa("index", "--output_dir", index, "--delete", "daegu.txt", "seoul.txt")
    assert done.returncode == 0, done.stderr
    assert "0 added, 0 changed, 2 removed, 3 unchanged documents" in done.stderr, done.stderr
    bad = _kqa("index", "--output_dir", index, "--delete", "nope")
    assert bad.returncode != 0 and "no document with id 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    store = open_index(index)
    assert sorted(d.id for d in store.documents) == ["notes.md", "port.txt", "sejong.pdf"]
    store.close()


def test_kqa_ask_with_a_filter_on_a_milvus_index(corpus, reader_dir, tmp_path):
    index = tmp_path / "index"
    _build_cli_index(corpus, index)
    common = ["ask", QUESTION, "--index", index, "--model", reader_dir, "--device", "cpu"]
    done = _kqa(*common, "--json", "--show_passages", "--filter", "format=pdf")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["answers"][0]["doc_id"], result["answers"][0]["location"]) == ("sejong.pdf", "page 3")
    assert {p["doc_id"] for p in result["passages"]} == {"sejong.pdf"}
    done = _kqa(*common, "--json", "--show_passages", "--filter", "format=txt")
    assert done.returncode == 0, done.stderr
    assert {p["doc_id"] for p in json.loads(done.stdout)["passages"]} <= {"seoul.txt", "port.txt", "jeju.txt"}
    done = _kqa(*common, "--filter", "format=pdf")  # the text output names the page too
    assert done.returncode == 0 and "], page 3, passage rank" in done.stdout, done.stderr
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


def test_server_on_a_milvus_index_over_http(corpus, reader_dir, tmp_path):
    pytest.importorskip("fastapi")
    from kqa.serving.harness import ServerProcess

    index = tmp_path / "index"
    _build_cli_index(corpus, index)
    with ServerProcess(reader_dir, ["--index", index, "--device", "cpu"], log_path=tmp_path / "log") as server:
        url = server.url + "/v1/ask"
        status, body = _post(url, {"question": QUESTION, "filter": ["format=pdf"]})
        assert status == 200, body
        assert (body["answers"][0]["doc_id"], body["answers"][0]["location"]) == ("sejong.pdf", "page 3")
        assert {p["doc_id"] for p in body["passages"]} == {"sejong.pdf"}
        status, body = _post(url, {"question": QUESTION, "filter": ["format=txt", "path!=seoul.*"]})
        assert status == 200 and {p["doc_id"] for p in body["passages"]} == {"port.txt", "jeju.txt"}, body
        status, body = _post(url, {"question": QUESTION, "filter": ["tags=역사"]})  # notes.md: no shared term
        assert status == 200 and body["no_answer"] and body["passages"] == [], body
        for bad, problem in ((["tags"], "no operator"), (["mtime>=later"], "needs a finite number")):
            status, body = _post(url, {"question": QUESTION, "filter": bad})
            assert status == 422, body
            assert body["error"]["field"] == "filter" and problem in body["error"]["message"], body
        status, body = _post(url, {"question": QUESTION})  # still serving
        assert status == 200 and body["answers"], body


def test_collections_of_an_older_build_still_update_without_locations(corpus, tmp_path, monkeypatch):
    """Built before the hash, regions and location fields existed: update hashes the documents read back."""
    from pymilvus import CollectionSchema

    add_field = CollectionSchema.add_field
    newer = ("sha256", "regions", "location")
    monkeypatch.setattr(
        CollectionSchema,
        "add_field",
        lambda self, name, *a, **kw: self if name in newer else add_field(self, name, *a, **kw),
    )
    documents = load_corpus(corpus)[0]
    store = MilvusStore.build(documents, SPARSE, uri=str(tmp_path / "old.db"))
    monkeypatch.setattr(CollectionSchema, "add_field", add_field)
    assert not any(store._has_field(c, f) for c in (store.collection, store._docs) for f in newer)
    assert all(p.location is None for p in store.passages) and store.document("sejong.pdf").regions == ()
    report = store.update(load_corpus(write_corpus(corpus, EDIT))[0])
    assert (report.added, report.changed, report.removed) == (["daegu.txt"], ["notes.md", "port.txt"], ["jeju.txt"])
    assert sorted(d.id for d in store.documents) == sorted(d.id for d in load_corpus(corpus)[0])
    store.close()
