"""`kqa serve` bounds what it reads and what it writes: a real server process, over real HTTP.

- a body over `max_body_bytes` is a 413, also when it is sent chunked (no Content-Length to check
  up front), that an ordinary client (`http.client`) reads: the server drains the rest of the body
  (reads and throws it away) up to a bound, then replies and keeps the connection; past the bound,
  or for a declared size over it, it replies at once and closes, without waiting for the rest;
- an error reply lists at most `MAX_LISTED_ERRORS` problems and counts all of them (`errors_total`),
  and a batch over `max_batch_questions` is refused before its entries are validated;
- a lone surrogate in a field *name* is `not_encodable`, like one in a value; `HEAD /health` is a 200;
- a rejected body is not kept alive after its reply (server memory stays flat).

The server is the marked-span model of tests/test_server.py with the default character limits and
at most 8 questions per batch: `max_body_bytes` = 6 × 8 × (10,000 + 1,000) + 64 KiB = 593,536 bytes.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="kqa serve needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("uvicorn", reason="kqa serve needs uvicorn (pip install -r requirements.txt)")

from test_server import CAPITAL, GOOD, ask, build_marked_model, call  # noqa: E402

from kqa.serving.harness import ServerProcess  # noqa: E402
from kqa.serving.limits import BODY_DRAIN_FACTOR, BODY_DRAIN_SECONDS  # noqa: E402
from kqa.serving.schemas import MAX_LISTED_ERRORS  # noqa: E402

MAX_BATCH = 8
MAX_BODY = 6 * MAX_BATCH * (10_000 + 1_000) + 65_536
DRAIN = BODY_DRAIN_FACTOR * MAX_BODY  # what the server reads of a body over the limit before it closes
SMALL_REPLY = 10_000  # bytes: what a bounded error reply stays under


@pytest.fixture(scope="module")
def server(tiny_tokenizer_dir, tmp_path_factory):
    model_dir = build_marked_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("served") / "model")
    process = ServerProcess(
        model_dir,
        ["--device", "cpu", "--max_batch_questions", MAX_BATCH, "--log_level", "warning"],
        log_path=tmp_path_factory.mktemp("server") / "server.log",
    )
    process.start()
    yield process
    code = process.stop()
    assert code in (0, -15), f"the server exited with {code}:\n{process.log_tail()}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def open_chunked(server, path: str = "/v1/answer", timeout: float = 10.0) -> socket.socket:
    """A raw connection with the head of a chunked POST sent (no Content-Length: the server cannot
    know the size of the body before it has read it)."""
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    return sock


def send_chunks(sock: socket.socket, data: bytes, chunk: int = 16_384) -> int:
    """`data` as chunks of the body; how many bytes went out before the server closed the connection."""
    sent = 0
    try:
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except OSError:  # the server replied and closed: the rest is not needed
        pass
    return sent


def read_reply(sock: socket.socket) -> tuple[int, dict, bytes]:
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
    except TimeoutError:
        pytest.fail("no reply before the whole body was sent: the server waited for the rest of it")
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


# --------------------------------------------------------------------------------------------------
# What the server reads: the body cap
# --------------------------------------------------------------------------------------------------


def test_health_reports_the_body_limit(server):
    assert call(server, "/health")[1]["limits"]["max_body_bytes"] == MAX_BODY


def test_an_endless_chunked_body_is_a_413_at_the_drain_bound_before_the_rest_is_sent(server):
    sock = open_chunked(server)
    with sock:
        # Past the drain bound, and then nothing: not even the last (empty) chunk.
        send_chunks(sock, b'{"question": "' + b"a" * (DRAIN + 16_384))
        status, headers, body = read_reply(sock)
        assert status == 413, body[:300]
        error = json.loads(body)["error"]
        assert (error["type"], error["field"], error["problem"], error["limit"]) == (
            "invalid_request",
            "body",
            "too_large",
            MAX_BODY,
        )
        assert str(MAX_BODY) in error["message"]
        # The connection is closed: the rest of the body is never read.
        assert headers.get("connection") == "close"
    assert ask(server, CAPITAL)[0]["text"] == "부산"  # and the server keeps answering


def test_a_20_mb_chunked_body_is_cut_off_at_the_drain_bound(server):
    sock = open_chunked(server)
    with sock:
        sent = send_chunks(sock, b"[" * 20_000_000)
        status, _, body = read_reply(sock)
    assert status == 413, body[:300]
    assert sent < 20_000_000, "the server read the whole 20 MB body"
    assert ask(server, CAPITAL)[0]["text"] == "부산"


def test_a_chunked_body_under_the_limit_is_answered(server):
    sock = open_chunked(server)
    with sock:
        send_chunks(sock, json.dumps(GOOD, ensure_ascii=False).encode(), chunk=7)
        sock.sendall(b"0\r\n\r\n")
        status, _, body = read_reply(sock)
    assert status == 200, body[:300]
    assert json.loads(body)["answers"][0]["text"] == "부산"


def head_only(server, headers: str) -> tuple[int, dict, bytes]:
    """A POST whose head is sent and whose body is not; its reply, which must come before the server
    would have given up waiting for the body (BODY_DRAIN_SECONDS)."""
    with socket.create_connection((server.host, server.port), timeout=BODY_DRAIN_SECONDS / 2) as sock:
        sock.sendall(f"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
        first = sock.recv(12, socket.MSG_PEEK)  # http.client skips a "100 Continue": look before it does
        assert first.startswith(b"HTTP/1.1 413"), first
        return read_reply(sock)


def test_a_content_length_over_the_drain_bound_is_a_413_without_reading_the_body(server):
    status, headers, body = head_only(server, f"Content-Length: {DRAIN + 1}\r\n")
    assert status == 413 and json.loads(body)["error"]["limit"] == MAX_BODY
    assert headers.get("connection") == "close"


def test_a_client_that_expects_100_continue_gets_the_413_at_once(server):
    # Such a client (curl, for big bodies) sends no body until the server asks: nothing to drain.
    status, headers, body = head_only(server, f"Content-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n")
    assert status == 413 and json.loads(body)["error"]["limit"] == MAX_BODY
    assert headers.get("connection") == "close"


def post_over_http(conn: http.client.HTTPConnection, body) -> tuple[int, http.client.HTTPResponse, dict]:
    """A POST through `http.client`, as an ordinary client sends it: the whole body first (bytes: with a
    Content-Length; an iterator: chunked), then the reply."""
    conn.request("POST", "/v1/answer", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response, json.loads(response.read())


def chunks_of(size: int, chunk: int = 65_536):
    for start in range(0, size, chunk):
        yield b"a" * min(chunk, size - start)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_ordinary_client_reads_the_413_of_a_body_a_megabyte_over_the_limit(server, framing):
    # http.client sends the whole body before it reads the reply: a 413 sent (and the connection
    # closed) while it is still sending was a ConnectionResetError, never a 413.
    size = MAX_BODY + 1_000_000
    body = b"a" * size if framing == "content-length" else chunks_of(size)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        status, response, reply = post_over_http(conn, body)
        assert status == 413, reply
        assert (reply["error"]["problem"], reply["error"]["limit"]) == ("too_large", MAX_BODY)
        # The body was read to its end (and thrown away): the connection stays usable.
        assert not response.will_close, response.getheaders()
        sock = conn.sock
        conn.request("POST", "/v1/answer", body=json.dumps(GOOD).encode(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["answers"][0]["text"] == "부산"
        assert conn.sock is sock  # the same connection
    finally:
        conn.close()
    assert ask(server, CAPITAL)[0]["text"] == "부산"  # and on a new one


def test_big_rejected_bodies_do_not_pile_up_in_server_memory(server):
    # Each of these bodies used to be read to the end (20 MB), decoded (another 20 MB) and then kept
    # by a reference cycle of the JSON error until a full garbage collection: +38 MiB per request.
    before = rss_mib(server.pid)
    for _ in range(8):
        sock = open_chunked(server)
        with sock:
            try:
                send_chunks(sock, b'{"question": "' + b"a" * 20_000_000, chunk=262_144)
                sock.sendall(b"0\r\n\r\n")
                read_reply(sock)
            except OSError:  # the server closed the connection after its 413
                pass
    grown = rss_mib(server.pid) - before
    assert grown < 64, f"server RSS grew by {grown:.0f} MiB over 8 rejected 20 MB bodies"
    assert ask(server, CAPITAL)[0]["text"] == "부산"


# --------------------------------------------------------------------------------------------------
# What the server writes: bounded error replies
# --------------------------------------------------------------------------------------------------


def post_raw(server, path: str, body: bytes) -> tuple[int, int, dict]:
    """(status, reply size in bytes, reply) of a POST sent with a Content-Length."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    return response.status, len(payload), json.loads(payload)


