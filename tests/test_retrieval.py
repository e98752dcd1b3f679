"""kqa.retrieval: corpus loading and splitting, analyzers, BM25, fusion, embeddings, the Retriever and
RetrieveAndRead — on hand-made corpora whose right answers are known, tiny models (a seeded random BERT
as the embedder, `token_scoring_model` as the reader), and the shared Korean QA data.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kqa.retrieval import (
    BM25Index,
    CharBigramAnalyzer,
    CorpusError,
    DenseIndex,
    Document,
    Embedder,
    EmbedderSettings,
    IndexMismatchError,
    MorphemeAnalyzer,
    PassageSettings,
    RetrieveAndRead,
    RetrievedPassage,
    Retriever,
    RetrieverSettings,
    load_corpus,
    reciprocal_rank_fusion,
    score_fusion,
    split_corpus,
    split_passages,
)
from kqa.retrieval.corpus import squad_document_id
from kqa.retrieval.dense import model_fingerprint, pooled_embeddings
from kqa.retrieval.fusion import top_k
from kqa.testing import build_char_tokenizer, korean_squad_json, tiny_bert_config, token_scoring_model

# A small Korean corpus: each document is the obvious match of one question.
DOCS = {
    "seoul.txt": "서울은 대한민국의 수도이다. 서울에는 한강이 흐르고 경복궁이 있다.\n\n남산타워는 서울의 명소이다.",
    "busan.txt": "부산은 대한민국에서 가장 큰 항구 도시이다. 해운대 해수욕장이 유명하다.",
    "sejong.txt": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.",
    "newton.txt": "아이작 뉴턴은 영국의 물리학자로 만유인력의 법칙을 발견하였다.",
    "jeju.txt": "제주도는 한국에서 가장 큰 섬이며 한라산과 감귤로 유명하다.",
}
QUERIES = {
    "훈민정음은 언제 반포되었나?": "sejong.txt",
    "해운대 해수욕장은 어느 도시에 있나?": "busan.txt",
    "만유인력의 법칙을 발견한 사람은?": "newton.txt",
    "한라산이 있는 섬은?": "jeju.txt",
    "경복궁은 어디에 있나?": "seoul.txt",
}


def _documents(docs: dict[str, str] = DOCS) -> list[Document]:
    return [Document(id=k, title=Path(k).stem, text=v, source=k) for k, v in docs.items()]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _jsonl(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


# ================================================================================================
# load_corpus


def test_folder_of_text_jsonl_and_squad_files(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "a.txt", "서울은 대한민국의 수도이다.\n")
    _write(root / "sub" / "b.md", "# 부산\n\n부산은 항구 도시이다.")
    _write(root / "sub" / "deeper" / "c.TXT", "세종대왕은 훈민정음을 창제하였다.")
    _write(
        root / "docs.jsonl",
        _jsonl(
            {"id": "x1", "title": "제목", "text": "첫 번째 기록"},
            "",  # blank lines are allowed
            {"text": "아이디 없는 기록"},
            {"id": 7, "text": "정수 아이디"},
        ),
    )
    _write(root / "squad.json", json.dumps(korean_squad_json(), ensure_ascii=False))
    documents, report = load_corpus(root)

    by_id = {d.id: d for d in documents}
    squad_ids = {squad_document_id("squad.json", a, 0) for a in range(3)}
    assert set(by_id) == {"a.txt", "sub/b.md", "sub/deeper/c.TXT", "x1", "docs.jsonl:3", "7"} | squad_ids
    assert by_id["a.txt"].text == "서울은 대한민국의 수도이다.\n" and by_id["a.txt"].title == "a"
    assert by_id["sub/b.md"].title == "b" and by_id["sub/b.md"].source == str(root / "sub" / "b.md")
    assert by_id["x1"].title == "제목" and by_id["x1"].source == f"{root / 'docs.jsonl'}:1"
    assert by_id["docs.jsonl:3"].text == "아이디 없는 기록" and by_id["docs.jsonl:3"].title == ""
    assert by_id["7"].text == "정수 아이디"
    squad = korean_squad_json()
    for a, article in enumerate(squad["data"]):
        doc = by_id[squad_document_id("squad.json", a, 0)]
        assert (doc.text, doc.title) == (article["paragraphs"][0]["context"], article["title"])
    assert report.files_read == 5 and report.documents == len(documents) == 9
    assert report.skipped == [] and report.merged_duplicate_contexts == 0
    # The order is stable: the same folder gives the same list.
    assert [d.id for d in load_corpus(root)[0]] == [d.id for d in documents]
    # A single file: its id is its name.
    single, _ = load_corpus(root / "sub" / "b.md")
    assert [d.id for d in single] == ["b.md"]


def test_squad_repeated_contexts_are_indexed_once_across_files(tmp_path):
    context, other = "같은 문맥이 두 번 나온다.", "다른 문맥이다."
    squad = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {"context": context, "qas": []},
                    {"context": other, "qas": []},
                    {"context": context, "qas": []},
                ],
            },
            {"title": "U", "paragraphs": [{"context": context, "qas": []}]},
        ]
    }
    _write(tmp_path / "one.json", json.dumps(squad, ensure_ascii=False))
    _write(tmp_path / "two.json", json.dumps({"data": [{"paragraphs": [{"context": other}]}]}, ensure_ascii=False))
    documents, report = load_corpus([tmp_path / "one.json", tmp_path / "two.json"])
    assert [(d.id, d.text) for d in documents] == [("one.json/0/0", context), ("one.json/0/1", other)]
    assert report.merged_duplicate_contexts == 3
    assert "3 repeated SQuAD contexts" in report.summary()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("binary.txt", b"abc\x00def", "binary"),
        ("cp949.txt", "서울은 수도이다".encode("cp949"), "not UTF-8"),
        ("big.txt", "가" * 100, "too large"),
        ("empty.txt", " \n\t\n", "empty"),
        ("empty.jsonl", "", "empty"),
        ("empty.json", "\n", "empty"),
        ("paper.odt", b"PK\x03\x04", "unsupported suffix"),
        ("paper.pdf", b"%PDF-1.4", "unreadable PDF"),
    ],
)
def test_files_that_cannot_be_documents_are_skipped_with_their_reason(tmp_path, name, content, reason):
    root = tmp_path / "corpus"
    _write(root / "good.txt", "좋은 문서")
    bad = _write(root / name, content)
    documents, report = load_corpus(root, max_file_bytes=200)
    assert [d.id for d in documents] == ["good.txt"]
    assert len(report.skipped) == 1
    source, why = report.skipped[0]
    assert source == str(bad) and why.startswith(reason), why
    assert report.skipped_by_reason() == {reason: 1}
    assert f"skipped 1 (1 {reason})" in report.summary()
    assert report.to_dict()["skipped"] == [{"source": str(bad), "reason": why}]
    # strict: the same file is an error that names it.
    with pytest.raises(CorpusError, match=name.replace(".", r"\.")):
        load_corpus(root, max_file_bytes=200, strict=True)


def test_skip_reasons_say_what_is_wrong(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "good.txt", "좋은 문서")
    _write(root / "cp949.txt", b"ab\n" + "서울".encode("cp949"))
    _write(root / "big.md", "가" * 100)
    _write(root / ".hidden.txt", "숨은 문서")
    _write(root / ".git" / "config.txt", "설정")
    _write(root / "noext", "확장자 없음")
    documents, report = load_corpus(root, max_file_bytes=200)
    assert [d.id for d in documents] == ["good.txt"]
    reasons = {Path(s).name: r for s, r in report.skipped}
    assert set(reasons) == {"cp949.txt", "big.md", ".hidden.txt", "config.txt", "noext"}
    assert "line 2, column 1" in reasons["cp949.txt"] and "CP949" in reasons["cp949.txt"]
    assert "300 bytes > 200" in reasons["big.md"]
    assert reasons[".hidden.txt"].startswith("hidden") and reasons["config.txt"].startswith("hidden")
    assert "(none)" in reasons["noext"]
    assert report.skipped_by_reason() == {"not UTF-8": 1, "too large": 1, "hidden": 2, "unsupported suffix": 1}


def test_hidden_files_are_skipped_even_when_strict(tmp_path):
    _write(tmp_path / "good.txt", "좋은 문서")
    _write(tmp_path / ".DS_Store.txt", "숨은")
    documents, report = load_corpus(tmp_path, strict=True)
    assert [d.id for d in documents] == ["good.txt"]
    assert [Path(s).name for s, _ in report.skipped] == [".DS_Store.txt"]


def test_an_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus(tmp_path)
    _write(tmp_path / "only.pdf", b"%PDF")
    _write(tmp_path / "blank.txt", "   ")
    with pytest.raises(CorpusError, match=r"no documents .*skipped 2"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(tmp_path / "missing")


@pytest.mark.parametrize(
    "lines, where, message",
    [
        ([{"text": "좋음"}, '{"text": "깨진', {"text": "좋음"}], 2, "not valid JSON"),
        ([{"text": "좋음"}, {"id": "b", "title": "제목"}], 2, "missing field 'text'"),
        (['["text", "배열"]'], 1, "expected an object"),
        (['"그냥 문자열"'], 1, "expected an object"),
        ([{"text": "좋음"}, {"text": "좋음"}, '{"text": "a\\ud800b"}'], 3, "lone surrogate"),
        ([{"id": "x", "text": 5}], 1, "expected a string"),
        ([{"id": "", "text": "본문"}], 1, "'id' is empty"),
        ([{"id": 1.5, "text": "본문"}], 1, "'id'"),
    ],
)
def test_wrong_jsonl_records_are_errors_naming_file_and_line(tmp_path, lines, where, message):
    path = _write(tmp_path / "docs.jsonl", _jsonl(*lines))
    with pytest.raises(CorpusError, match=rf"docs\.jsonl:{where}: .*{message}"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match=rf"docs\.jsonl:{where}"):
        load_corpus(path)


def test_wrong_squad_files_are_errors(tmp_path):
    _write(tmp_path / "list.json", "[1, 2]")
    with pytest.raises(CorpusError, match=r"list\.json: not a SQuAD-format file"):
        load_corpus(tmp_path / "list.json")
    _write(tmp_path / "broken.json", '{"data": [')
    with pytest.raises(CorpusError, match=r"broken\.json: not valid JSON"):
        load_corpus(tmp_path / "broken.json")
    _write(tmp_path / "nocontext.json", json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(CorpusError, match=r"nocontext\.json: data\[0\]\.paragraphs\[0\]"):
        load_corpus(tmp_path / "nocontext.json")


def test_blank_records_are_skipped_and_a_blank_corpus_cannot_be_indexed(tmp_path):
    _write(tmp_path / "a.json", json.dumps({"data": [{"paragraphs": [{"context": " \n "}, {"context": "본문"}]}]}))
    _write(tmp_path / "b.jsonl", _jsonl({"id": "b", "text": "\t"}))
    documents, report = load_corpus(tmp_path)
    assert [d.id for d in documents] == ["a.json/0/1"]
    assert [(Path(s.split(":")[0]).name, r.split(":")[0]) for s, r in report.skipped] == [
        ("a.json", "empty"),
        ("b.jsonl", "empty"),
    ]
    assert "data[0].paragraphs[0]" in report.skipped[0][0] and report.skipped[1][0].endswith("b.jsonl:1")
    with pytest.raises(CorpusError, match=r"a\.json: data\[0\]\.paragraphs\[0\]: empty"):
        load_corpus(tmp_path, strict=True)
    with pytest.raises(ValueError, match="no text to index"):
        Retriever.build(_documents({"blank": "  \n\n  "}), RetrieverSettings(method="sparse", analyzer="bigrams"))


def test_jsonl_lines_are_split_at_newlines_only(tmp_path):
    rows = [{"id": "a", "text": "줄\u2028구분자\x85와 \r 문자"}, {"id": "b", "text": "둘째"}]
    _write(tmp_path / "d.jsonl", "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n")
    documents, _ = load_corpus(tmp_path)
    assert [(d.id, d.text) for d in documents] == [(r["id"], r["text"]) for r in rows]


def test_files_of_the_same_name_in_two_folders_give_distinct_ids(tmp_path):
    for sub in ("a", "b"):
        _write(tmp_path / sub / "docs.jsonl", _jsonl({"text": f"{sub} 폴더의 기록"}))
        squad = korean_squad_json()
        squad["data"] = squad["data"][:1]
        squad["data"][0]["paragraphs"][0]["context"] += f" ({sub})"  # distinct contexts, not merged
        _write(tmp_path / sub / "train.json", json.dumps(squad, ensure_ascii=False))
    documents, _ = load_corpus(tmp_path)
    assert [d.id for d in documents] == ["a/docs.jsonl:1", "a/train.json/0/0", "b/docs.jsonl:1", "b/train.json/0/0"]


def test_duplicate_ids_name_both_places(tmp_path):
    _write(tmp_path / "a.jsonl", _jsonl({"id": "same", "text": "첫째"}))
    _write(tmp_path / "b.jsonl", _jsonl({"id": "other", "text": "둘째"}, {"id": "same", "text": "셋째"}))
    with pytest.raises(CorpusError, match=r"b\.jsonl:2: duplicate document id 'same' \(first seen at .*a\.jsonl:1\)"):
        load_corpus(tmp_path)
    # A record may not take the id of a text file either.
    shutil.rmtree(tmp_path)
    _write(tmp_path / "x.txt", "본문")
    _write(tmp_path / "y.jsonl", _jsonl({"id": "x.txt", "text": "본문"}))
    with pytest.raises(CorpusError, match=r"y\.jsonl:1: duplicate document id 'x\.txt'.*x\.txt"):
        load_corpus(tmp_path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    _write(tmp_path / "a.txt", bom + "서울".encode())
    _write(tmp_path / "b.jsonl", bom + _jsonl({"id": "b", "text": "부산"}).encode())
    _write(tmp_path / "c.json", bom + json.dumps({"data": [{"paragraphs": [{"context": "제주"}]}]}).encode())
    documents, report = load_corpus(tmp_path)
    assert [(d.id, d.text) for d in documents] == [("a.txt", "서울"), ("b", "부산"), ("c.json/0/0", "제주")]
    assert report.skipped == []


def test_the_shared_squad_data_gives_one_document_per_distinct_context(data_dir):
    folder = data_dir / "korquad-1.0-sample"
    documents, report = load_corpus(folder)
    contexts, first = [], {}
    for file in sorted(folder.glob("*.json")):
        for a, article in enumerate(json.loads(file.read_text(encoding="utf-8"))["data"]):
            for p, paragraph in enumerate(article["paragraphs"]):
                contexts.append(paragraph["context"])
                first.setdefault(paragraph["context"], squad_document_id(file.name, a, p))
    assert len(documents) == len(first) and report.merged_duplicate_contexts == len(contexts) - len(first)
    assert {d.text: d.id for d in documents} == first


# ================================================================================================
# split_passages


def _random_text(rng: random.Random) -> str:
    words = [
        "서울은",
        "수도이다.",
        "부산",
        "항구",
        "도시이다.",
        "1446년",
        "KTX",
        "가나다라마바사아자차카타파하" * 3,
        "다.",
        "!",
        "「인용」",
        "word",
        "(괄호)",
    ]
    separators = [" ", " ", " ", "  ", "\n", "\n\n", "\n \n", "\r\n\r\n", "\t", ". "]
    parts = [rng.choice(separators) if rng.random() < 0.2 else ""]
    for _ in range(rng.randint(0, 120)):
        parts.append(rng.choice(words))
        parts.append(rng.choice(separators))
    return "".join(parts)


def _check_passages(document: Document, passages, settings: PassageSettings, first_index: int = 0):
    text = document.text
    covered = np.zeros(len(text), dtype=bool)
    for i, p in enumerate(passages):
        assert p.index == first_index + i and p.doc_id == document.id and p.title == document.title
        assert text[p.start : p.end] == p.text
        assert 0 < len(p.text) <= settings.max_chars
        assert not p.text[0].isspace() and not p.text[-1].isspace()
        covered[p.start : p.end] = True
        if i:
            assert p.start > passages[i - 1].start and p.end > passages[i - 1].end
    uncovered = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert uncovered == [], (document.text, settings)


@pytest.mark.parametrize("sentences", ["kiwi", "regex"])
def test_passages_are_slices_that_cover_every_character(sentences):
    rng = random.Random(1234)
    for trial in range(300):
        max_chars = rng.randint(20, 160)
        overlap = rng.randint(0, max_chars // 2)
        settings = PassageSettings(max_chars=max_chars, overlap_chars=overlap, sentences=sentences)
        document = Document(id=f"d{trial}", title="t", text=_random_text(rng), source="s")
        first_index = rng.randint(0, 5)
        passages = split_passages(document, settings, first_index=first_index)
        _check_passages(document, passages, settings, first_index)
        if document.text.strip():
            assert passages


def test_a_long_paragraph_is_cut_into_overlapping_pieces_at_spaces():
    words = [f"단어{i:02d}" for i in range(40)]
    text = " ".join(words)
    settings = PassageSettings(max_chars=50, overlap_chars=15)
    passages = split_passages(Document("d", "", text, "s"), settings)
    _check_passages(Document("d", "", text, "s"), passages, settings)
    assert len(passages) >= 5
    for prev, nxt in zip(passages, passages[1:]):
        overlap = prev.end - nxt.start
        assert 0 < overlap <= settings.overlap_chars
    for p in passages:  # every cut falls between words
        assert set(p.text.split()) <= set(words)


def test_a_paragraph_without_spaces_is_cut_at_max_chars():
    text = "가" * 120
    passages = split_passages(Document("d", "", text, "s"), PassageSettings(max_chars=50, overlap_chars=10))
    assert [(p.start, p.end) for p in passages] == [(0, 50), (40, 90), (80, 120)]
    no_overlap = split_passages(Document("d", "", text, "s"), PassageSettings(max_chars=50, overlap_chars=0))
    assert [(p.start, p.end) for p in no_overlap] == [(0, 50), (50, 100), (100, 120)]


def test_cuts_prefer_sentence_ends():
    text = " ".join(f"이것은 {i}번째 문장이다." for i in range(12))
    passages = split_passages(Document("d", "", text, "s"), PassageSettings(max_chars=60, overlap_chars=0))
    assert len(passages) >= 3
    assert all(p.text.endswith("문장이다.") for p in passages)
    assert " ".join(p.text for p in passages) == text


def test_short_paragraphs_are_packed_up_to_max_chars():
    paragraphs = ["첫째 문단이다.", "둘째 문단이다.", "셋째 문단이다.", "넷째 문단이다."]  # 8 characters each
    text = "\n\n".join(paragraphs)
    document = Document("d", "", text, "s")
    one = split_passages(document, PassageSettings(max_chars=100, overlap_chars=0))
    assert [(p.start, p.end) for p in one] == [(0, len(text))]
    two = split_passages(document, PassageSettings(max_chars=20, overlap_chars=0))  # 8 + 2 + 8 = 18 fit, 28 do not
    assert [p.text for p in two] == ["\n\n".join(paragraphs[:2]), "\n\n".join(paragraphs[2:])]
    # A long paragraph between short ones is cut alone; the short ones around it are not merged across it.
    long = "긴" * 45
    mixed = Document("m", "", f"짧은 앞.\n\n{long}\n\n짧은 뒤.", "s")
    texts = [p.text for p in split_passages(mixed, PassageSettings(max_chars=30, overlap_chars=5))]
    assert texts[0] == "짧은 앞." and texts[-1] == "짧은 뒤." and "".join(texts[1:-1]).replace("긴", "") == ""


def test_split_corpus_numbers_passages_across_documents():
    passages = split_corpus(_documents(), PassageSettings(max_chars=30, overlap_chars=5))
    assert [p.index for p in passages] == list(range(len(passages)))
    assert {p.doc_id for p in passages} == set(DOCS)
    assert len({p.id for p in passages}) == len(passages)
    for p in passages:
        assert DOCS[p.doc_id][p.start : p.end] == p.text and p.id == f"{p.doc_id}#{p.start}-{p.end}"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_chars=19),
        dict(max_chars=50.0),
        dict(max_chars=100, overlap_chars=51),
        dict(max_chars=100, overlap_chars=-1),
        dict(overlap_chars=1.5),
        dict(sentences="spacy"),
    ],
)
def test_passage_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        PassageSettings(**kwargs)


# ================================================================================================
# Analyzers and BM25


@pytest.fixture(scope="module")
def kiwi() -> MorphemeAnalyzer:
    return MorphemeAnalyzer()


def test_morphemes_drop_particles_and_endings(kiwi):
    assert kiwi("서울에서") == ["서울"] and kiwi("서울은") == ["서울"] and kiwi("서울의 인구") == ["서울", "인구"]
    assert kiwi("대한민국에서 가장 큰 항구") == ["대한민국", "가장", "크", "항구"]
    terms = kiwi("세종대왕은 1446년에 훈민정음을 반포하였다.")
    assert {"훈민정음", "반포", "1446"} <= set(terms) and not {"은", "에", "을", "하", "였", "다"} & set(terms)
    assert "ktx" in kiwi("KTX를 탔다")  # foreign words lower-cased
    assert kiwi("") == [] and kiwi("?!...") == []
    assert kiwi.name == "morphemes" and "kiwipiepy" in kiwi.version


def test_char_bigrams():
    bigrams = CharBigramAnalyzer()
    assert bigrams("서울에서 부산까지") == ["서울", "울에", "에서", "부산", "산까", "까지"]
    assert bigrams("서울, 부산!") == ["서울", "부산"]
    assert bigrams("A 가 ＫＴＸ") == ["a", "가", "kt", "tx"]  # one-character words, NFKC, lower case
    assert bigrams("") == [] and bigrams("!? ...") == []


@pytest.mark.parametrize("which", ["bigrams", "morphemes"])
def test_analyze_many_equals_one_text_at_a_time(which, kiwi):
    analyzer = kiwi if which == "morphemes" else CharBigramAnalyzer()
    texts = [*DOCS.values(), *QUERIES, "", "?!", "ＡＢＣ 서울", "1446년 KTX"]
    assert analyzer.analyze_many(texts) == [analyzer(t) for t in texts]


def _brute_bm25(corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene BM25: Σ over query terms idf · tf / (tf + k1 (1 - b + b · dl / avgdl)),
    idf = log(1 + (N - df + .5) / (df + .5))."""
    n = len(corpus)
    avgdl = sum(map(len, corpus)) / n
    out = np.zeros(n)
    for term in query:
        df = sum(term in doc for doc in corpus)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, doc in enumerate(corpus):
            tf = doc.count(term)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
    return out


