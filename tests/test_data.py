"""kqa.data: SQuAD-layout JSON and flat datasets → validated examples + LoadReport."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import datasets
import pytest

from kqa.data import (
    EXAMPLE_FEATURES,
    DataValidationError,
    LoadReport,
    align_answer,
    load_examples,
    load_hf_dataset,
    load_squad_json,
    validate_examples,
)
from kqa.testing import korean_squad_json

CONTEXT = "대한민국의 수도는 서울이다. 서울은 한강을 끼고 있다."  # 서울 at 10 and 16, 한강 at 20


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def qa(qid: str, question: str, answers: list[tuple[str, int]], **extra) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers], **extra}


def squad(*articles: dict, version: str | None = None) -> dict:
    doc: dict = {"data": list(articles)}
    if version is not None:
        doc["version"] = version
    return doc


def article(title: str, *paragraphs: dict) -> dict:
    return {"title": title, "paragraphs": list(paragraphs)}


def paragraph(context: str, *qas: dict) -> dict:
    return {"context": context, "qas": list(qas)}


def write(tmp_path: Path, doc, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def one_question_file(tmp_path: Path, context: str, answers: list[tuple[str, int]], **extra) -> Path:
    return write(tmp_path, squad(article("t", paragraph(context, qa("q1", "질문?", answers, **extra)))))


def assert_answers_are_context_slices(examples: datasets.Dataset) -> None:
    for row in examples:
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start : start + len(text)] == text, row["id"]


# --- valid inputs ----------------------------------------------------------------------------------


def test_korquad_file_with_version_loads_every_question_as_given(korean_squad_file, korean_examples):
    examples, report = load_squad_json(korean_squad_file)
    assert examples.features == EXAMPLE_FEATURES
    assert examples.to_list() == korean_examples
    assert report.version == "KorQuAD_v1.0"
    assert (report.num_articles, report.num_paragraphs, report.num_questions, report.num_kept) == (3, 3, 6, 6)
    assert (report.num_answers_repaired, report.num_answers_rejected, report.num_questions_rejected) == (0, 0, 0)
    assert report.summary() == (
        "korean.json: 6 questions read, 6 kept, 0 answers repaired, 0 answers rejected, 0 questions rejected"
    )


def test_file_without_version_key_loads_the_same_rows(tmp_path, korean_examples):
    doc = korean_squad_json()
    del doc["version"]
    examples, report = load_squad_json(write(tmp_path, doc))
    assert report.version is None
    assert examples.to_list() == korean_examples


def test_missing_title_becomes_empty_string_and_integer_ids_become_strings(tmp_path):
    doc = {"data": [{"paragraphs": [paragraph(CONTEXT, qa(17, "수도는?", [("서울", 10)]))]}]}
    examples, _ = load_squad_json(write(tmp_path, doc))
    assert examples[0]["title"] == ""
    assert examples[0]["id"] == "17"


def test_source_text_is_kept_exactly_as_given(tmp_path):
    context = "  " + nfd("서울은 수도다") + " \n"  # surrounding whitespace and NFD jamo survive
    question = nfd("어디?") + "  "
    path = write(tmp_path, squad(article("t", paragraph(context, qa("q", question, [(nfd("서울"), 2)])))))
    row = load_squad_json(path)[0][0]
    assert row["context"] == context
    assert row["question"] == question
    assert row["answers"] == {"text": [nfd("서울")], "answer_start": [2]}


def test_squad2_impossible_question_has_empty_typed_answers(tmp_path):
    doc = squad(
        article(
            "t",
            paragraph(
                CONTEXT,
                qa("answerable", "수도는?", [("서울", 10)], is_impossible=False),
                qa(
                    "unanswerable",
                    "인구는?",
                    [],
                    is_impossible=True,
                    plausible_answers=[{"text": "한강", "answer_start": 20}],
                ),
                {"id": "no-answers-key", "question": "면적은?", "is_impossible": True},
            ),
        ),
        version="v2.0",
    )
    examples, report = load_squad_json(write(tmp_path, doc))
    assert examples.features["answers"] == EXAMPLE_FEATURES["answers"]
    rows = {r["id"]: r for r in examples}
    assert rows["answerable"]["is_impossible"] is False
    assert rows["answerable"]["answers"] == {"text": ["서울"], "answer_start": [10]}
    for qid in ("unanswerable", "no-answers-key"):
        assert rows[qid]["is_impossible"] is True
        assert rows[qid]["answers"] == {"text": [], "answer_start": []}  # plausible answers are not gold
    assert report.num_impossible == 2 and report.num_kept == 3
    assert "(2 kept questions unanswerable)" in report.summary()


def test_impossible_question_with_answers_is_kept_unanswerable_and_counted(tmp_path):
    path = one_question_file(tmp_path, CONTEXT, [("서울", 10)], is_impossible=True)
    for strict in (False, True):  # dropping is no rejection: strict mode keeps the question too
        examples, report = load_squad_json(path, strict=strict)
        assert examples[0]["is_impossible"] is True
        assert examples[0]["answers"] == {"text": [], "answer_start": []}
        assert (report.num_impossible, report.num_answers, report.num_answers_dropped) == (1, 1, 1)
        assert report.counts()["num_answers_dropped"] == 1 and report.has_problems
        assert "(1 answers of 1 questions marked unanswerable dropped)" in report.summary()
        [line] = report.problem_lines()
        assert "is_impossible is true: 1 answer(s) dropped, kept as unanswerable" in line


def test_examples_from_two_files_concatenate(tmp_path, korean_squad_file):
    other, _ = load_squad_json(one_question_file(tmp_path, CONTEXT, [("서울", 10)]))
    first, _ = load_squad_json(korean_squad_file)
    assert len(datasets.concatenate_datasets([first, other])) == 7


# --- repair and rejection --------------------------------------------------------------------------


def test_misaligned_answer_is_repaired_to_the_nearest_occurrence(tmp_path):
    doc = squad(
        article("a0", paragraph("다른 문단.", qa("other", "질문?", [("다른", 0)]))),
        article(
            "a1",
            paragraph("x"),
            paragraph(
                CONTEXT,
                qa("near-first", "수도는?", [("서울", 12)]),
                qa("near-second", "강은?", [("서울", 15)]),
                qa("past-end", "끝?", [("서울", 999)]),
            ),
        ),
    )
    path = write(tmp_path, doc)
    examples, report = load_squad_json(path)
    starts = {r["id"]: r["answers"]["answer_start"] for r in examples}
    assert starts["near-first"] == [10]  # occurrences at 10 and 16: 12 is nearer 10
    assert starts["near-second"] == [16]
    assert starts["past-end"] == [16]
    assert_answers_are_context_slices(examples)
    assert report.num_answers_repaired == 3 and report.num_kept == 4
    record = report.repaired[0]
    assert (record.id, record.given_start, record.start, record.text) == ("near-first", 12, 10, "서울")
    assert record.location.source == str(path)
    assert (record.location.article_index, record.location.paragraph_index, record.location.question_index) == (1, 1, 0)


def test_equally_near_occurrences_resolve_to_the_earlier_one():
    context = "서울 ab 서울"  # occurrences at 0 and 6; 3 is 3 away from both
    assert align_answer(context, "서울", 3) == ("서울", 0)


def test_answer_not_in_context_is_rejected_and_recorded(tmp_path):
    doc = squad(
        article(
            "t",
            paragraph(
                CONTEXT,
                qa("partly-bad", "수도는?", [("서울", 10), ("부산", 3)]),
                qa("all-bad", "항구는?", [("부산", 0), ("인천", 5)]),
                qa("empty-text", "무엇?", [("", 0)]),
            ),
        )
    )
    path = write(tmp_path, doc)
    examples, report = load_squad_json(path)
    assert examples["id"] == ["partly-bad"]
    assert examples[0]["answers"] == {"text": ["서울"], "answer_start": [10]}
    assert report.num_questions == 3 and report.num_kept == 1
    assert report.num_answers_rejected == 4 and report.num_questions_rejected == 2
    first = report.rejected_answers[0]
    assert (first.id, first.text, first.answer_start) == ("partly-bad", "부산", 3)
    assert first.reason == "answer text not found in the context"
    assert (first.location.source, first.location.article_index, first.location.paragraph_index) == (str(path), 0, 0)
    assert [q.id for q in report.rejected_questions] == ["all-bad", "empty-text"]
    assert report.rejected_questions[0].reason == "none of its 2 answers is in the context"
    assert report.rejected_answers[-1].reason == "answer text is empty"
    assert report.summary() == (
        "data.json: 3 questions read, 1 kept, 0 answers repaired, 4 answers rejected, 2 questions rejected"
    )


def test_question_with_empty_answer_list_is_rejected_unless_impossible(tmp_path):
    doc = squad(article("t", paragraph(CONTEXT, qa("q1", "수도는?", [("서울", 10)]), qa("q2", "강은?", []))))
    examples, report = load_squad_json(write(tmp_path, doc))
    assert examples["id"] == ["q1"]
    assert [(q.id, q.reason) for q in report.rejected_questions] == [("q2", "no answers given")]


def test_strict_mode_raises_on_any_rejection(tmp_path):
    path = one_question_file(tmp_path, CONTEXT, [("서울", 10), ("부산", 3)])
    load_squad_json(path)  # lenient: the bad answer is dropped and reported
    with pytest.raises(DataValidationError, match=r"data\.json.*1 answers and 0 questions rejected.*'부산'"):
        load_squad_json(path, strict=True)


def test_strict_mode_accepts_repairs(tmp_path):
    examples, report = load_squad_json(one_question_file(tmp_path, CONTEXT, [("서울", 11)]), strict=True)
    assert examples[0]["answers"]["answer_start"] == [10]
    assert report.num_answers_repaired == 1


def test_file_where_every_question_is_rejected_raises(tmp_path):
    with pytest.raises(DataValidationError, match="all 1 questions were rejected"):
        load_squad_json(one_question_file(tmp_path, CONTEXT, [("부산", 0)]))


def test_file_without_questions_raises(tmp_path):
    with pytest.raises(DataValidationError, match="contains no questions"):
        load_squad_json(write(tmp_path, squad(article("t", paragraph(CONTEXT)))))


# --- Unicode forms ---------------------------------------------------------------------------------


def test_nfc_answer_in_nfd_context_is_repaired_to_the_original_substring(tmp_path):
    context = nfd(CONTEXT)
    # The given start is the NFC offset (10); the NFD context has more characters before 서울.
    examples, report = load_squad_json(one_question_file(tmp_path, context, [("서울", 10)]))
    expected_start = len(nfd("대한민국의 수도는 "))
    answers = examples[0]["answers"]
    assert answers == {"text": [nfd("서울")], "answer_start": [expected_start]}
    assert examples[0]["context"] == context
    record = report.repaired[0]
    assert (record.given_text, record.given_start, record.text, record.start) == (
        "서울",
        10,
        nfd("서울"),
        expected_start,
    )


def test_nfd_answer_in_nfc_context_is_repaired_to_the_original_substring(tmp_path):
    examples, report = load_squad_json(one_question_file(tmp_path, CONTEXT, [(nfd("서울"), 16)]))
    assert examples[0]["answers"] == {"text": ["서울"], "answer_start": [16]}  # the second occurrence
    assert report.num_answers_repaired == 1


def test_nearest_occurrence_is_measured_in_original_offsets_of_an_nfd_context():
    context = nfd(CONTEXT)
    second = len(nfd("대한민국의 수도는 서울이다. "))
    assert align_answer(context, "서울", second - 1) == (nfd("서울"), second)


def test_matching_nfd_answer_in_nfd_context_is_not_a_repair(tmp_path):
    start = len(nfd("대한민국의 수도는 "))
    _, report = load_squad_json(one_question_file(tmp_path, nfd(CONTEXT), [(nfd("서울"), start)]))
    assert report.num_answers_repaired == 0


def test_slice_that_cuts_a_decomposed_syllable_is_not_an_answer():
    context = nfd("각 가")  # ᄀ ᅡ ᆨ, space, ᄀ ᅡ
    # context[0:2] spells 가 but is the start of 각: the real 가 is the later one.
    assert align_answer(context, nfd("가"), 0) == (nfd("가"), 4)
    assert align_answer(context, "\u1100", 0) is None  # a lone initial jamo is no whole character


# --- structural errors -----------------------------------------------------------------------------


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = write(tmp_path, '{\n  "data": [\n    {"title": "x",,}\n')
    with pytest.raises(DataValidationError) as err:
        load_squad_json(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 3, column 19" in message


def test_non_utf8_file_is_reported(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"data": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(DataValidationError, match="not UTF-8"):
        load_squad_json(path)


def test_non_utf8_file_names_line_and_column(tmp_path):
    path = tmp_path / "cp949.json"
    text = json.dumps(squad(article("t", paragraph(CONTEXT, GOOD_QA))), ensure_ascii=False, indent=1)
    path.write_bytes(text.encode() + b"\n" + "서울".encode("cp949"))  # a legacy Korean encoding
    with pytest.raises(DataValidationError) as err:
        load_squad_json(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not UTF-8 text")
    assert f"line {text.count(chr(10)) + 2}, column 1" in message


def test_byte_order_mark_is_accepted(tmp_path, korean_examples):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(korean_squad_json(), ensure_ascii=False).encode("utf-8"))
    examples, report = load_squad_json(path)
    assert examples["id"] == [ex["id"] for ex in korean_examples]
    assert not report.has_problems


LONE = "\ud800"  # valid as a JSON escape, yet no Unicode character: Arrow and tokenizers cannot encode it


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("context", r"data\[0\]\.paragraphs\[0\]: field 'context': holds a lone surrogate '\\ud800' at character 13"),
        ("question", r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id 'q1'\): field 'question': holds a lone surrogate"),
        ("id", r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'id': holds a lone surrogate"),
        ("title", r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id 'q1'\): field 'title': holds a lone surrogate"),
        ("answer", r"qas\[0\] \(id 'q1'\): answer 0: field 'text': holds a lone surrogate"),
    ],
)
def test_lone_surrogate_names_the_file_record_and_field(tmp_path, where, expected):
    context = CONTEXT[:13] + LONE + CONTEXT[13:] if where == "context" else CONTEXT
    question = qa(
        "q1" + LONE if where == "id" else "q1",
        "수도는?" + (LONE if where == "question" else ""),
        [("서울" + (LONE if where == "answer" else ""), 10)],
    )
    doc = squad(article("t" + (LONE if where == "title" else ""), paragraph(context, question)))
    path = write(tmp_path, json.dumps(doc))  # ASCII JSON: the file itself is valid UTF-8
    assert "\\ud800" in path.read_text(encoding="utf-8")
    with pytest.raises(DataValidationError, match=expected) as err:
        load_squad_json(path)
    assert str(err.value).startswith(f"{path}: ")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_squad_json(tmp_path / "nope.json")


GOOD_QA = qa("q1", "수도는?", [("서울", 10)])


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([], r"expected a JSON object with a 'data' list"),
        ({"version": "1"}, r"without 'data' \(keys: 'version'\)"),
        ({"data": {"title": "x"}}, r"got 'data' as a dict"),
        ({"data": ["x"]}, r"data\[0\]: an article must be an object"),
        ({"data": [{"title": "x"}]}, r"data\[0\]: an article has no 'paragraphs' list \(got none\)"),
        (
            {"data": [article("x", paragraph(CONTEXT, GOOD_QA), {"context": CONTEXT})]},
            r"data\[0\]\.paragraphs\[1\]: a paragraph has no 'qas' list \(got none\)",
        ),
        (
            {"data": [article("x", {"context": CONTEXT, "qas": {"id": "q"}})]},
            r"data\[0\]\.paragraphs\[0\]: a paragraph has no 'qas' list \(got a ",
        ),
        (
            {"data": [article("x", paragraph(CONTEXT, GOOD_QA, "q2"))]},
            r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: a question must be an object",
        ),
        (
            {"data": [article("x", paragraph(CONTEXT, {"id": "q", "question": "?", "answers": "서울"}))]},
            r"qas\[0\] \(id 'q'\): 'answers' must be a list",
        ),
        (
            {"data": [article("x", paragraph(CONTEXT, {"id": "q", "question": "?", "answers": ["서울"]}))]},
            r"qas\[0\] \(id 'q'\): answer 0 must be an object",
        ),
    ],
)
def test_wrong_layout_raises_with_location(tmp_path, doc, expected):
    path = write(tmp_path, doc)
    with pytest.raises(DataValidationError, match=expected) as err:
        load_squad_json(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    ("qa_fields", "expected"),
    [
        ({"question": "?", "answers": []}, r": missing field 'id'$"),
        ({"id": "q", "answers": [{"text": "서울", "answer_start": 10}]}, r"\(id 'q'\): missing field 'question'"),
        ({"id": "q", "question": "?"}, r"\(id 'q'\): missing field 'answers'"),
        (
            {"id": "q", "question": "?", "answers": [{"answer_start": 10}]},
            r"\(id 'q'\): answer 0: missing field 'text'",
        ),
        (
            {"id": "q", "question": "?", "answers": [{"text": "서울"}]},
            r"\(id 'q'\): answer 0: missing field 'answer_start'",
        ),
        ({"id": None, "question": "?", "answers": []}, r"field 'id' must be a string, got NoneType"),
        ({"id": "q", "question": 3, "answers": []}, r"field 'question' must be a string, got int"),
        ({"id": "q", "question": "?", "answers": [{"text": 1, "answer_start": 10}]}, r"'text' must be a string"),
        ({"id": "q", "question": "?", "answers": [], "is_impossible": "no"}, r"'is_impossible' must be true or false"),
    ],
)
def test_missing_or_ill_typed_fields_raise_with_location(tmp_path, qa_fields, expected):
    path = write(tmp_path, squad(article("t", paragraph(CONTEXT, qa_fields))))
    with pytest.raises(DataValidationError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\].*" + expected):
        load_squad_json(path)


def test_missing_context_names_the_paragraph(tmp_path):
    path = write(tmp_path, squad(article("t", paragraph(CONTEXT, GOOD_QA), {"qas": [GOOD_QA]})))
    with pytest.raises(DataValidationError, match=r"data\[0\]\.paragraphs\[1\]: missing field 'context'"):
        load_squad_json(path)


@pytest.mark.parametrize(
    ("context", "question", "expected"),
    [
        ("", "수도는?", r"paragraphs\[0\]: field 'context' is empty"),
        (" \n\t", "수도는?", r"paragraphs\[0\]: field 'context' is only whitespace"),
        (CONTEXT, "", r"qas\[0\] \(id 'q1'\): field 'question' is empty"),
        (CONTEXT, "   ", r"qas\[0\] \(id 'q1'\): field 'question' is only whitespace"),
    ],
)
def test_empty_question_or_context_raises(tmp_path, context, question, expected):
    path = write(tmp_path, squad(article("t", paragraph(context, qa("q1", question, [("서울", 10)])))))
    with pytest.raises(DataValidationError, match=expected):
        load_squad_json(path)


@pytest.mark.parametrize("start", ["10", 10.0, True, None, -1])
def test_non_integer_or_negative_answer_start_raises(tmp_path, start):
    path = write(
        tmp_path,
        squad(
            article(
                "t",
                paragraph(CONTEXT, {"id": "q1", "question": "?", "answers": [{"text": "서울", "answer_start": start}]}),
            )
        ),
    )
    with pytest.raises(DataValidationError, match=r"\(id 'q1'\): answer 0: 'answer_start' must"):
        load_squad_json(path)


def test_duplicate_ids_name_both_locations(tmp_path):
    doc = squad(
        article("a", paragraph(CONTEXT, qa("dup", "수도는?", [("서울", 10)]))),
        article("b", paragraph(CONTEXT, qa("other", "강은?", [("한강", 20)]), qa("dup", "또?", [("서울", 10)]))),
    )
    with pytest.raises(DataValidationError) as err:
        load_squad_json(write(tmp_path, doc))
    message = str(err.value)
    assert "duplicate id 'dup'" in message
    assert "data[0].paragraphs[0].qas[0]" in message
    assert "data[1].paragraphs[0].qas[1]" in message


# --- logging ---------------------------------------------------------------------------------------


def test_summary_is_logged_and_problems_warned(tmp_path, korean_squad_file, caplog):
    with caplog.at_level(logging.INFO, logger="kqa.data"):
        load_squad_json(korean_squad_file)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "korean.json: 6 questions read, 6 kept" in caplog.records[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kqa.data"):
        load_squad_json(one_question_file(tmp_path, CONTEXT, [("서울", 11), ("부산", 0)]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 answers repaired, 1 answers and 0 questions rejected" in warnings[0]
    assert "answer_start 11 → 10" in warnings[0] and "'부산'" in warnings[0]


# --- flat datasets (hub layout) ----------------------------------------------------------------------


def flat_rows() -> dict:
    """Columns in the layout of KorQuAD/squad_kor_v1 (no is_impossible column)."""
    return {
        "id": ["r0", "r1", "r2"],
        "title": ["서울", "서울", "한강"],
        "context": [CONTEXT, CONTEXT, CONTEXT],
        "question": ["수도는?", "강은?", "항구는?"],
        "answers": [
            {"text": ["서울"], "answer_start": [10]},
            {"text": ["한강"], "answer_start": [21]},  # misaligned by one
            {"text": ["부산"], "answer_start": [0]},  # not in the context
        ],
    }


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, *, split=None, cache_dir=None, **kwargs):
        calls.append({"path": path, "name": name, "split": split, "cache_dir": cache_dir})
        return datasets.Dataset.from_dict(flat_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_dataset_is_validated_like_a_file(fake_hub, tmp_path):
    examples, report = load_hf_dataset("KorQuAD/squad_kor_v1", "train", cache_dir=tmp_path)
    assert fake_hub == [{"path": "KorQuAD/squad_kor_v1", "name": None, "split": "train", "cache_dir": str(tmp_path)}]
    assert examples.features == EXAMPLE_FEATURES
    assert examples["id"] == ["r0", "r1"]
    assert examples["is_impossible"] == [False, False]
    assert examples[1]["answers"] == {"text": ["한강"], "answer_start": [20]}
    assert report.source == "KorQuAD/squad_kor_v1[train]"
    assert (report.num_articles, report.num_paragraphs, report.num_questions, report.num_kept) == (2, 2, 3, 2)
    assert report.repaired[0].location.row_index == 1
    rejected = report.rejected_answers[0]
    assert (rejected.id, rejected.location.row_index) == ("r2", 2)
    # Same rule, same wording as the JSON loader.
    assert rejected.reason == "answer text not found in the context"
    assert report.summary().startswith("KorQuAD/squad_kor_v1[train]: 3 questions read, 2 kept, 1 answers repaired")


def test_hub_dataset_config_and_strict(fake_hub):
    with pytest.raises(DataValidationError, match=r"squad_kor_v1/v1\[validation\].*strict"):
        load_hf_dataset("KorQuAD/squad_kor_v1", "validation", config_name="v1", strict=True)
    assert fake_hub[0]["name"] == "v1" and fake_hub[0]["split"] == "validation"


def test_local_dataset_directory_goes_through_load_dataset(tmp_path):
    data_dir = tmp_path / "flat"
    data_dir.mkdir()
    rows = flat_rows()
    with (data_dir / "train.jsonl").open("w", encoding="utf-8") as f:
        for i in range(2):
            f.write(json.dumps({k: rows[k][i] for k in rows}, ensure_ascii=False) + "\n")
    examples, report = load_hf_dataset(str(data_dir), "train", cache_dir=tmp_path / "cache")
    assert examples.features == EXAMPLE_FEATURES
    assert examples["answers"] == [{"text": ["서울"], "answer_start": [10]}, {"text": ["한강"], "answer_start": [20]}]
    assert report.num_answers_repaired == 1


def test_flat_dataset_without_is_impossible_treats_empty_answers_as_unanswerable():
    rows = flat_rows()
    rows["answers"][2] = {"text": [], "answer_start": []}
    examples, report = validate_examples(datasets.Dataset.from_dict(rows), "rows")
    assert examples["is_impossible"] == [False, False, True]
    assert report.num_impossible == 1


def test_flat_dataset_with_is_impossible_column_rejects_unanswered_answerable_question():
    rows = flat_rows()
    rows["answers"][2] = {"text": [], "answer_start": []}
    rows["is_impossible"] = [False, False, False]
    examples, report = validate_examples(datasets.Dataset.from_dict(rows), "rows")
    assert examples["id"] == ["r0", "r1"]
    assert [(q.id, q.reason) for q in report.rejected_questions] == [("r2", "no answers given")]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda rows: rows.pop("question"), r"rows: missing columns \['question'\]"),
        (
            lambda rows: rows["question"].__setitem__(1, " "),
            r"rows: row 1 \(id 'r1'\): field 'question' is only whitespace",
        ),
        (lambda rows: rows["context"].__setitem__(0, ""), r"rows: row 0 \(id 'r0'\): field 'context' is empty"),
        (lambda rows: rows["id"].__setitem__(2, "r0"), r"duplicate id 'r0': first at row 0, again at row 2"),
        (
            lambda rows: rows["answers"].__setitem__(0, {"text": ["서울"], "answer_start": [-3]}),
            r"row 0 \(id 'r0'\): answer 0: 'answer_start' must not be negative",
        ),
        (
            lambda rows: rows["answers"].__setitem__(0, {"text": ["서울", "수도"], "answer_start": [10]}),
            r"row 0 \(id 'r0'\): 'answers' has 2 texts but 1 answer_start",
        ),
    ],
)
def test_flat_dataset_structural_errors(change, expected):
    rows = flat_rows()
    change(rows)
    with pytest.raises(DataValidationError, match=expected):
        validate_examples(datasets.Dataset.from_dict(rows), "rows")


def test_hub_loader_requires_a_split():
    with pytest.raises(ValueError, match="split is required"):
        load_hf_dataset("KorQuAD/squad_kor_v1", "")


# --- load_examples dispatch ------------------------------------------------------------------------


def test_load_examples_reads_an_existing_file(korean_squad_file, korean_examples):
    for source in (korean_squad_file, str(korean_squad_file)):
        examples, report = load_examples(source)
        assert isinstance(report, LoadReport) and report.source_kind == "squad-json"
        assert examples.to_list() == korean_examples


def test_load_examples_passes_options_to_the_file_loader(tmp_path):
    with pytest.raises(DataValidationError, match="strict"):
        load_examples(one_question_file(tmp_path, CONTEXT, [("부산", 0), ("서울", 10)]), strict=True)


def test_load_examples_rejects_a_split_for_a_file(korean_squad_file):
    with pytest.raises(ValueError, match="split only applies to datasets"):
        load_examples(korean_squad_file, "train")


def test_load_examples_sends_other_names_to_the_hub_loader(fake_hub):
    examples, report = load_examples("KorQuAD/squad_kor_v1", "validation")
    assert fake_hub[0]["split"] == "validation"
    assert report.source_kind == "dataset" and len(examples) == 2


def test_load_examples_needs_a_split_for_a_dataset_name(fake_hub):
    with pytest.raises(ValueError, match=r"'KorQuAD/squad_kor_v1' is not an existing file.*needs a split"):
        load_examples("KorQuAD/squad_kor_v1")
    assert fake_hub == []


def test_load_examples_missing_json_path_is_not_sent_to_the_hub(fake_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_examples(str(tmp_path / "missing.json"), "train")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "no_suffix")
    assert fake_hub == []


# --- the shared Korean data ------------------------------------------------------------------------

EXPECTED_QUESTIONS = {
    "KorQuAD_v1.0_train.json": 142,
    "KorQuAD_v1.0_dev.json": 133,
    "korean_tydiqa_train.json": 1625,
    "korean_tydiqa_dev.json": 276,
}


@pytest.mark.integration
def test_shared_data_loads_completely(shared_json_files):
    assert sorted(f.name for f in shared_json_files) == sorted(EXPECTED_QUESTIONS)
    for path in shared_json_files:
        examples, report = load_squad_json(path, strict=True)
        expected = EXPECTED_QUESTIONS[path.name]
        assert (report.num_questions, report.num_kept, len(examples)) == (expected, expected, expected)
        assert (report.num_answers_repaired, report.num_answers_rejected, report.num_questions_rejected) == (0, 0, 0)
        assert report.version is None  # none of the shared files has a version key
        assert not any(examples["is_impossible"])
        assert_answers_are_context_slices(examples)


@pytest.mark.integration
def test_tydi_dev_multi_answer_questions_keep_all_answers(data_dir):
    path = data_dir / "tydiqa-goldp-ko" / "korean_tydiqa_dev.json"
    examples, _ = load_squad_json(path)
    loaded = {row["id"]: row["answers"] for row in examples}
    raw = json.loads(path.read_text(encoding="utf-8"))
    multi = 0
    for art in raw["data"]:
        for par in art["paragraphs"]:
            for q in par["qas"]:
                expected = {
                    "text": [a["text"] for a in q["answers"]],
                    "answer_start": [a["answer_start"] for a in q["answers"]],
                }
                assert loaded[q["id"]] == expected  # duplicates included, order kept
                multi += len(q["answers"]) > 1
    assert multi == 172
