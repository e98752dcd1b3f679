"""An index that grows: `Retriever.update` / `delete`, `kqa index --update` / `--delete`, and the
on-disk generations that keep an index whole when the process writing it is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kqa.retrieval import Embedder, PassageSettings, Retriever, RetrieverSettings, load_corpus, store
from kqa.testing import build_char_tokenizer, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
SMALL = PassageSettings(max_chars=40, overlap_chars=10)
SPARSE = RetrieverSettings(method="sparse", analyzer="bigrams")
FILES = {
    "seoul.txt": "서울은 대한민국의 수도이다. 서울에는 한강이 흐르고 경복궁이 있다.\n\n남산타워는 서울의 명소이다.",
    "busan.md": "---\ntags: [항구]\n---\n부산은 대한민국에서 가장 큰 항구 도시이다. 해운대 해수욕장이 유명하다.",
    "sejong.txt": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.",
    "notes/newton.txt": "아이작 뉴턴은 영국의 물리학자로 만유인력의 법칙을 발견하였다.",
    "notes/jeju.txt": "제주도는 한국에서 가장 큰 섬이며 한라산과 감귤로 유명하다.",
    "records.jsonl": '{"id": "r1", "text": "경주는 신라의 수도였다. 불국사가 있다."}\n'
    '{"id": "r2", "text": "평양은 대동강이 흐르는 도시이다.", "tags": ["도시"]}\n',
}
QUERIES = ["훈민정음 반포", "가장 큰 항구 도시", "신라의 수도", "한라산", "만유인력 법칙", "평양 대동강", "서울 명소"]


def write_corpus(folder: Path, files: dict[str, str]) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def edited(files: dict[str, str]) -> dict[str, str]:
    """One of each: a file added, a text changed, metadata changed only, a file deleted, a record changed."""
    files = dict(files)
    files["daegu.txt"] = "대구는 사과로 유명한 분지 도시이다."
    files["sejong.txt"] = "세종대왕은 1446년에 훈민정음을 반포하였다. 집현전 학자들이 도왔다."
    files["busan.md"] = files["busan.md"].replace("tags: [항구]", "tags: [항구, 바다]")
    del files["notes/newton.txt"]
    files["records.jsonl"] = files["records.jsonl"].replace("불국사가 있다", "첨성대가 있다")
    return files


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    from transformers import BertModel

    texts = ["query: passage: ", *FILES.values(), *edited(FILES).values(), *QUERIES]
    tokenizer = build_char_tokenizer(texts)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("encoder")
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Embedder.from_pretrained(directory, device="cpu", batch_size=4)


def assert_same_index(got: Retriever, expected: Retriever) -> None:
    """Same documents (with metadata), passages, stored terms, BM25 scores and embeddings."""
    assert [(d.id, d.title, d.text, d.metadata) for d in got.documents] == [
        (d.id, d.title, d.text, d.metadata) for d in expected.documents
    ]
    assert got.passages == expected.passages
    assert got.passage_terms == expected.passage_terms
    for query in QUERIES:
        terms = expected.analyzer(query)
        np.testing.assert_allclose(got.sparse.scores(terms), expected.sparse.scores(terms), rtol=1e-6, atol=1e-6)
    if expected.dense is not None:
        np.testing.assert_allclose(got.dense.embeddings, expected.dense.embeddings, atol=1e-5)


def test_update_equals_a_fresh_build_and_reports_exactly(tmp_path, embedder, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", FILES)
    settings = RetrieverSettings(method="hybrid", analyzer="bigrams")
    retriever = Retriever.build(load_corpus(corpus)[0], settings, embedder=embedder, passage_settings=SMALL)
    before = {p.id for p in retriever.passages}
    write_corpus(corpus, edited(FILES))
    os.utime(corpus / "seoul.txt", (1e9, 1e9))  # touched, not edited: unchanged (its mtime still updated)
    documents = load_corpus(corpus)[0]

    analysed, embedded = [], []
    analyze_many, embed_passages = retriever.analyzer.analyze_many, embedder.embed_passages
    monkeypatch.setattr(
        retriever.analyzer, "analyze_many", lambda texts, **kw: analysed.extend(texts) or analyze_many(texts, **kw)
    )
    monkeypatch.setattr(
        embedder, "embed_passages", lambda texts, **kw: embedded.extend(texts) or embed_passages(texts, **kw)
    )
    report = retriever.update(documents)
    monkeypatch.undo()

    assert report.added == ["daegu.txt"]
    assert sorted(report.changed) == ["busan.md", "r1", "sejong.txt"]
    assert report.removed == ["notes/newton.txt"] and report.unchanged == 3
    fresh_texts = [p.text for p in retriever.passages if p.doc_id in ("daegu.txt", "sejong.txt", "r1")]
    assert analysed == fresh_texts and embedded == fresh_texts  # busan.md: metadata only, not re-analysed
    assert (report.passages_analysed, report.passages_reused) == (
        len(fresh_texts),
        len(retriever.passages) - len(fresh_texts),
    )
    # Ids are stable: the passages of unchanged documents keep theirs.
    for p in retriever.passages:
        if p.doc_id in ("seoul.txt", "notes/jeju.txt", "r2", "busan.md"):
            assert p.id in before
    assert retriever.document("seoul.txt").metadata["mtime"] == 1e9

    fresh = Retriever.build(documents, settings, embedder=embedder, passage_settings=SMALL)
    assert_same_index(retriever, fresh)
    for query in QUERIES:
        got, expected = retriever.retrieve(query, k=3), fresh.retrieve(query, k=3)
        assert [h.passage.id for h in got] == [h.passage.id for h in expected]
    loaded = Retriever.load(retriever.save(tmp_path / "index"))
    assert_same_index(loaded, fresh)
    assert loaded.info.last_update["added"] == 1 and loaded.info.last_update["removed"] == 1


def test_delete_removes_documents_and_unknown_ids_are_an_error(tmp_path):
    retriever = Retriever.build(load_corpus(write_corpus(tmp_path / "c", FILES))[0], SPARSE, passage_settings=SMALL)
    report = retriever.delete(["r1", "seoul.txt"])
    assert (report.removed, report.added, report.changed, report.passages_analysed) == (["r1", "seoul.txt"], [], [], 0)
    assert {d.id for d in retriever.documents} == {"busan.md", "sejong.txt", "notes/newton.txt", "notes/jeju.txt", "r2"}
    assert all(h.passage.doc_id != "r1" for h in retriever.retrieve("신라의 수도 경주", k=10))
    remaining = [d for d in load_corpus(tmp_path / "c")[0] if d.id not in ("r1", "seoul.txt")]
    assert_same_index(retriever, Retriever.build(remaining, SPARSE, passage_settings=SMALL))
    with pytest.raises(ValueError, match="no document with id 'nope'"):
        retriever.delete(["nope"])
    with pytest.raises(ValueError, match="at least one document"):
        retriever.delete([d.id for d in retriever.documents])


def test_an_index_of_format_1_loads_and_updates_into_generations(tmp_path):
    from safetensors.numpy import load_file, save_file

    documents = load_corpus(write_corpus(tmp_path / "c", FILES))[0]
    built = Retriever.build(documents, SPARSE, passage_settings=SMALL)
    generation = built.save(tmp_path / "new")
    flat = tmp_path / "old"  # what format 1 wrote: the files in the folder, no metadata, no terms
    shutil.copytree(generation, flat)
    (flat / "terms.json").unlink()
    arrays = load_file(str(flat / "passages.safetensors"))
    save_file({k: v for k, v in arrays.items() if k in ("doc", "start", "end")}, str(flat / "passages.safetensors"))
    rows = [json.loads(line) for line in (flat / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    (flat / "documents.jsonl").write_text(
        "".join(
            json.dumps({k: r[k] for k in ("id", "title", "source", "text")}, ensure_ascii=False) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    manifest = json.loads((flat / "index.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 1
    (flat / "index.json").write_text(json.dumps(manifest), encoding="utf-8")

    old = Retriever.load(flat)
    assert old.passage_terms is None and old.passages == built.passages and old.documents[0].metadata == {}
    assert [h.passage.id for h in old.retrieve("한라산", k=2)] == [h.passage.id for h in built.retrieve("한라산", k=2)]
    report = old.update(documents)
    assert report.unchanged == 0 and len(report.changed) == len(documents)  # metadata appeared
    assert report.passages_analysed == 0  # texts are the same: terms computed from the stored passages
    old.save(flat)
    assert (flat / store.POINTER_FILE).is_file() and not (flat / "index.json").exists()
    assert_same_index(Retriever.load(flat), built)


# ================================================================================================
# kqa index --update / --delete, and killing it


def kqa(*args, env=None, **kwargs):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "kqa", *map(str, args)], cwd=ROOT, env=full_env, text=True, **kwargs)


def run_kqa(*args) -> str:
    proc = kqa(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


INDEX_ARGS = ["--method", "sparse", "--analyzer", "bigrams", "--passage_chars", "40", "--overlap_chars", "10"]


def test_kqa_index_update_and_delete(tmp_path):
    corpus, index = write_corpus(tmp_path / "corpus", FILES), tmp_path / "index"
    run_kqa("index", "--corpus", corpus, "--output_dir", index, *INDEX_ARGS, "--disable_tqdm")
    write_corpus(corpus, edited(FILES))
    err = run_kqa("index", "--corpus", corpus, "--output_dir", index, "--update", "--disable_tqdm", "--ann", "on")
    assert "1 added, 3 changed, 1 removed, 3 unchanged documents" in err, err
    assert "note: --ann is a setting of a new index" in err and "--method" not in err  # said, not silently dropped
    fresh = Retriever.build(load_corpus(corpus)[0], SPARSE, passage_settings=SMALL)
    assert_same_index(Retriever.load(index), fresh)
    err = run_kqa("index", "--output_dir", index, "--delete", "daegu.txt", "r2")
    assert "0 added, 0 changed, 2 removed" in err, err
    assert {d.id for d in Retriever.load(index).documents} == {d.id for d in fresh.documents} - {"daegu.txt", "r2"}
    assert sorted(p.name for p in (index / store.GENERATIONS_DIR).iterdir()) == ["3"]  # older ones removed
    proc = kqa("index", "--output_dir", index, "--delete", "nope", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "no document with id 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "point, survives", [("generation-partial", "old"), ("generation-written", "old"), ("switched", "new")]
)
def test_an_update_killed_midway_leaves_the_old_or_the_new_index(tmp_path, point, survives):
    corpus, index = write_corpus(tmp_path / "corpus", FILES), tmp_path / "index"
    run_kqa("index", "--corpus", corpus, "--output_dir", index, *INDEX_ARGS, "--disable_tqdm")
    old = Retriever.load(index)
    write_corpus(corpus, edited(FILES))
    new = Retriever.build(load_corpus(corpus)[0], SPARSE, passage_settings=SMALL)

    args = ("index", "--corpus", corpus, "--output_dir", index, "--update", "--disable_tqdm")
    proc = kqa(*args, env={store.PAUSE_ENV: point}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stderr:  # the hook says where it stopped
            if line.strip() == f"kqa-index-pause: {point}" or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the update ended before the pause point"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_same_index(Retriever.load(index), old if survives == "old" else new)
    assert len(list((index / store.GENERATIONS_DIR).iterdir())) == 2  # the killed run's leftovers

    run_kqa(*args)  # the next update completes and removes them
    assert_same_index(Retriever.load(index), new)
    assert len(list((index / store.GENERATIONS_DIR).iterdir())) == 1
    assert not (index / (store.POINTER_FILE + ".tmp")).exists()


def test_an_update_keeps_the_locations_of_passages_in_regioned_documents(tmp_path):
    """Passages of a PDF / HTML / DOCX document carry their location ("page 2"); an update rebuilds the
    passage list, and must keep it for reused and new passages alike (as a fresh build and a reload do)."""
    from kqa.retrieval import Document

    def pdf_like(doc_id: str, pages: list[str]) -> Document:
        text, regions = "", []
        for n, page in enumerate(pages, 1):
            start = len(text) + (2 if text else 0)
            text = f"{text}\n\n{page}" if text else page
            regions.append((start, len(text), f"page {n}"))
        return Document(id=doc_id, title=doc_id, text=text, source=doc_id, regions=tuple(regions))

    seoul, busan = "서울은 대한민국의 수도이며 한강이 흐르는 큰 도시이다.", "부산은 대한민국에서 가장 큰 항구 도시이다."
    first = [pdf_like("a.pdf", [seoul, busan])]
    retriever = Retriever.build(first, SPARSE, passage_settings=SMALL)
    assert [p.location for p in retriever.passages] == ["page 1", "page 2"]
    sejong, jeju = (
        "세종대왕은 1446년에 훈민정음을 반포하였다고 한다.",
        "제주도는 한국에서 가장 큰 섬이며 한라산이 있다.",
    )
    added = [*first, pdf_like("b.pdf", [sejong, jeju])]
    retriever.update(added)
    expected = [p.location for p in Retriever.build(added, SPARSE, passage_settings=SMALL).passages]
    assert expected == ["page 1", "page 2", "page 1", "page 2"]
    assert [p.location for p in retriever.passages] == expected
    hit = retriever.retrieve("훈민정음", k=1)[0]
    assert hit.passage.doc_id == "b.pdf" and hit.to_dict()["location"] == "page 1"
    # and the saved update reads back the same
    loaded = Retriever.load(retriever.save(tmp_path / "index"))
    assert [p.location for p in loaded.passages] == expected


def test_saving_into_a_generation_directory_is_refused_and_leaves_the_index_whole(tmp_path):
    """`save` returns (and kqa index prints) IDX/generations/N, itself a loadable index; saving into that
    path would turn the live generation into an index root and delete its files under every reader of IDX."""
    retriever = Retriever.build(load_corpus(write_corpus(tmp_path / "c", FILES))[0], SPARSE, passage_settings=SMALL)
    generation = retriever.save(tmp_path / "index")
    loaded = Retriever.load(generation)
    loaded.delete(["r1"])
    with pytest.raises(ValueError, match=r"generations.*save into .*index"):
        loaded.save(generation)
    assert not (generation / store.POINTER_FILE).exists() and not (generation / store.GENERATIONS_DIR).exists()
    assert len(Retriever.load(tmp_path / "index").documents) == len(retriever.documents)


def test_saving_into_a_copied_generation_moves_every_file_of_it(tmp_path):
    """A generation directory copied elsewhere is a flat index; the first save into it moves it to the
    generations layout and leaves none of the old files beside CURRENT (terms.json included)."""
    retriever = Retriever.build(load_corpus(write_corpus(tmp_path / "c", FILES))[0], SPARSE, passage_settings=SMALL)
    copy = tmp_path / "copy"
    shutil.copytree(retriever.save(tmp_path / "index"), copy)
    assert (copy / "terms.json").is_file()
    Retriever.load(copy).save(copy)
    assert sorted(p.name for p in copy.iterdir()) == [store.POINTER_FILE, store.GENERATIONS_DIR]