def test_bm25_scores_match_a_brute_force_bm25(tmp_path):
    corpus = [["서울", "수도", "서울"], ["부산", "항구", "도시"], ["서울", "항구"], [], ["항구"] * 5 + ["도시"]]
    index = BM25Index.build(corpus)
    assert index.num_passages == 5
    # By hand: 서울 is in 2 of 5 passages, idf = log(1 + 3.5 / 2.5); avgdl = 14 / 5.
    idf = math.log(1 + 3.5 / 2.5)
    expected_0 = idf * 2 / (2 + 1.5 * (0.25 + 0.75 * 3 / 2.8))
    assert index.scores(["서울"])[0] == pytest.approx(expected_0, rel=1e-5)
    rng = random.Random(0)
    vocabulary = ["서울", "수도", "부산", "항구", "도시", "없는말"]
    for _ in range(30):
        query = rng.sample(vocabulary, rng.randint(1, 4))
        got = index.scores(query)
        assert got.dtype == np.float32 and got.shape == (5,)
        np.testing.assert_allclose(got, _brute_bm25(corpus, query), rtol=1e-5, atol=1e-6)
    assert np.argsort(-index.scores(["항구"]), kind="stable").tolist()[:3] == [4, 2, 1]


def test_bm25_unknown_terms_score_zero_and_save_load_round_trips(tmp_path):
    corpus = [CharBigramAnalyzer()(t) for t in DOCS.values()]
    index = BM25Index.build(corpus)
    assert index.scores(["없는말"]).tolist() == [0.0] * len(corpus)
    assert index.scores([]).tolist() == [0.0] * len(corpus)
    assert index.scores(["", "없는말", "반포"]).tolist() == index.scores(["반포"]).tolist()
    assert index.scores(["반포"]).argmax() == list(DOCS).index("sejong.txt")
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.num_passages == index.num_passages
    for query in [*QUERIES, "서울 부산 항구"]:
        terms = CharBigramAnalyzer()(query)
        assert loaded.scores(terms).tolist() == index.scores(terms).tolist()


