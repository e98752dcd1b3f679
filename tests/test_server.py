"""`kqa serve` as a real process: a `python -m kqa serve` child on 127.0.0.1, tested over HTTP.

The model is `token_scoring_model`, whose answers are known by construction: in each context one
span is marked ("부" … "##산" of 부산, 영국, 반포), and [CLS] scores above every span, so the null
answer wins exactly when `handle_impossible_answer` is on. The server runs once for the module.
"""

from __future__ import annotations

import json
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

from kqa.server import ServerProcess  # noqa: E402
from kqa.testing import KOREAN_EXAMPLES, token_scoring_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
MARK = 8.0
CLS = 10.0  # null score 2 * CLS = 20 beats the marked span's 2 * MARK = 16
MARKED_SPANS = {"부산": ("부", "##산"), "영국": ("영", "##국"), "반포": ("반", "##포")}
EXPECTED = {"ko-1": "부산", "ko-2": "부산", "ko-3": "영국", "ko-4": "영국", "ko-5": "반포", "ko-6": "반포"}
CAPITAL = KOREAN_EXAMPLES[0]
LIMITS = ["--max_context_chars", "300", "--max_question_chars", "50", "--max_batch_questions", "8",
          "--max_top_k", "5"]


def build_marked_model(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = token_scoring_model(tokenizer, {"[CLS]": CLS, **{s: MARK for s, _ in MARKED_SPANS.values()}},
                                {"[CLS]": CLS, **{e: MARK for _, e in MARKED_SPANS.values()}})
    model.save_pretrained(out, tokenizer=tokenizer, kqa_config=SETTINGS)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return build_marked_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    # A long gathering window so that concurrent requests really share model calls.
    process = ServerProcess(model_dir, ["--batch_size", "8", "--max_wait_ms", "30", "--device", "cpu", *LIMITS],
                            log_path=tmp_path_factory.mktemp("server") / "server.log")
    process.start()
    yield process
    code = process.stop()
    assert code in (0, -15), f"the server exited with {code}:\n{process.log_tail()}"


def call(server, path: str, body=None, *, raw: bytes | None = None, content_type: str = "application/json",
         method: str | None = None) -> tuple[int, dict]:
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
    status, body = call(server, "/v1/answer", {"question": example["question"], "context": example["context"],
                                               **options})
    assert status == 200, body
    return body["answers"]


def span_of(example: dict) -> tuple[str, int, int]:
    text = EXPECTED[example["id"]]
    start = example["context"].index(text)
    return text, start, start + len(text)


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
    assert health["limits"] == {"max_context_chars": 300, "max_question_chars": 50, "max_batch_questions": 8,
                                "max_top_k": 5, "max_body_bytes": 4 * 8 * 350 + 65_536}
    assert health["memory"]["rss_kib"] > 0


def test_the_answer_and_its_character_offsets(server):
    (answer,) = ask(server, CAPITAL)
    text, start, end = span_of(CAPITAL)
    assert (answer["text"], answer["start"], answer["end"]) == ("부산", start, end)
    assert CAPITAL["context"][answer["start"]:answer["end"]] == "부산"
    assert answer["score"] == pytest.approx(2 * MARK, abs=1e-4)
    assert 0 < answer["probability"] <= 1


def test_offsets_count_characters_of_the_context_as_sent(server):
    # Text before the answer outside the Basic Multilingual Plane (two UTF-16 units, one character)
    # and an NFD-decomposed syllable (three code points): offsets still index the string as sent.
    context = "🙂 " + "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다."
    nfd = context.replace("한", "\u1112\u1161\u11ab")
    for text in (context, nfd):
        (answer,) = ask(server, {"question": CAPITAL["question"], "context": text})
        assert text[answer["start"]:answer["end"]] == "부산" == answer["text"]


def test_top_k_lists_answers_best_first(server):
    answers = ask(server, CAPITAL, top_k=5)
    assert len(answers) == 5
    assert answers[0]["text"] == "부산"
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert scores[1:] == pytest.approx([MARK] * 4, abs=1e-4)  # spans with one marked end
    for a in answers:
        assert CAPITAL["context"][a["start"]:a["end"]] == a["text"]


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
                failures.append(f"client {n} round {round_} ({example['id']}): {got} ({len(answers)} answers), "
                                f"expected {expected}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
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
    ("flag a string", "/v1/answer", {**GOOD, "handle_impossible_answer": "yes"}, 422, "handle_impossible_answer",
     "bool_type"),
    ("empty question", "/v1/answer", {**GOOD, "question": ""}, 422, "question", "empty"),
    ("blank context", "/v1/answer", {**GOOD, "context": " \n\t"}, 422, "context", "empty"),
    ("lone surrogate", "/v1/answer", b'{"question": "\\ud800?", "context": "x"}', 422, "question", "not_encodable"),
    ("long context", "/v1/answer", {**GOOD, "context": "가" * 301}, 422, "context", "too_long"),
    ("long question", "/v1/answer", {**GOOD, "question": "가" * 51}, 422, "question", "too_long"),
    ("top_k 0", "/v1/answer", {**GOOD, "top_k": 0}, 422, "top_k", "out_of_range"),
    ("top_k over the limit", "/v1/answer", {**GOOD, "top_k": 6}, 422, "top_k", "out_of_range"),
    ("NaN threshold", "/v1/answer", b'{"question": "x", "context": "y", "null_score_diff_threshold": NaN}', 422,
     "null_score_diff_threshold", "not_finite"),
    ("unknown field", "/v1/answer", {**GOOD, "qustion": "x"}, 422, "qustion", "extra_forbidden"),
    ("body too large", "/v1/answer", {**GOOD, "context": "가" * 100_000}, 413, "body", "too_large"),
    ("batch not a list", "/v1/answer/batch", {"questions": GOOD}, 422, "questions", "list_type"),
    ("batch empty", "/v1/answer/batch", {"questions": []}, 422, "questions", "empty"),
    ("batch too large", "/v1/answer/batch", {"questions": [GOOD] * 9}, 422, "questions", "too_long"),
    ("batch item missing", "/v1/answer/batch", {"questions": [GOOD, {"question": "x"}]}, 422,
     "questions[1].context", "missing"),
    ("batch item empty", "/v1/answer/batch", {"questions": [GOOD, {**GOOD, "question": ""}]}, 422,
     "questions[1].question", "empty"),
]


@pytest.mark.parametrize("path, body, status, field, problem", [r[1:] for r in BAD_REQUESTS],
                         ids=[r[0] for r in BAD_REQUESTS])
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
    assert {"/v1/answer", "/v1/answer/batch", "/health"} <= set(schema["paths"])
    with urllib.request.urlopen(server.url + "/docs", timeout=30) as response:
        assert response.status == 200


# --------------------------------------------------------------------------------------------------
# In process: an internal error is a 500 with an id that is also logged
# --------------------------------------------------------------------------------------------------

def test_an_internal_error_is_a_500_with_a_logged_id(caplog):
    from fastapi.testclient import TestClient

    from kqa.server import create_app

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
        assert any(error["id"] in r.getMessage() and "the model fell over" in r.getMessage()
                   for r in caplog.records)
        assert client.get("/health").status_code == 200


def test_serve_passes_backend_through_and_names_a_bad_one(model_dir):
    # Where QuestionAnswerer.from_pretrained has a backend option it judges the name; where it has
    # none, `kqa serve` says so. Either way: exit code 2 and a message naming the backend, no server.
    proc = subprocess.run([sys.executable, "-m", "kqa", "serve", "--model", str(model_dir), "--backend", "nonsense",
                           "--port", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "backend" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# The load test, in its smallest form
# --------------------------------------------------------------------------------------------------

def test_bench_server_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_server.py"), "--tiny", "--requests", "24",
                           "--concurrency", "1", "4", "--warmup", "2", "--max-seconds", "30", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
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
