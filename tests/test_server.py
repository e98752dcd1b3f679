"""`kqa serve` as a real process: a `python -m kqa serve` child on 127.0.0.1, tested over HTTP.

The model is `token_scoring_model`, whose answers are known by construction: in each context one
span is marked ("부" … "##산" of 부산, 영국, 반포), and [CLS] scores above every span, so the null
answer wins exactly when `handle_impossible_answer` is on. The server runs once for the module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="kqa serve needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("uvicorn", reason="kqa serve needs uvicorn (pip install -r requirements.txt)")

from kqa.serving.harness import ServerProcess  # noqa: E402
from kqa.testing import KOREAN_EXAMPLES, token_scoring_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
MARK = 8.0
CLS = 10.0  # null score 2 * CLS = 20 beats the marked span's 2 * MARK = 16
MARKED_SPANS = {"부산": ("부", "##산"), "영국": ("영", "##국"), "반포": ("반", "##포")}
EXPECTED = {"ko-1": "부산", "ko-2": "부산", "ko-3": "영국", "ko-4": "영국", "ko-5": "반포", "ko-6": "반포"}
CAPITAL = KOREAN_EXAMPLES[0]
LIMITS = ["--max_context_chars", "300", "--max_question_chars", "50", "--max_batch_questions", "8", "--max_top_k", "5"]


def build_marked_model(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = token_scoring_model(
        tokenizer,
        {"[CLS]": CLS, **{s: MARK for s, _ in MARKED_SPANS.values()}},
        {"[CLS]": CLS, **{e: MARK for _, e in MARKED_SPANS.values()}},
    )
    model.save_pretrained(out, tokenizer=tokenizer, kqa_config=SETTINGS)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return build_marked_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    # A long gathering window so that concurrent requests really share model calls.
    process = ServerProcess(
        model_dir,
        ["--micro_batch_size", "8", "--max_wait_ms", "30", "--device", "cpu", *LIMITS],
        log_path=tmp_path_factory.mktemp("server") / "server.log",
    )
    process.start()
    yield process
    code = process.stop()
    assert code in (0, -15), f"the server exited with {code}:\n{process.log_tail()}"


def call(
    server,
    path: str,
    body=None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    method: str | None = None,
) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body, ensure_ascii=False).encode())
    request = urllib.request.Request(server.url + path, data=data, method=method or ("GET" if data is None else "POST"))
    if data is not None and content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode("utf-8"))


def ask(server, example: dict, **options) -> list[dict]:
    status, body = call(
        server, "/v1/answer", {"question": example["question"], "context": example["context"], **options}
    )
    assert status == 200, body
    return body["answers"]


def span_of(example: dict) -> tuple[str, int, int]:
    text = EXPECTED[example["id"]]
    start = example["context"].index(text)
    return text, start, start + len(text)


def run_concurrently(client, count: int, timeout_s: float = 120) -> None:
    """`client(n)` for n in range(count), each on its own thread, all started before any is joined."""
    threads = [threading.Thread(target=client, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------


def test_health_names_the_model_and_the_queue(server, model_dir):
    status, health = call(server, "/health")
    assert status == 200
    assert health["status"] == "ok" and health["model"] == str(model_dir)
    assert health["uptime_s"] >= 0 and health["pid"] == server.pid
    assert {"waiting", "in_flight", "batches", "questions"} <= set(health["queue"])
    assert health["batching"]["batch_size"] == 8
    assert health["limits"] == {
        "max_context_chars": 300,
        "max_question_chars": 50,
        "max_batch_questions": 8,
        "max_top_k": 5,
        "max_passages": 20,
        "max_body_bytes": 6 * 8 * 350 + 65_536,
    }
    assert health["index"] is None  # started without --index
    assert health["memory"]["rss_kib"] > 0


def test_the_answer_and_its_character_offsets(server):
    (answer,) = ask(server, CAPITAL)
    text, start, end = span_of(CAPITAL)
    assert (answer["text"], answer["start"], answer["end"]) == ("부산", start, end)
    assert CAPITAL["context"][answer["start"] : answer["end"]] == "부산"
    assert answer["score"] == pytest.approx(2 * MARK, abs=1e-4)
    assert 0 < answer["probability"] <= 1


def test_offsets_count_characters_of_the_context_as_sent(server):
    # Text before the answer outside the Basic Multilingual Plane (two UTF-16 units, one character)
    # and an NFD-decomposed syllable (three code points): offsets still index the string as sent.
    context = "🙂 " + "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다."
    nfd = context.replace("한", "\u1112\u1161\u11ab")
    for text in (context, nfd):
        (answer,) = ask(server, {"question": CAPITAL["question"], "context": text})
        assert text[answer["start"] : answer["end"]] == "부산" == answer["text"]


def test_top_k_lists_answers_best_first(server):
    answers = ask(server, CAPITAL, top_k=5)
    assert len(answers) == 5
    assert answers[0]["text"] == "부산"
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert scores[1:] == pytest.approx([MARK] * 4, abs=1e-4)  # spans with one marked end
    for a in answers:
        assert CAPITAL["context"][a["start"] : a["end"]] == a["text"]


def test_the_null_answer_wins_when_impossible_answers_are_allowed(server):
    answers = ask(server, CAPITAL, handle_impossible_answer=True, top_k=2)
    assert (answers[0]["text"], answers[0]["start"], answers[0]["end"]) == ("", 0, 0)
    assert answers[0]["score"] == pytest.approx(2 * CLS, abs=1e-4)
    assert answers[1]["text"] == "부산"
    # Not allowed (the model was not trained with version_2_with_negative): the span, as before.
    assert ask(server, CAPITAL, handle_impossible_answer=False)[0]["text"] == "부산"
    # A threshold above the null lead (20 - 16) gives the span back.
    assert ask(server, CAPITAL, handle_impossible_answer=True, null_score_diff_threshold=5.0)[0]["text"] == "부산"


def test_the_batch_form_answers_in_order(server):
    questions = [{"question": ex["question"], "context": ex["context"]} for ex in KOREAN_EXAMPLES]
    questions[1] = {**questions[1], "top_k": 3}
    questions[2] = {**questions[2], "handle_impossible_answer": True}
    status, body = call(server, "/v1/answer/batch", {"questions": questions})
    assert status == 200, body
    assert len(body["results"]) == len(KOREAN_EXAMPLES)
    for i, (ex, result) in enumerate(zip(KOREAN_EXAMPLES, body["results"])):
        answers = result["answers"]
        assert len(answers) == (3 if i == 1 else 1)
        if i == 2:
            assert answers[0]["text"] == ""
        else:
            assert (answers[0]["text"], answers[0]["start"], answers[0]["end"]) == span_of(ex)
    # The same numbers as one question at a time.
    assert body["results"][1]["answers"] == ask(server, KOREAN_EXAMPLES[1], top_k=3)


def test_concurrent_requests_each_get_their_own_answer(server):
    before = call(server, "/health")[1]["queue"]
    failures: list[str] = []
    barrier = threading.Barrier(16)

    def client(n: int) -> None:
        barrier.wait()
        for round_ in range(4):
            example = KOREAN_EXAMPLES[(n + round_) % len(KOREAN_EXAMPLES)]
            options = {"top_k": 2} if n % 3 == 0 else {}
            if n % 5 == 0:
                options["handle_impossible_answer"] = True
            try:
                answers = ask(server, example, **options)
            except AssertionError as err:
                failures.append(f"client {n}: {err}")
                continue
            expected = ("", 0, 0) if n % 5 == 0 else span_of(example)
            got = (answers[0]["text"], answers[0]["start"], answers[0]["end"])
            if got != expected or len(answers) != options.get("top_k", 1):
                failures.append(
                    f"client {n} round {round_} ({example['id']}): {got} ({len(answers)} answers), expected {expected}"
                )

    run_concurrently(client, 16)
    assert not failures, "\n".join(failures)
    after = call(server, "/health")[1]["queue"]
    assert after["questions"] - before["questions"] == 64
    assert after["batches"] - before["batches"] < 64, "no two requests shared a batch"
    assert after["largest_batch"] > 1


# --------------------------------------------------------------------------------------------------
# Bad input: a 4xx naming the field, and the server keeps answering
# --------------------------------------------------------------------------------------------------

GOOD = {"question": CAPITAL["question"], "context": CAPITAL["context"]}
BAD_REQUESTS = [
    # (id, path, body or raw bytes, status, field, problem)
    ("not json", "/v1/answer", b'{"question": "', 400, "body", "json_invalid"),
    ("empty body", "/v1/answer", b"", 422, "body", "missing"),
    ("not utf-8", "/v1/answer", b'{"question": "\xff\xfe", "context": "x"}', 400, "body", "json_invalid"),
    ("a list", "/v1/answer", [GOOD], 422, "body", "model_attributes_type"),
    ("missing question", "/v1/answer", {"context": "x"}, 422, "question", "missing"),
    ("missing context", "/v1/answer", {"question": "x"}, 422, "context", "missing"),
    ("question a number", "/v1/answer", {**GOOD, "question": 3}, 422, "question", "string_type"),
    ("context null", "/v1/answer", {**GOOD, "context": None}, 422, "context", "string_type"),
    ("top_k a string", "/v1/answer", {**GOOD, "top_k": "3"}, 422, "top_k", "int_type"),
    ("top_k a bool", "/v1/answer", {**GOOD, "top_k": True}, 422, "top_k", "int_type"),
    (
        "flag a string",
        "/v1/answer",
        {**GOOD, "handle_impossible_answer": "yes"},
        422,
        "handle_impossible_answer",
        "bool_type",
    ),
    ("empty question", "/v1/answer", {**GOOD, "question": ""}, 422, "question", "empty"),
    ("blank context", "/v1/answer", {**GOOD, "context": " \n\t"}, 422, "context", "empty"),
    ("lone surrogate", "/v1/answer", b'{"question": "\\ud800?", "context": "x"}', 422, "question", "not_encodable"),
    ("long context", "/v1/answer", {**GOOD, "context": "가" * 301}, 422, "context", "too_long"),
    ("long question", "/v1/answer", {**GOOD, "question": "가" * 51}, 422, "question", "too_long"),
    ("top_k 0", "/v1/answer", {**GOOD, "top_k": 0}, 422, "top_k", "out_of_range"),
    ("top_k over the limit", "/v1/answer", {**GOOD, "top_k": 6}, 422, "top_k", "out_of_range"),
    (
        "NaN threshold",
        "/v1/answer",
        b'{"question": "x", "context": "y", "null_score_diff_threshold": NaN}',
        422,
        "null_score_diff_threshold",
        "not_finite",
    ),
    ("unknown field", "/v1/answer", {**GOOD, "qustion": "x"}, 422, "qustion", "extra_forbidden"),
    ("body too large", "/v1/answer", {**GOOD, "context": "가" * 100_000}, 413, "body", "too_large"),
    ("batch not a list", "/v1/answer/batch", {"questions": GOOD}, 422, "questions", "list_type"),
    ("batch empty", "/v1/answer/batch", {"questions": []}, 422, "questions", "empty"),
    ("batch too large", "/v1/answer/batch", {"questions": [GOOD] * 9}, 422, "questions", "too_long"),
    (
        "batch item missing",
        "/v1/answer/batch",
        {"questions": [GOOD, {"question": "x"}]},
        422,
        "questions[1].context",
        "missing",
    ),
    (
        "batch item empty",
        "/v1/answer/batch",
        {"questions": [GOOD, {**GOOD, "question": ""}]},
        422,
        "questions[1].question",
        "empty",
    ),
]


@pytest.mark.parametrize(
    "path, body, status, field, problem", [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, status, field, problem):
    raw = body if isinstance(body, bytes) else None
    got, reply = call(server, path, None if raw is not None else body, raw=raw)
    assert got == status, reply
    error = reply["error"]
    assert (error["field"], error["problem"]) == (field, problem), error
    assert field.split(".")[-1].split("[")[0] in error["message"] or field == "body", error["message"]
    # ... and the server still answers.
    (answer,) = ask(server, CAPITAL)
    assert answer["text"] == "부산"


def test_wrong_method_path_and_content_type_are_json_errors(server):
    assert call(server, "/nowhere")[0] == 404
    status, reply = call(server, "/v1/answer", method="GET")
    assert status == 405 and reply["error"]["type"] == "method_not_allowed"
    status, reply = call(server, "/v1/answer", raw=json.dumps(GOOD).encode(), content_type="text/plain")
    assert status == 422 and reply["error"]["field"] == "body"
    assert "application/json" in reply["error"]["message"]
    assert ask(server, CAPITAL)[0]["text"] == "부산"


def test_the_page_and_the_openapi_schema_are_served(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/html")
        page = response.read().decode("utf-8")
    assert '<meta charset="utf-8">' in page and "Noto Sans CJK KR" in page
    for external in ("http://", "https://", "//cdn", "<link"):
        assert external not in page, f"the page must not load anything from elsewhere ({external})"
    status, schema = call(server, "/openapi.json")
    assert status == 200
    assert {"/v1/answer", "/v1/answer/batch", "/v1/ask", "/health"} <= set(schema["paths"])
    with urllib.request.urlopen(server.url + "/docs", timeout=30) as response:
        assert response.status == 200


# --------------------------------------------------------------------------------------------------
# POST /v1/ask: retrieve passages of an index (kqa serve --index), read them with the model
# --------------------------------------------------------------------------------------------------

# Passages of at most 50 characters, so seoul.txt is two passages and its answer is in the second
# (document offsets != passage offsets). Bigram overlap with the questions below decides retrieval:
# the marked spans (부산, 영국, 반포) are the answers, each in one document.
CORPUS = {
    "seoul.txt": "서울특별시는 한강을 끼고 있다.\n\n대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다.\n",
    "newton.txt": "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자로, 미적분학과 고전역학의 기초를 다졌다.\n",
    "sejong.txt": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.\n\n"
    "한글은 오늘날 널리 쓰인다.\n",
    "hangang.txt": "한강은 서울을 지나 서해로 흘러간다.\n",
}
PASSAGE_IDS = [
    "hangang.txt#0-20",
    "newton.txt#0-50",
    "sejong.txt#0-42",
    "sejong.txt#44-59",
    "seoul.txt#0-17",
    "seoul.txt#19-52",
]
PORT_CITY = "가장 큰 항구 도시는 어디인가?"  # shares 5 bigrams with seoul.txt#19-52, one (시는) with seoul.txt#0-17
ASK_ARGS = ["--passages", "2", "--max_passages", "4"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def index_dir(corpus_dir, tmp_path_factory) -> Path:
    from kqa.retrieval import PassageSettings, Retriever, RetrieverSettings, load_corpus

    documents, report = load_corpus(corpus_dir)
    retriever = Retriever.build(
        documents,
        RetrieverSettings(method="sparse", analyzer="bigrams"),
        passage_settings=PassageSettings(max_chars=50, overlap_chars=0),
        corpus_report=report,
    )
    assert [p.id for p in sorted(retriever.passages, key=lambda p: p.id)] == PASSAGE_IDS
    return retriever.save(tmp_path_factory.mktemp("index") / "index")


@pytest.fixture(scope="module")
def ask_server(model_dir, index_dir, tmp_path_factory):
    process = ServerProcess(
        model_dir,
        ["--index", index_dir, "--device", "cpu", *LIMITS, *ASK_ARGS],
        log_path=tmp_path_factory.mktemp("ask_server") / "server.log",
    )
    process.start()
    yield process
    code = process.stop()
    assert code in (0, -15), f"the server exited with {code}:\n{process.log_tail()}"


def ask_index(server, question: str, **options) -> dict:
    status, body = call(server, "/v1/ask", {"question": question, **options})
    assert status == 200, body
    assert body["question"] == question
    return body


def assert_in_its_document(corpus_dir: Path, answer: dict) -> None:
    text = (corpus_dir / answer["doc_id"]).read_text(encoding="utf-8")
    assert text[answer["start"] : answer["end"]] == answer["text"]
    assert answer["passage_start"] <= answer["start"] < answer["end"] <= answer["passage_end"]
    assert answer["passage_id"] == f"{answer['doc_id']}#{answer['passage_start']}-{answer['passage_end']}"


def test_health_shows_the_index(ask_server, index_dir):
    status, health = call(ask_server, "/health")
    assert status == 200
    index = health["index"]
    assert (index["path"], index["documents"], index["passages"], index["method"], index["analyzer"]) == (
        str(index_dir),
        4,
        6,
        "sparse",
        "bigrams",
    )
    assert index["default_passages"] == 2 and index["embedder"] is None
    assert health["limits"]["max_passages"] == 4


@pytest.mark.parametrize(
    "question, text, doc_id, passage_id",
    [
        (PORT_CITY, "부산", "seoul.txt", "seoul.txt#19-52"),
        ("훈민정음은 언제 반포되었는가?", "반포", "sejong.txt", "sejong.txt#0-42"),
        ("뉴턴은 어느 나라 사람인가?", "영국", "newton.txt", "newton.txt#0-50"),
    ],
)
def test_ask_finds_the_answer_in_its_document(ask_server, corpus_dir, question, text, doc_id, passage_id):
    body = ask_index(ask_server, question)
    (answer,) = body["answers"]
    document = CORPUS[doc_id]
    start = document.index(text)
    assert (answer["text"], answer["doc_id"], answer["title"]) == (text, doc_id, doc_id[: -len(".txt")])
    assert (answer["start"], answer["end"]) == (start, start + len(text))
    assert (answer["passage_id"], answer["retrieval_rank"]) == (passage_id, 1)
    assert answer["score"] == pytest.approx(2 * MARK, abs=1e-4)
    # P(passage) (softmax of the BM25 scores of the passages read) × P(span | passage) (near 1 here)
    bm25 = [p["sparse_score"] for p in body["passages"]]
    passage_probability = 1 / sum(math.exp(b - bm25[0]) for b in bm25)
    assert 0.99 * passage_probability < answer["probability"] <= passage_probability
    assert_in_its_document(corpus_dir, answer)
    assert body["passages"][0]["passage_id"] == passage_id
    assert answer["retrieval_score"] == body["passages"][0]["score"]
    assert answer["null_score"] == pytest.approx(2 * CLS, abs=1e-4)  # its passage's CLS score


def test_ask_offsets_are_offsets_into_the_document_not_the_passage(ask_server, corpus_dir):
    (answer,) = ask_index(ask_server, PORT_CITY)["answers"]
    # 부산 is at 28 of the passage that starts at 19 of seoul.txt.
    assert (answer["passage_start"], answer["passage_end"], answer["start"], answer["end"]) == (19, 52, 47, 49)
    assert_in_its_document(corpus_dir, answer)


def test_ask_lists_the_passages_read_best_first(ask_server):
    body = ask_index(ask_server, PORT_CITY, passages=4)
    passages = body["passages"]
    # BM25 returns only passages sharing a term with the question: two, though four were allowed.
    assert [(p["rank"], p["passage_id"]) for p in passages] == [(1, "seoul.txt#19-52"), (2, "seoul.txt#0-17")]
    assert passages[0]["score"] > passages[1]["score"] > 0
    assert passages[0]["sparse_score"] == passages[0]["score"] and passages[0]["dense_score"] is None
    for p in passages:
        assert CORPUS[p["doc_id"]][p["start"] : p["end"]] == p["text"]


def test_ask_reads_as_many_passages_as_asked(ask_server, corpus_dir):
    question = "한강과 서울"  # 한강 / 서울 in three passages; 부산 (the marked span) only in the third
    default = ask_index(ask_server, question)  # --passages 2
    assert [p["passage_id"] for p in default["passages"]] == ["seoul.txt#0-17", "hangang.txt#0-20"]
    assert default["answers"][0]["score"] == pytest.approx(0.0, abs=1e-4)  # no marked span read
    three = ask_index(ask_server, question, passages=3)
    assert [p["passage_id"] for p in three["passages"]] == ["seoul.txt#0-17", "hangang.txt#0-20", "seoul.txt#19-52"]
    assert [p["rank"] for p in three["passages"]] == [1, 2, 3]
    (answer,) = three["answers"]
    assert (answer["text"], answer["doc_id"], answer["retrieval_rank"]) == ("부산", "seoul.txt", 3)
    assert_in_its_document(corpus_dir, answer)
    one = ask_index(ask_server, question, passages=1)
    assert [p["passage_id"] for p in one["passages"]] == ["seoul.txt#0-17"]
    assert {a["passage_id"] for a in ask_index(ask_server, question, passages=1, top_k=3)["answers"]} == {
        "seoul.txt#0-17"
    }
    # null is the server's default too
    assert ask_index(ask_server, question, passages=None)["passages"] == default["passages"]


def test_ask_top_k_answers_best_first_across_passages(ask_server, corpus_dir):
    body = ask_index(ask_server, PORT_CITY, top_k=3)
    answers = body["answers"]
    assert len(answers) == 3
    assert answers[0]["text"] == "부산"
    assert answers[0]["score"] == pytest.approx(2 * MARK, abs=1e-4)
    # ranked by P(passage) × P(span | passage), not by span score: no answer beats its passage's probability
    bm25 = {p["passage_id"]: p["sparse_score"] for p in body["passages"]}
    total = sum(math.exp(b) for b in bm25.values())
    for a in answers:
        assert a["probability"] <= math.exp(bm25[a["passage_id"]]) / total + 1e-9
    probabilities = [a["probability"] for a in answers]
    assert probabilities == sorted(probabilities, reverse=True)
    for a in answers:
        assert_in_its_document(corpus_dir, a)


def test_ask_without_a_matching_passage_has_no_answers(ask_server):
    assert ask_index(ask_server, "무엇?") == {
        "question": "무엇?",
        "answers": [],
        "passages": [],
        "no_answer": True,
        "best_confidence": None,
        "score_threshold": None,
    }


GOOD_ASK = {"question": PORT_CITY}
BAD_ASKS = [
    # (id, body or raw bytes, status, field, problem)
    ("not json", b'{"question": ', 400, "body", "json_invalid"),
    ("a list", [GOOD_ASK], 422, "body", "model_attributes_type"),
    ("missing question", {"top_k": 1}, 422, "question", "missing"),
    ("question a number", {"question": 3}, 422, "question", "string_type"),
    ("question null", {"question": None}, 422, "question", "string_type"),
    ("empty question", {"question": ""}, 422, "question", "empty"),
    ("blank question", {"question": " \n\t"}, 422, "question", "empty"),
    ("long question", {"question": "가" * 51}, 422, "question", "too_long"),
    ("lone surrogate", b'{"question": "\\ud800?"}', 422, "question", "not_encodable"),
    ("top_k a string", {**GOOD_ASK, "top_k": "2"}, 422, "top_k", "int_type"),
    ("top_k 0", {**GOOD_ASK, "top_k": 0}, 422, "top_k", "out_of_range"),
    ("top_k over the limit", {**GOOD_ASK, "top_k": 6}, 422, "top_k", "out_of_range"),
    ("passages a string", {**GOOD_ASK, "passages": "3"}, 422, "passages", "int_type"),
    ("passages a bool", {**GOOD_ASK, "passages": True}, 422, "passages", "int_type"),
    ("passages a float", {**GOOD_ASK, "passages": 2.5}, 422, "passages", "int_type"),
    ("passages 0", {**GOOD_ASK, "passages": 0}, 422, "passages", "out_of_range"),
    ("passages negative", {**GOOD_ASK, "passages": -1}, 422, "passages", "out_of_range"),
    ("passages over the limit", {**GOOD_ASK, "passages": 5}, 422, "passages", "out_of_range"),
    ("a context", {**GOOD_ASK, "context": "대한민국의 수도는 서울이며"}, 422, "context", "extra_forbidden"),
]


@pytest.mark.parametrize("body, status, field, problem", [r[1:] for r in BAD_ASKS], ids=[r[0] for r in BAD_ASKS])
def test_bad_ask_is_a_4xx_naming_the_field(ask_server, corpus_dir, body, status, field, problem):
    raw = body if isinstance(body, bytes) else None
    got, reply = call(ask_server, "/v1/ask", None if raw is not None else body, raw=raw)
    assert got == status, reply
    error = reply["error"]
    assert (error["type"], error["field"], error["problem"]) == ("invalid_request", field, problem), error
    assert field in error["message"] or field == "body", error["message"]
    if problem == "out_of_range":
        assert error["limit"] == {"top_k": 5, "passages": 4}[field]
    # ... and the server still answers.
    (answer,) = ask_index(ask_server, PORT_CITY)["answers"]
    assert (answer["text"], answer["doc_id"], answer["start"]) == ("부산", "seoul.txt", 47)


def test_ask_and_answer_share_one_server(ask_server):
    # /v1/answer still works beside /v1/ask, and their model calls do not disturb each other.
    before = call(ask_server, "/health")[1]["index"]["ask"]
    failures: list[str] = []

    def client(n: int) -> None:
        for _ in range(3):
            try:
                if n % 2:
                    assert ask(ask_server, CAPITAL)[0]["text"] == "부산"
                else:
                    (answer,) = ask_index(ask_server, "뉴턴은 어느 나라 사람인가?")["answers"]
                    assert (answer["text"], answer["doc_id"]) == ("영국", "newton.txt")
            except AssertionError as err:
                failures.append(f"client {n}: {err}")

    run_concurrently(client, 6)
    assert not failures, "\n".join(failures)
    after = call(ask_server, "/health")[1]["index"]["ask"]
    assert (after["requests"] - before["requests"], after["errors"]) == (9, 0)


def test_ask_without_index_is_a_404_that_says_so(server):
    status, reply = call(server, "/v1/ask", GOOD_ASK)
    assert status == 404, reply
    error = reply["error"]
    assert error["type"] == "no_index" and "--index" in error["message"]
    assert ask(server, CAPITAL)[0]["text"] == "부산"  # and the server still answers


def test_serve_with_a_missing_index_exits_naming_it(model_dir, tmp_path):
    missing = tmp_path / "no_index"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kqa",
            "serve",
            "--model",
            str(model_dir),
            "--index",
            str(missing),
            "--device",
            "cpu",
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(missing) in proc.stderr and "index.json" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_refuses_passages_over_max_passages(model_dir, index_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kqa",
            "serve",
            "--model",
            str(model_dir),
            "--index",
            str(index_dir),
            "--passages",
            "5",
            "--max_passages",
            "4",
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--passages" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# In process: an internal error is a 500 with an id that is also logged
# --------------------------------------------------------------------------------------------------


def test_an_internal_error_is_a_500_with_a_logged_id(caplog):
    from fastapi.testclient import TestClient

    from kqa.serving.app import create_app

    class Broken:
        class settings:  # noqa: N801 - mimics QuestionAnswerer.settings
            class postprocess:  # noqa: N801
                n_best_size = 20

        def predict_rows(self, rows, **options):
            raise RuntimeError("the model fell over")

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as client:
        response = client.post("/v1/answer", json=GOOD)
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "internal" and error["id"] in error["message"]
        assert "the model fell over" not in error["message"]  # details go to the log only
        assert any(error["id"] in r.getMessage() and "the model fell over" in r.getMessage() for r in caplog.records)
        assert client.get("/health").status_code == 200


def test_serve_passes_backend_through_and_names_a_bad_one(model_dir):
    # Where QuestionAnswerer.from_pretrained has a backend option it judges the name; where it has
    # none, `kqa serve` says so. Either way: exit code 2 and a message naming the backend, no server.
    proc = subprocess.run(
        [sys.executable, "-m", "kqa", "serve", "--model", str(model_dir), "--backend", "nonsense", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "backend" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# The load test, in its smallest form
# --------------------------------------------------------------------------------------------------


def test_bench_server_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_server.py"),
            "--tiny",
            "--requests",
            "24",
            "--concurrency",
            "1",
            "4",
            "--warmup",
            "2",
            "--max-seconds",
            "30",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = result["results"]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {(m, c) for m in ("batched", "unbatched") for c in (1, 4)}
    for row in rows:
        assert row["errors"] == 0 and row["wrong_answers"] == 0, row
        assert row["requests"] == 24 and row["throughput_rps"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    for server in result["servers"].values():
        assert server["rss_kib_before"] > 0 and server["rss_kib_after"] > 0
    assert "p50 ms" in proc.stdout


# --------------------------------------------------------------------------------------------------
# Calibrated confidence and abstention (kqa calibrate): P(correct) = sigmoid(span score - 17), so the
# marked span (score 16) has confidence sigmoid(-1) = 0.27, below the stored threshold 0.5.
# --------------------------------------------------------------------------------------------------

BUSAN_CONFIDENCE = 1 / (1 + math.exp(1.0))


@pytest.fixture(scope="module")
def calibrated_server(model_dir, index_dir, tmp_path_factory):
    import shutil

    from kqa.calibration import Calibrator, save_calibrator

    calibrated = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(model_dir, calibrated)
    save_calibrator(calibrated, Calibrator("platt", {"features": ["score"], "weights": [1.0], "bias": -17.0}, 0.5))
    process = ServerProcess(
        calibrated,
        ["--index", index_dir, "--device", "cpu", *LIMITS, *ASK_ARGS],
        log_path=tmp_path_factory.mktemp("calibrated_server") / "server.log",
    )
    process.start()
    yield process
    code = process.stop()
    assert code in (0, -15), f"the server exited with {code}:\n{process.log_tail()}"


def test_ask_below_the_threshold_is_the_no_answer_shape(calibrated_server):
    body = ask_index(calibrated_server, PORT_CITY)
    assert body["answers"] == [] and body["no_answer"] is True
    assert body["best_confidence"] == pytest.approx(BUSAN_CONFIDENCE, abs=1e-3)
    assert body["score_threshold"] == 0.5 and body["passages"]  # the passages read are still shown
    (answer,) = ask_index(calibrated_server, PORT_CITY, score_threshold=0.2)["answers"]
    assert (answer["text"], answer["doc_id"]) == ("부산", "seoul.txt")
    assert answer["confidence"] == pytest.approx(BUSAN_CONFIDENCE, abs=1e-3)
    status, reply = call(calibrated_server, "/v1/answer", {"question": PORT_CITY, "context": "항구 도시는 부산이다."})
    assert status == 200 and reply["answers"][0]["confidence"] == pytest.approx(BUSAN_CONFIDENCE, abs=1e-3)


@pytest.mark.parametrize("value, problem", [(1.5, "out_of_range"), (-0.1, "out_of_range"), ("0.5", "float_type")])
def test_a_bad_score_threshold_is_a_422_naming_it(calibrated_server, value, problem):
    status, reply = call(calibrated_server, "/v1/ask", {"question": PORT_CITY, "score_threshold": value})
    assert status == 422, reply
    assert (reply["error"]["field"], reply["error"]["problem"]) == ("score_threshold", problem)


def test_a_score_threshold_needs_a_calibrated_model(ask_server):
    status, reply = call(ask_server, "/v1/ask", {"question": PORT_CITY, "score_threshold": 0.5})
    assert status == 422, reply
    assert (reply["error"]["field"], reply["error"]["problem"]) == ("score_threshold", "no_calibrator")
    assert "kqa calibrate" in reply["error"]["message"]