# ================================================================================================
# Fusion


def test_top_k_orders_by_score_then_index():
    scores = np.array([0.5, 2.0, 2.0, -1.0, 0.0, 0.5])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 3).tolist() == [1, 2, 0]
    assert top_k(scores, 10).tolist() == [1, 2, 0, 5, 4, 3]
    assert top_k(scores, 10, positive_only=True).tolist() == [1, 2, 0, 5]
    assert top_k(np.zeros(4), 3, positive_only=True).tolist() == []
    assert top_k(np.zeros(0), 3).tolist() == []


def test_top_k_ties_go_to_the_lower_index_at_the_cut():
    assert top_k(np.ones(1000, dtype=np.float32), 3).tolist() == [0, 1, 2]
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        scores = rng.integers(-1, 4, size=n).astype(np.float32)  # many ties
        k = int(rng.integers(1, n + 3))
        for positive_only in (False, True):
            expected = [
                i for i in sorted(range(n), key=lambda i: (-scores[i], i)) if not positive_only or scores[i] > 0
            ]
            assert top_k(scores, k, positive_only=positive_only).tolist() == expected[:k], (scores, k)


def test_reciprocal_rank_fusion_by_hand():
    indices, scores = reciprocal_rank_fusion([np.array([3, 1, 2]), np.array([1, 4])], k=60)
    assert indices.tolist() == [1, 3, 4, 2]
    assert scores.tolist() == pytest.approx([1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63], abs=1e-15)
    indices, scores = reciprocal_rank_fusion([np.array([7]), np.array([2])], k=1)  # a tie: lower index first
    assert indices.tolist() == [2, 7] and scores.tolist() == [0.5, 0.5]
    indices, scores = reciprocal_rank_fusion([np.array([], dtype=np.int64), np.array([5, 6])])
    assert indices.tolist() == [5, 6] and scores.tolist() == pytest.approx([1 / 61, 1 / 62])
    assert reciprocal_rank_fusion([])[0].tolist() == []


