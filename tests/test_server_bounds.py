"""`kqa serve` bounds what it reads and what it writes: a real server process, over real HTTP.

- a body over `max_body_bytes` is a 413 as soon as the limit is passed, also when it is sent chunked
  (no Content-Length to check up front), and the server does not wait for the rest.

The server is the marked-span model of tests/test_server.py with the default character limits and
at most 8 questions per batch: `max_body_bytes` = 4 × 8 × (10,000 + 1,000) + 64 KiB = 417,536 bytes.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

pytest.importorskip("fastapi", reason="kqa serve needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("uvicorn", reason="kqa serve needs uvicorn (pip install -r requirements.txt)")

from test_server import CAPITAL, GOOD, ask, build_marked_model, call  # noqa: E402

from kqa.serving.harness import ServerProcess  # noqa: E402

MAX_BATCH = 8
MAX_BODY = 4 * MAX_BATCH * (10_000 + 1_000) + 65_536


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


def test_a_chunked_body_over_the_limit_is_a_413_before_the_rest_is_sent(server):
    sock = open_chunked(server)
    with sock:
        # The limit and a bit more, and then nothing: not even the last (empty) chunk.
        send_chunks(sock, b'{"question": "' + b"a" * (MAX_BODY + 16_384))
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


def test_a_20_mb_chunked_body_is_cut_off_at_the_limit(server):
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


def test_a_content_length_over_the_limit_is_a_413_without_reading_the_body(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        status, headers, body = read_reply(sock)
    assert status == 413 and json.loads(body)["error"]["limit"] == MAX_BODY
    assert headers.get("connection") == "close"
