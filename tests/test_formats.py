"""PDF, HTML and DOCX documents (kqa.retrieval.formats): their text, the regions it came from, the location
of passages and answers in the file, files that cannot be read, and long paragraphs cut at Kiwi's
sentence ends. Every file is written by the test itself: PDFs by `kqa.testing.text_pdf` (by hand, no
font needed), DOCX by python-docx, HTML as text."""

from __future__ import annotations

import io
import json
import sys
import unicodedata
from pathlib import Path

import pytest

from kqa.retrieval import Document, PassageSettings, RetrieveAndRead, Retriever, RetrieverSettings, load_corpus
from kqa.retrieval.corpus import CorpusError, split_passages
from kqa.retrieval.formats import extract_html, extract_pdf, location_of
from kqa.testing import build_char_tokenizer, text_pdf, token_scoring_model

PDF_PAGES = [
    "세종대왕은 1443년에 훈민정음을 창제하였다.\n백성을 가르치는 바른 소리라는 뜻이다.",
    None,  # a page without a text layer, like a scanned one
    "가장 큰 항구 도시는 부산이다.\n해운대가 유명하다.",
]
HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>도시 안내</title>
<style>p { color: red } /* 스타일은 본문이 아니다 */</style>
<script>var secret = "스크립트 문장";</script></head>
<body>
<nav><a href="/">처음</a> <a href="/menu">메뉴 항목</a></nav>
<h1>서울</h1>
<p>서울은 대한민국의 <b>수도</b>이다.</p>
<h2>교통</h2>
<p>서울역은 철도의 중심이다.</p>
<ul><li>지하철</li><li>버스</li></ul>
<p>인천 국제공항은 서울 서쪽의 관문이다.</p>
<script>document.write("동적 문장")</script>
<footer>저작권 안내문</footer>
</body></html>
"""


def _docx_bytes() -> bytes:
    docx = pytest.importorskip("docx", reason="python-docx (kqa[documents]) writes the test's DOCX")
    document = docx.Document()
    document.add_heading("광주", 1)
    document.add_paragraph("광주는 호남 지방의 중심 도시이다.")
    document.add_paragraph("")  # an empty paragraph: no region
    document.add_heading("인구", 2)
    document.add_paragraph("아래 표는 인구를 보인다.")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "도시", (0, 1): "인구", (1, 0): "대전", (1, 1): "145만"}.items():
        table.cell(row, col).text = text
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    _write(root / "sejong.pdf", text_pdf(PDF_PAGES))
    _write(root / "web/seoul.html", HTML_PAGE)
    _write(root / "gwangju.docx", _docx_bytes())
    _write(root / "notes.txt", "메모: 대구는 분지 도시이다.")
    return root


def _at(document: Document, needle: str) -> str | None:
    start = document.text.index(needle)
    return location_of(document.regions, start, start + len(needle))


def test_a_folder_of_pdf_html_docx_and_text(corpus):
    documents, report = load_corpus(corpus)
    by_id = {d.id: d for d in documents}
    assert sorted(by_id) == ["gwangju.docx", "notes.txt", "sejong.pdf", "web/seoul.html"]
    assert report.files_read == 4 and report.skipped == []
    for d in documents:  # every region lies in the text, in order, without overlapping
        assert all(0 <= s < e <= len(d.text) for s, e, _ in d.regions)
        assert all(a[1] <= b[0] for a, b in zip(d.regions, d.regions[1:]))

    pdf = by_id["sejong.pdf"]
    assert {k: pdf.metadata[k] for k in ("path", "format", "pages", "title")} == {
        "path": "sejong.pdf",
        "format": "pdf",
        "pages": 3,
        "title": "sejong",
    }
    assert isinstance(pdf.metadata["mtime"], float)
    for line in ("세종대왕은 1443년에 훈민정음을 창제하였다.", "가장 큰 항구 도시는 부산이다."):
        assert line in pdf.text
    assert [label for _, _, label in pdf.regions] == ["page 1", "page 3"]  # page 2 has no text
    assert _at(pdf, "부산") == "page 3" and _at(pdf, "훈민정음") == "page 1"

    html = by_id["web/seoul.html"]
    assert (html.metadata["format"], html.metadata["path"]) == ("html", "web/seoul.html")
    for absent in ("스크립트", "동적", "color", "스타일", "메뉴", "저작권", "도시 안내"):
        assert absent not in html.text  # scripts, styles, navigation, footer, <head>
    assert "서울은 대한민국의 수도이다." in html.text  # inline <b> joins its paragraph
    assert _at(html, "서울은 대한민국의") == "h1: 서울 > p[1]"
    assert _at(html, "교통") == "h2: 교통"
    assert _at(html, "버스") == "h2: 교통 > li[2]"
    assert _at(html, "인천 국제공항") == "h2: 교통 > p[2]"

    docx = by_id["gwangju.docx"]
    assert (docx.metadata["format"], docx.metadata["path"]) == ("docx", "gwangju.docx")
    assert _at(docx, "호남") == "광주 > paragraph 1"
    assert _at(docx, "아래 표는") == "인구 > paragraph 1"
    assert _at(docx, "대전 | 145만") == "table 1 > row 2"
    assert _at(docx, "인구") == "heading: 인구"

    assert by_id["notes.txt"].regions == () and _at(by_id["notes.txt"], "대구") is None


def test_html_in_a_declared_legacy_encoding():
    page = '<html><head><meta charset="euc-kr"></head><body><p>부산은 항구 도시이다.</p></body></html>'
    extracted = extract_html(page.encode("euc-kr"))
    assert extracted.text == "부산은 항구 도시이다." and extracted.regions == ((0, 12, "p[1]"),)


def test_a_location_spanning_regions_names_the_first_and_the_last():
    regions = ((0, 10, "page 1"), (12, 20, "page 2"), (22, 30, "page 3"))
    assert location_of(regions, 3, 25) == "page 1 – page 3"
    assert location_of(regions, 12) == "page 2"
    assert location_of(regions, 10, 12) is None  # the blank between two pages
    assert location_of((), 0, 5) is None


def _encrypted_pdf(password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(["비밀 문서이다."]))))
    writer.encrypt(password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("corrupt.pdf", b"%PDF-1.7\n" + b"\x8f" * 300, "unreadable PDF"),
        ("truncated.pdf", text_pdf(PDF_PAGES)[:400], "unreadable PDF"),
        ("scanned.pdf", text_pdf([None, None]), "no text layer"),
        ("locked.pdf", lambda: _encrypted_pdf("secret"), "encrypted"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "unreadable DOCX"),
        ("blank.html", "<html><body><script>var a = 1;</script><nav>메뉴</nav></body></html>", "empty"),
    ],
)
def test_files_that_cannot_be_read_are_skipped_with_their_reason(tmp_path, name, content, reason):
    _write(tmp_path / "good.txt", "좋은 문서")
    bad = _write(tmp_path / name, content() if callable(content) else content)
    documents, report = load_corpus(tmp_path)
    assert [d.id for d in documents] == ["good.txt"]
    assert len(report.skipped) == 1 and report.skipped[0][0] == str(bad)
    assert report.skipped_by_reason() == {reason: 1}, report.skipped
    assert f"skipped 1 (1 {reason})" in report.summary()
    with pytest.raises(CorpusError, match=f"{name.replace('.', '[.]')}: {reason}"):
        load_corpus(tmp_path, strict=True)


def test_an_encrypted_pdf_with_an_empty_password_is_read():
    assert extract_pdf(_encrypted_pdf("")).text == "비밀 문서이다."


def test_a_missing_library_skips_its_files_with_the_install_line(tmp_path, monkeypatch):
    _write(tmp_path / "good.txt", "좋은 문서")
    _write(tmp_path / "a.pdf", text_pdf(["첫째"]))
    _write(tmp_path / "b.pdf", text_pdf(["둘째"]))
    monkeypatch.setitem(sys.modules, "pypdf", None)  # import pypdf now fails
    documents, report = load_corpus(tmp_path)
    assert [d.id for d in documents] == ["good.txt"]
    assert report.skipped_by_reason() == {"missing dependency": 2}
    assert all("needs pypdf, not installed: pip install 'kqa[documents]'" in r for _, r in report.skipped)
    with pytest.raises(CorpusError, match=r"a\.pdf: missing dependency: .*kqa\[documents\]"):
        load_corpus(tmp_path, strict=True)


# ---- passages, the index and answers -------------------------------------------------------------------------

MARK = 8.0
READER_SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
QUESTION = "가장 큰 항구 도시는?"


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory) -> Path:
    """A reader whose best span runs from 부 to 산: the answer 부산 is on page 3 of the PDF only."""
    texts = [p for p in PDF_PAGES if p] + [HTML_PAGE, "광주는 호남 지방의 중심 도시이다. 대전 145만", QUESTION]
    tokenizer = build_char_tokenizer(texts)
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    directory = tmp_path_factory.mktemp("reader") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=READER_SETTINGS)
    return directory


def test_passages_and_answers_name_their_location_and_the_index_keeps_it(corpus, reader_dir, tmp_path):
    from kqa.inference import QuestionAnswerer
    from kqa.serving.schemas import AskOut

    documents, _ = load_corpus(corpus)
    built = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams"))
    retriever = Retriever.load(built.save(tmp_path / "index"))
    assert [d.regions for d in retriever.documents] == [d.regions for d in documents]
    for p in retriever.passages:
        document = retriever.document(p.doc_id)
        assert p.location == location_of(document.regions, p.start, p.end)
        assert (p.location is None) == (p.doc_id == "notes.txt")
    pipeline = RetrieveAndRead(retriever, QuestionAnswerer.from_pretrained(reader_dir, device="cpu"))
    result = pipeline.ask(QUESTION)
    best = result.answers[0]
    text = retriever.document("sejong.pdf").text
    assert (best.text, best.doc_id, best.location) == ("부산", "sejong.pdf", "page 3")
    assert text[best.start : best.end] == "부산"
    out = result.to_dict()
    assert out["answers"][0]["location"] == "page 3"
    assert {p["location"] for p in out["passages"]} <= {"page 1", "page 3", "page 1 – page 3", None} | {
        p.location for p in retriever.passages
    }
    # The server's response model keeps the field (it drops what it does not declare).
    served = AskOut.model_validate(out).model_dump()
    assert served["answers"][0]["location"] == "page 3"
    assert [p["location"] for p in served["passages"]] == [p["location"] for p in out["passages"]]


def test_an_index_saved_without_regions_still_loads(corpus, tmp_path):
    documents, _ = load_corpus(corpus)
    index = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams")).save(tmp_path / "ix")
    rows = [json.loads(line) for line in (index / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum("regions" in row for row in rows) == 3  # the PDF, HTML and DOCX documents
    with open(index / "documents.jsonl", "w", encoding="utf-8") as f:  # as an older kqa wrote it
        for row in rows:
            row.pop("regions", None)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    loaded = Retriever.load(index)
    assert all(d.regions == () for d in loaded.documents) and all(p.location is None for p in loaded.passages)


def test_a_region_outside_its_document_is_an_error_naming_the_line(corpus, tmp_path):
    documents, _ = load_corpus(corpus)
    index = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams")).save(tmp_path / "ix")
    lines = (index / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["regions"] = [[0, 10**6, "page 1"]]
    lines[0] = json.dumps(row, ensure_ascii=False)
    (index / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"documents\.jsonl:1: not a document record"):
        Retriever.load(index)


def test_kqa_index_and_ask_on_a_folder_of_every_format(corpus, reader_dir, tmp_path, capsys):
    from kqa.cli import main

    _write(corpus / "scan.pdf", text_pdf([None]))
    index = tmp_path / "index"
    args = ["index", "--corpus", str(corpus), "--output_dir", str(index), "--method", "sparse"]
    assert main([*args, "--analyzer", "bigrams", "--disable_tqdm"]) == 0
    err = capsys.readouterr().err
    assert "4 documents from 4 files; skipped 1 (1 no text layer)" in err and "scan.pdf" in err
    assert main(["ask", QUESTION, "--index", str(index), "--model", str(reader_dir), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)["answers"][0]
    assert (answer["text"], answer["doc_id"], answer["location"]) == ("부산", "sejong.pdf", "page 3")
    assert main(["ask", QUESTION, "--index", str(index), "--model", str(reader_dir)]) == 0
    assert "sejong.pdf — sejong [" in (shown := capsys.readouterr().out) and "], page 3, passage rank" in shown


# ---- sentence ends ---------------------------------------------------------------------------------------------

# Sentences that end without a full stop (…이다 그리고 …): the regex sees no end, Kiwi does.
UNPUNCTUATED = " ".join(f"{i}번째 도시는 바다 옆에 있는 아름다운 항구이다" for i in range(1, 13))


def test_long_paragraphs_are_cut_at_kiwi_sentence_ends_and_offsets_stay_exact():
    document = Document("d", "", UNPUNCTUATED, "s")
    kiwi = split_passages(document, PassageSettings(max_chars=80, overlap_chars=40, sentences="kiwi"))
    regex = split_passages(document, PassageSettings(max_chars=80, overlap_chars=40, sentences="regex"))
    assert len(kiwi) >= 4
    for p in kiwi:
        assert UNPUNCTUATED[p.start : p.end] == p.text
    assert all(p.text.endswith("항구이다") for p in kiwi)  # every piece ends with a whole sentence
    assert all(p.text[0].isdigit() for p in kiwi)  # and the next begins with one
    assert not all(p.text.endswith("항구이다") for p in regex[:-1])  # the regex cut at spaces instead


def test_an_nfd_paragraph_is_cut_where_its_nfc_form_is():
    nfd = unicodedata.normalize("NFD", UNPUNCTUATED)
    assert nfd != UNPUNCTUATED
    settings = PassageSettings(max_chars=200, overlap_chars=60)  # NFD: about 2.5 characters a syllable
    passages = split_passages(Document("d", "", nfd, "s"), settings)
    assert len(passages) >= 4
    for p in passages:
        assert nfd[p.start : p.end] == p.text
        assert unicodedata.normalize("NFC", p.text).endswith("항구이다")


def test_the_server_answers_with_the_location(corpus, reader_dir, tmp_path):
    import urllib.request

    from kqa.serving.harness import ServerProcess

    documents, _ = load_corpus(corpus)
    index = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams")).save(tmp_path / "ix")
    server = ServerProcess(reader_dir, ["--index", index, "--device", "cpu"], log_path=tmp_path / "server.log")
    server.start()
    try:
        request = urllib.request.Request(
            server.url + "/v1/ask",
            data=json.dumps({"question": QUESTION}, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    finally:
        server.stop()
    answer = body["answers"][0]
    assert (answer["text"], answer["doc_id"], answer["location"]) == ("부산", "sejong.pdf", "page 3")
    hit = next(p for p in body["passages"] if p["passage_id"] == answer["passage_id"])
    assert hit["location"] == "page 1 – page 3"  # the short PDF is one passage; the answer is on page 3