def test_score_fusion_by_hand():
    sparse = (np.array([0, 1, 2]), np.array([10.0, 5.0, 0.0]))  # normalised 1, .5, 0
    dense = (np.array([2, 3]), np.array([0.9, 0.1]))  # normalised 1, 0
    indices, scores = score_fusion([sparse, dense], [0.5, 0.5])
    assert indices.tolist() == [0, 2, 1, 3]
    assert scores.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0])
    indices, scores = score_fusion([sparse, dense], [0.2, 0.8])
    assert indices.tolist() == [2, 0, 1, 3] and scores.tolist() == pytest.approx([0.8, 0.2, 0.1, 0.0])
    # One candidate (or equal scores): normalised to 1; a method with no candidates adds nothing.
    indices, scores = score_fusion(
        [(np.array([4]), np.array([3.0])), (np.array([], dtype=np.int64), np.array([]))], [0.3, 0.7]
    )
    assert indices.tolist() == [4] and scores.tolist() == pytest.approx([0.3])


# ================================================================================================
# Dense: Embedder and DenseIndex

PREFIX_TEXT = "query: passage: "
ALL_TEXTS = [PREFIX_TEXT, *DOCS.values(), *QUERIES]


def _save_encoder(directory: Path, seed: int, texts=ALL_TEXTS) -> Path:
    from transformers import BertModel

    tokenizer = build_char_tokenizer(texts)
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random BERT encoders with the same tokenizer and different weights."""
    root = tmp_path_factory.mktemp("encoders")
    return _save_encoder(root / "a", seed=0), _save_encoder(root / "b", seed=1)


@pytest.fixture(scope="module")
def embedder(encoder_dirs) -> Embedder:
    return Embedder.from_pretrained(encoder_dirs[0], device="cpu", batch_size=4)


def test_embeddings_are_unit_vectors_independent_of_the_batch(embedder):
    texts = [*DOCS.values(), *QUERIES, "서울"]
    together = embedder.embed_passages(texts)
    assert together.shape == (len(texts), embedder.dimension) == (len(texts), 64) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([embedder.embed_passages([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.abs(together[:, None] - together[None]).max() > 0.01  # the texts do not all embed alike
    reversed_ = embedder.embed_passages(texts[::-1])[::-1]
    np.testing.assert_allclose(together, reversed_, atol=1e-5)


def test_queries_and_passages_get_their_prefixes(embedder):
    text = "훈민정음은 언제 반포되었나?"
    query, passage = embedder.embed_queries([text])[0], embedder.embed_passages([text])[0]
    assert np.abs(query - passage).max() > 1e-3
    for prefix, got in (("query: ", query), ("passage: ", passage)):
        direct = pooled_embeddings(embedder.model, embedder.tokenizer, [prefix + text])[0]
        np.testing.assert_allclose(got, direct, atol=1e-6)
    assert embedder.embed_queries([]).shape == (0, 64)


def test_fingerprint_names_the_weights_and_vocabulary(encoder_dirs, embedder):
    again = Embedder.from_pretrained(encoder_dirs[0], device="cpu")
    assert again.fingerprint == embedder.fingerprint and len(embedder.fingerprint) == 64
    assert Embedder.from_pretrained(encoder_dirs[1], device="cpu").fingerprint != embedder.fingerprint
    weight = again.model.encoder.layer[1].output.dense.weight
    with torch.no_grad():
        weight[3, 5] += 1e-3
    assert model_fingerprint(again.model, again.tokenizer) != embedder.fingerprint
    with torch.no_grad():
        weight[3, 5] -= 1e-3
    tokenizer = build_char_tokenizer([*ALL_TEXTS, "새글자"])
    assert model_fingerprint(again.model, tokenizer) != embedder.fingerprint
    identity = embedder.identity()
    assert identity["name"] == str(encoder_dirs[0].resolve()) and identity["dimension"] == 64
    assert identity["settings"]["query_prefix"] == "query: "


def test_dense_index_scores_are_cosine_similarities(embedder):
    passages = embedder.embed_passages(list(DOCS.values()))
    index = DenseIndex(passages)
    assert index.num_passages == len(DOCS)
    queries = embedder.embed_queries(list(QUERIES))
    scores = index.scores(queries)
    assert scores.shape == (len(QUERIES), len(DOCS))
    np.testing.assert_allclose(scores, queries @ passages.T, atol=1e-6)
    assert (index.scores(passages).argmax(axis=1) == np.arange(len(DOCS))).all()  # each passage finds itself
    np.testing.assert_allclose(index.scores(passages[2]), passages[2:3] @ passages.T, atol=1e-6)  # one vector: [1, n]
    with pytest.raises(ValueError, match="2-D"):
        DenseIndex(passages[0])


@pytest.mark.parametrize("kwargs", [dict(pooling="max"), dict(max_length=4)])
def test_embedder_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        EmbedderSettings(**kwargs)


# ================================================================================================
# Retriever

SMALL = PassageSettings(max_chars=40, overlap_chars=10)


def _ids(hits) -> list[str]:
    return [h.passage.id for h in hits]


def test_sparse_retrieval_finds_the_matching_document_first():
    retriever = Retriever.build(
        _documents(), RetrieverSettings(method="sparse", analyzer="bigrams"), passage_settings=SMALL
    )
    for query, doc_id in QUERIES.items():
        hits = retriever.retrieve(query, k=3)
        assert hits and hits[0].passage.doc_id == doc_id, (query, _ids(hits))
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.score == h.sparse_score > 0 and h.dense_score is None for h in hits)
    # Only passages sharing a term come back: fewer than k, or none.
    assert len(retriever.retrieve("훈민정음", k=5)) == 1
    assert retriever.retrieve("qqq", k=5) == []
    assert retriever.document("busan.txt").text == DOCS["busan.txt"]
    hit = retriever.retrieve("훈민정음", k=1)[0].to_dict()
    assert hit["doc_id"] == "sejong.txt" and DOCS["sejong.txt"][hit["start"] : hit["end"]] == hit["text"]


def test_morpheme_index_matches_other_particles_and_round_trips(tmp_path, kiwi, monkeypatch):
    import kqa.retrieval.retriever as retriever_module

    # One Kiwi for the module: each new one costs ~3 s (loading its model, then its first analysis).
    real = retriever_module.make_analyzer
    monkeypatch.setattr(retriever_module, "make_analyzer", lambda name: kiwi if name == "morphemes" else real(name))
    documents = _documents(
        {"a.txt": "서울에서 열린 회의", "b.txt": "부산에서 열린 축제", "c.txt": "서울의 인구는 많다"}
    )
    retriever = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="morphemes"))
    hits = retriever.retrieve("서울은", k=5)
    assert sorted(h.passage.doc_id for h in hits) == ["a.txt", "c.txt"]  # 서울에서 / 서울의 both match 서울은
    assert retriever.retrieve("에서", k=5) == []  # particles are not terms
    loaded = Retriever.load(retriever.save(tmp_path / "index"))
    assert loaded.analyzer.version == retriever.analyzer.version
    for query in ("서울은", "부산의 축제", "인구"):
        assert [(h.passage.id, h.score) for h in loaded.retrieve(query, k=5)] == [
            (h.passage.id, h.score) for h in retriever.retrieve(query, k=5)
        ]


@pytest.fixture(scope="module")
def hybrid(embedder) -> Retriever:
    return Retriever.build(
        _documents(),
        RetrieverSettings(method="hybrid", analyzer="bigrams", fusion="rrf", candidates=4),
        embedder=embedder,
        passage_settings=SMALL,
    )


@pytest.fixture(scope="module")
def hybrid_dir(hybrid, tmp_path_factory) -> Path:
    return hybrid.save(tmp_path_factory.mktemp("hybrid") / "index")


def test_hybrid_retrieval_fuses_the_two_rankings(hybrid):
    query = "훈민정음은 언제 반포되었나?"
    sparse = hybrid.sparse.scores(hybrid.analyzer(query))
    dense = hybrid.dense.scores(hybrid.embedder.embed_queries([query]))[0]
    expected, fused = reciprocal_rank_fusion([top_k(sparse, 4, positive_only=True), top_k(dense, 4)], k=60)
    hits = hybrid.retrieve(query, k=3)
    assert [h.passage.index for h in hits] == expected[:3].tolist()
    assert [h.score for h in hits] == pytest.approx(fused[:3].tolist())
    for h in hits:
        assert h.sparse_score == pytest.approx(float(sparse[h.passage.index]))
        assert h.dense_score == pytest.approx(float(dense[h.passage.index]), abs=1e-6)
    dense_hits = hybrid.retrieve(query, k=len(hybrid.passages), method="dense")
    assert [h.passage.index for h in dense_hits] == top_k(dense, len(hybrid.passages)).tolist()
    assert hybrid.retrieve(query, k=1, method="sparse")[0].passage.doc_id == "sejong.txt"
    # retrieve_many equals one query at a time.
    assert hybrid.retrieve_many([], k=3) == []
    many = hybrid.retrieve_many(list(QUERIES), k=3)
    assert [_ids(h) for h in many] == [_ids(hybrid.retrieve(q, k=3)) for q in QUERIES]


def test_default_hybrid_is_an_even_score_fusion(embedder):
    retriever = Retriever.build(
        _documents(),
        RetrieverSettings(method="hybrid", analyzer="bigrams", candidates=4),
        embedder=embedder,
        passage_settings=SMALL,
    )
    query = "훈민정음은 언제 반포되었나?"
    sparse = retriever.sparse.scores(retriever.analyzer(query))
    dense = retriever.dense.scores(retriever.embedder.embed_queries([query]))[0]
    s, d = top_k(sparse, 4, positive_only=True), top_k(dense, 4)
    expected, fused = score_fusion([(s, sparse[s]), (d, dense[d])], [0.5, 0.5])
    hits = retriever.retrieve(query, k=3)
    assert [h.passage.index for h in hits] == expected[:3].tolist()
    assert [h.score for h in hits] == pytest.approx(fused[:3].tolist())


def test_score_fusion_setting(embedder):
    retriever = Retriever.build(
        _documents(),
        RetrieverSettings(method="hybrid", analyzer="bigrams", fusion="score", dense_weight=0.0),
        embedder=embedder,
    )
    for query in QUERIES:  # weight 0 on the dense side: the BM25 scores, min-max normalised over its matches
        sparse = retriever.sparse.scores(retriever.analyzer(query))
        matched = sparse[sparse > 0]
        hits = retriever.retrieve(query, k=4)
        assert hits[0].score == pytest.approx(1.0) and hits[0].passage.index == int(sparse.argmax())
        for h in hits:
            s = sparse[h.passage.index]
            expected = (
                0.0 if s <= 0 else 1.0 if matched.size == 1 else (s - matched.min()) / (matched.max() - matched.min())
            )
            assert h.score == pytest.approx(float(expected), abs=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("method", ["sparse", "dense", "hybrid"])
def test_save_and_load_give_identical_results(hybrid, hybrid_dir, method):
    loaded = Retriever.load(hybrid_dir)  # loads the embedder the index records
    assert loaded.settings == hybrid.settings and loaded.info.passage_settings == SMALL
    assert [(d.id, d.title, d.text, d.source) for d in loaded.documents] == [
        (d.id, d.title, d.text, d.source) for d in hybrid.documents
    ]
    assert loaded.passages == hybrid.passages
    for query in [*QUERIES, "서울"]:
        got, expected = loaded.retrieve(query, k=4, method=method), hybrid.retrieve(query, k=4, method=method)
        assert _ids(got) == _ids(expected)
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-6)
    manifest = json.loads((hybrid_dir / "index.json").read_text(encoding="utf-8"))
    assert (
        manifest["passages"] == len(hybrid.passages)
        and manifest["embedder"]["fingerprint"] == hybrid.embedder.fingerprint
    )


def test_documents_with_any_characters_round_trip(tmp_path):
    texts = {
        "crlf.txt": "첫 줄\r\n둘째 줄\r\n\r\n셋째 문단",
        "seps.txt": '줄\u2028구분자\x85와 \u00a0공백 "따옴표"',
        "nfd.txt": "\u1112\u1161\u11ab\u1100\u1173\u11af 한글",
    }
    retriever = Retriever.build(
        _documents(texts),
        RetrieverSettings(method="sparse", analyzer="bigrams"),
        passage_settings=PassageSettings(max_chars=20, overlap_chars=5),
    )
    loaded = Retriever.load(retriever.save(tmp_path / "index"))
    assert [(d.id, d.text) for d in loaded.documents] == list(texts.items())
    assert loaded.passages == retriever.passages
    assert loaded.retrieve("한글", k=3)[0].passage.doc_id == "nfd.txt"  # NFKC makes the NFD text match
    assert loaded.retrieve_many([], k=3) == []


def test_load_with_a_method_override(hybrid_dir):
    loaded = Retriever.load(hybrid_dir, method="sparse")
    assert loaded.settings.method == "sparse"
    assert loaded.retrieve("훈민정음", k=5)[0].dense_score is None


def test_loading_with_another_embedder_is_a_mismatch(hybrid_dir, encoder_dirs, embedder):
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        Retriever.load(hybrid_dir, embedder=encoder_dirs[1], device="cpu")
    other_settings = Embedder(
        embedder.model, embedder.tokenizer, name="same weights", settings=EmbedderSettings(query_prefix="q: ")
    )
    with pytest.raises(IndexMismatchError, match="settings"):
        Retriever.load(hybrid_dir, embedder=other_settings)
    assert Retriever.load(hybrid_dir, embedder=embedder).embedder is embedder


def test_a_different_analyzer_version_is_a_mismatch(hybrid_dir, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(hybrid_dir, copy)
    manifest = json.loads((copy / "index.json").read_text(encoding="utf-8"))
    manifest["analyzer"]["version"] = "0-faked"
    (copy / "index.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(IndexMismatchError, match="0-faked"):
        Retriever.load(copy)


def test_not_an_index_is_a_clear_error(hybrid_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.json"):
        Retriever.load(tmp_path)
    copy = tmp_path / "index"
    shutil.copytree(hybrid_dir, copy)
    (copy / "index.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable index manifest"):
        Retriever.load(copy)
    (copy / "index.json").write_text(json.dumps({"format": "kqa-retrieval-index", "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        Retriever.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(hybrid_dir, copy)
    lines = (copy / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "text"}, ensure_ascii=False)
    (copy / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"documents\.jsonl:2: not a document record \(KeyError"):
        Retriever.load(copy)


def test_retrieve_arguments_are_validated(hybrid):
    sparse_only = Retriever.build(_documents(), RetrieverSettings(method="sparse", analyzer="bigrams"))
    for bad_k in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="k must be a positive int"):
            hybrid.retrieve("서울", k=bad_k)
    for bad_query in ("", "   \n", None):
        with pytest.raises(ValueError, match="query 0"):
            hybrid.retrieve(bad_query)
    with pytest.raises(ValueError, match="method must be one of"):
        hybrid.retrieve("서울", method="bm25")
    for method in ("dense", "hybrid"):
        with pytest.raises(ValueError, match="no embeddings"):
            sparse_only.retrieve("서울", method=method)
    with pytest.raises(ValueError, match="needs an embedder"):
        Retriever.build(_documents(), RetrieverSettings(method="dense", analyzer=None))
    with pytest.raises(ValueError, match="no documents"):
        Retriever.build([], RetrieverSettings(method="sparse", analyzer="bigrams"))
    with pytest.raises(ValueError, match="needs an analyzer"):
        RetrieverSettings(method="sparse", analyzer=None)


def test_a_dense_only_index(embedder, tmp_path):
    retriever = Retriever.build(_documents(), RetrieverSettings(method="dense", analyzer=None), embedder=embedder)
    assert retriever.sparse is None and retriever.analyzer is None
    loaded = Retriever.load(retriever.save(tmp_path / "x"), embedder=embedder)
    assert not (tmp_path / "x" / "bm25").exists()
    assert _ids(loaded.retrieve("서울", k=3)) == _ids(retriever.retrieve("서울", k=3))
    with pytest.raises(ValueError, match="no BM25 part"):
        loaded.retrieve("서울", method="sparse")


def test_shared_data_questions_find_their_paragraph(data_dir):
    """BM25 over the KorQuAD sample: a question's own paragraph is among the first five passages."""
    folder = data_dir / "korquad-1.0-sample"
    documents, report = load_corpus(folder)
    retriever = Retriever.build(
        documents,
        RetrieverSettings(method="sparse", analyzer="bigrams"),
        passage_settings=PassageSettings(max_chars=100000, overlap_chars=0),
        corpus_report=report,
    )
    assert len(retriever.passages) == len(documents)  # one passage per paragraph
    doc_of_context = {d.text: d.id for d in documents}
    found = total = 0
    for file in sorted(folder.glob("*.json")):
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                gold = doc_of_context[paragraph["context"]]
                for qa in paragraph["qas"]:
                    total += 1
                    found += gold in [h.passage.doc_id for h in retriever.retrieve(qa["question"], k=5)]
    assert total > 100 and found / total > 0.8, (found, total)