def test_the_largest_valid_batch_sent_with_ascii_escapes_is_accepted(server):
    # What `requests.post(json=...)` sends: json.dumps with ensure_ascii=True writes 가 as \\uac00, 6 bytes
    # for one character. Every question and context at its limit must still fit under max_body_bytes.
    row = {"question": "나" * 1_000, "context": "가" * 10_000}
    body = json.dumps({"questions": [row] * MAX_BATCH}).encode()
    assert len(body) > 4 * MAX_BATCH * (10_000 + 1_000)  # more than 4 bytes a character
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        conn.request("POST", "/v1/answer/batch", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        reply = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, (response.status, str(reply)[:300])
    assert len(reply["results"]) == MAX_BATCH


def test_a_batch_of_100000_empty_rows_is_refused_with_a_small_reply(server):
    body = json.dumps({"questions": [{}] * 100_000}, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY
    status, size, reply = post_raw(server, "/v1/answer/batch", body)
    assert status == 422 and size < SMALL_REPLY, (status, size)
    error = reply["error"]
    # Refused for its length before any row is validated: one problem, not 200,000.
    assert (error["field"], error["problem"], error["limit"]) == ("questions", "too_long", MAX_BATCH)
    assert "100000" in error["message"] and str(MAX_BATCH) in error["message"]
    assert error["errors_total"] == 1 and len(error["errors"]) == 1
    assert ask(server, CAPITAL)[0]["text"] == "부산"


def test_an_error_reply_lists_the_first_problems_and_counts_them_all(server):
    status, size, reply = post_raw(server, "/v1/answer/batch", json.dumps({"questions": [{}] * MAX_BATCH}).encode())
    assert status == 422 and size < SMALL_REPLY
    error = reply["error"]
    assert error["errors_total"] == 2 * MAX_BATCH  # question and context missing in each row
    assert len(error["errors"]) == MAX_LISTED_ERRORS < 2 * MAX_BATCH
    assert [e["field"] for e in error["errors"][:3]] == [
        "questions[0].question",
        "questions[0].context",
        "questions[1].question",
    ]
    assert (error["field"], error["problem"]) == ("questions[0].question", "missing")


def test_20000_unknown_fields_get_a_small_reply(server):
    fields = {f"f{i}": 0 for i in range(20_000)}
    body = json.dumps({**GOOD, **fields}, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY
    status, size, reply = post_raw(server, "/v1/answer", body)
    assert status == 422 and size < SMALL_REPLY, (status, size)
    error = reply["error"]
    assert error["errors_total"] == 20_000 and len(error["errors"]) == MAX_LISTED_ERRORS
    assert (error["field"], error["problem"]) == ("f0", "extra_forbidden")
    assert ask(server, CAPITAL)[0]["text"] == "부산"


def test_a_long_unknown_field_name_is_cut_in_the_reply(server):
    name = "x" * 300_000
    status, size, reply = post_raw(server, "/v1/answer", json.dumps({**GOOD, name: 1}).encode())
    assert status == 422 and size < SMALL_REPLY, (status, size)
    error = reply["error"]
    assert error["problem"] == "extra_forbidden" and error["field"].startswith("xxx") and error["field"].endswith("…")


def test_a_single_problem_is_counted_too(server):
    status, reply = call(server, "/v1/answer", {"question": "x"})
    assert status == 422
    assert reply["error"]["errors_total"] == 1 and len(reply["error"]["errors"]) == 1


# --------------------------------------------------------------------------------------------------
# A lone surrogate in a field name, HEAD /health
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, raw, field",
    [
        ("/v1/answer", b'{"question": "q", "context": "c", "\\ud800x": 1}', "\\ud800x"),
        (
            "/v1/answer/batch",
            b'{"questions": [{"question": "q", "context": "c"}, {"\\udc00": 1}]}',
            "questions[1].\\udc00",
        ),
        ("/v1/answer", b'{"\\ud83d": 1}', "\\ud83d"),
    ],
    ids=["top level", "in a batch entry", "the only field"],
)
def test_a_lone_surrogate_in_a_field_name_is_not_encodable(server, path, raw, field):
    status, _, reply = post_raw(server, path, raw)
    assert status == 422, reply
    error = reply["error"]
    # Named as it was written in the JSON (the escape, since the character itself cannot be sent back).
    assert (error["type"], error["field"], error["problem"]) == ("invalid_request", field, "not_encodable"), error
    assert field in error["message"] and "lone surrogate" in error["message"], error["message"]
    assert ask(server, CAPITAL)[0]["text"] == "부산"


def test_head_health_is_a_200_without_a_body(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("HEAD", "/health")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b""
        # ... and the connection stays usable.
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["status"] == "ok"
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# In process: a rejected body is not kept alive by a reference cycle
# --------------------------------------------------------------------------------------------------


class _NoModel:
    class settings:  # noqa: N801 - mimics QuestionAnswerer.settings
        class postprocess:  # noqa: N801
            n_best_size = 20


def test_a_rejected_body_is_not_left_in_a_reference_cycle():
    """FastAPI raises its JSON and body-reading errors from a frame that also holds the error: a
    reference cycle through the traceback that keeps the body (and the decoded text) alive until the
    next full garbage collection, which a server with a model loaded runs rarely."""
    import gc

    from fastapi.testclient import TestClient
    from starlette.requests import Request

    from kqa.serving.app import create_app

    bodies = [b'{"question": "' + b"a" * 200_000, b'{"question": "\xff' + b"a" * 200_000 + b'"}']
    with TestClient(create_app(_NoModel())) as client:
        gc.collect()
        gc.disable()
        try:
            for body in bodies:
                response = client.post("/v1/answer", content=body, headers={"Content-Type": "application/json"})
                assert response.status_code == 400, response.text
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kept = [type(o).__name__ for o in gc.garbage if isinstance(o, (Request, ValueError))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not kept, f"left in reference cycles after the reply: {kept}"