# ================================================================================================
# RetrieveAndRead

MARK = 8.0
READER_SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
# 부산 is the only word that starts with 부 and the only ##산; the marked span is 부…산.
READ_DOCS = {
    "seoul.txt": "서울은 대한민국의 수도이다. 서울에는 한강이 흐르고 경복궁이 있다.",
    "ports/korea.md": (
        "대한민국에는 여러 항구 도시가 있다. 인천은 서해의 관문이다.\n\n"
        "가장 큰 항구 도시는 부산이다. 해운대가 유명하다."
    ),
}
LONG_DOC = (
    "남해안에는 아름다운 섬이 많다 그중 큰 항구 도시는 부산이며 "
    "해운대와 광안리가 있고 여름마다 많은 사람이 찾는다 겨울에도 따뜻하다"
)
QUESTIONS = ["가장 큰 항구 도시는?", "큰 항구 도시는 어디인가?"]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    from kqa.inference import QuestionAnswerer

    tokenizer = build_char_tokenizer([*READ_DOCS.values(), LONG_DOC, *QUESTIONS])
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    directory = tmp_path_factory.mktemp("reader") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=READER_SETTINGS)
    return QuestionAnswerer.from_pretrained(directory, device="cpu")


def test_the_answer_is_found_in_its_document_with_document_offsets(reader):
    retriever = Retriever.build(
        _documents(READ_DOCS),
        RetrieverSettings(method="sparse", analyzer="bigrams"),
        passage_settings=PassageSettings(max_chars=40, overlap_chars=10),
    )
    korea = [p for p in retriever.passages if p.doc_id == "ports/korea.md"]
    assert len(korea) == 2 and "부산" not in korea[0].text and "부산" in korea[1].text  # not the first passage
    pipeline = RetrieveAndRead(retriever, reader, passages=5)
    result = pipeline.ask(QUESTIONS[0], top_k=5)
    assert len(result.passages) >= 2  # passages without the mark were read too
    best = result.answers[0]
    text = READ_DOCS["ports/korea.md"]
    assert (best.text, best.doc_id, best.start, best.end) == (
        "부산",
        "ports/korea.md",
        text.index("부산"),
        text.index("부산") + 2,
    )
    assert text[best.start : best.end] == best.text
    assert best.passage_start == korea[1].start > 0 and best.passage_id == korea[1].id
    assert best.score == pytest.approx(2 * MARK, abs=1e-3)
    hit = next(h for h in result.passages if h.passage.id == best.passage_id)
    assert (best.retrieval_rank, best.retrieval_score) == (hit.rank, hit.score)
    for answer in result.answers:
        assert retriever.document(answer.doc_id).text[answer.start : answer.end] == answer.text
        assert answer.passage_start <= answer.start < answer.end <= answer.passage_end
    probabilities = [a.probability for a in result.answers]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-9
    assert 0.5 < probabilities[0] < 1
    assert [a.score for a in result.answers] == sorted((a.score for a in result.answers), reverse=True)
    assert pipeline(QUESTIONS[0]) == best  # __call__ gives the best answer (same numbers)
    assert pipeline("xyz") is None  # no passage shares a term: no answer
    assert result.to_dict()["answers"][0]["doc_id"] == "ports/korea.md"


def test_overlapping_passages_give_one_answer_per_span(reader):
    documents = _documents({"long.txt": LONG_DOC})
    settings = PassageSettings(max_chars=40, overlap_chars=20)
    retriever = Retriever.build(
        documents, RetrieverSettings(method="sparse", analyzer="bigrams"), passage_settings=settings
    )
    start = LONG_DOC.index("부산")
    holding = [p for p in retriever.passages if p.start <= start and start + 2 <= p.end]
    assert len(holding) >= 2, [(p.start, p.end) for p in retriever.passages]  # the span is read twice
    pipeline = RetrieveAndRead(retriever, reader, passages=5)
    for question in QUESTIONS:
        result = pipeline.ask(question, top_k=20)
        assert {h.passage.id for h in result.passages} >= {p.id for p in holding}
        keys = [(a.doc_id, a.start, a.end) for a in result.answers]
        assert len(keys) == len(set(keys))  # each span of the document once
        busan = [a for a in result.answers if a.text == "부산"]
        assert len(busan) == 1 and (busan[0].start, busan[0].end) == (start, start + 2)
        assert result.answers[0] is busan[0]
        assert sum(a.probability for a in result.answers) <= 1 + 1e-9
    batch = pipeline.ask_many(QUESTIONS, top_k=3)
    assert [[(a.text, a.start) for a in r.answers] for r in batch] == [
        [(a.text, a.start) for a in pipeline.ask(q, top_k=3).answers] for q in QUESTIONS
    ]


def test_answers_rank_by_passage_probability_times_span_probability(reader):
    """Both passages hold an equally scored 부산: the passage the retriever prefers gives the first answer,
    and each probability is softmax(passage scores)[passage] × the reader's probability in that passage."""
    docs = {"near.txt": "가장 큰 항구 도시는 부산이다.", "far.txt": "부산 이야기: 도시의 바다"}
    retriever = Retriever.build(_documents(docs), RetrieverSettings(method="sparse", analyzer="bigrams"))
    pipeline = RetrieveAndRead(retriever, reader, passages=2)
    result = pipeline.ask(QUESTIONS[0], top_k=20)
    assert [h.passage.doc_id for h in result.passages] == ["near.txt", "far.txt"]
    bm25 = np.array([h.sparse_score for h in result.passages])
    passage_probability = np.exp(bm25 - bm25.max()) / np.exp(bm25 - bm25.max()).sum()
    assert pipeline.passage_probabilities(result.passages) == pytest.approx(passage_probability.tolist())
    busan = [a for a in result.answers if a.text == "부산"]
    assert [a.doc_id for a in busan] == ["near.txt", "far.txt"] and busan[0] is result.answers[0]
    assert busan[0].score == pytest.approx(busan[1].score, abs=1e-4)  # the reader alone cannot choose
    for a, h in zip(busan, range(2)):
        alone = reader.predict_rows([{"id": "x", "question": QUESTIONS[0], "context": docs[a.doc_id]}], top_k=20)["x"]
        span = next(s for s in alone.nbest if s.text == "부산")
        assert a.probability == pytest.approx(passage_probability[h] * span.probability, rel=1e-5)
    # With embeddings, P(passage) is softmax(cosine / temperature).
    hits = [
        RetrievedPassage(retriever.passages[0], 1, 0.9, sparse_score=3.0, dense_score=0.83),
        RetrievedPassage(retriever.passages[1], 2, 0.5, sparse_score=9.0, dense_score=0.80),
    ]
    expected = np.exp(np.array([0.83, 0.80]) / 0.01)
    assert pipeline.passage_probabilities(hits) == pytest.approx((expected / expected.sum()).tolist())
    with pytest.raises(ValueError, match="passage_temperature"):
        RetrieveAndRead(retriever, reader, passage_temperature=0)


def test_pipeline_arguments_are_validated(reader):
    retriever = Retriever.build(_documents(READ_DOCS), RetrieverSettings(method="sparse", analyzer="bigrams"))
    with pytest.raises(ValueError, match="passages"):
        RetrieveAndRead(retriever, reader, passages=0)
    with pytest.raises(ValueError, match="passages"):
        RetrieveAndRead(retriever, reader, passages=True)
    pipeline = RetrieveAndRead(retriever, reader)
    with pytest.raises(ValueError, match="top_k"):
        pipeline.ask("서울", top_k=0)
    for passages in (0, -1, True, 1.5):  # 0 is not "the default"
        with pytest.raises(ValueError, match="passages must be a positive int"):
            pipeline.ask("서울", passages=passages)
    with pytest.raises(ValueError, match="query 0"):
        pipeline.ask("  ")
