"""The drain of `kqa.serving.limits.BodyLimit`, in process (no server, fast): a body over the limit is
read to its end and thrown away before the 413, within a byte bound and a time bound; the connection
is closed only when the body did not end within them (a client that stopped sending, one that never
stops, a declared size over the drain bound). Over real HTTP: tests/test_server_bounds.py."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("starlette", reason="kqa serve needs fastapi (pip install -r requirements.txt)")

from kqa.serving.limits import BodyLimit  # noqa: E402


def _refusal(messages: list[dict], headers=(), drain_seconds: float = 60.0) -> tuple[int, dict, float, bool]:
    """`BodyLimit` (limit 10 bytes, drain 40) in front of an app that reads the whole body; `receive`
    gives `messages`, then waits forever (a client that stopped sending). The reply's status and
    headers, the seconds it took, and whether the app was called."""
    sent, called = [], []

    async def app(scope, receive, send):
        called.append(True)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
    started = time.monotonic()
    asyncio.run(BodyLimit(app, 10, drain_bytes=40, drain_seconds=drain_seconds)(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), time.monotonic() - started, bool(called)


def chunk(size: int, more: bool = True) -> dict:
    return {"type": "http.request", "body": b"x" * size, "more_body": more}


@pytest.mark.parametrize(
    "messages, headers, keeps_alive",
    [
        ([chunk(11), chunk(20, more=False)], (), True),  # over the limit, ends within the drain
        ([chunk(11)] * 10, (), False),  # never ends: cut off at the drain bound, not at the timeout
        ([chunk(30, more=False)], [(b"content-length", b"30")], True),  # declared, within the drain
        ([], [(b"content-length", b"41")], False),  # declared over the drain bound: nothing is read
    ],
    ids=["chunked, ends", "chunked, endless", "content-length", "content-length over the drain"],
)
def test_the_drain_replies_413_and_closes_only_a_body_it_did_not_finish(messages, headers, keeps_alive):
    status, reply_headers, seconds, _ = _refusal(list(messages), headers)
    assert status == 413 and seconds < 5
    assert (reply_headers.get(b"connection") != b"close") == keeps_alive, reply_headers


@pytest.mark.parametrize(
    "messages, headers",
    [([chunk(11)], ()), ([chunk(5)], [(b"content-length", b"30")])],
    ids=["chunked", "content-length"],
)
def test_a_client_that_stops_sending_gets_a_413_and_a_close_after_the_drain_time(messages, headers):
    status, reply_headers, seconds, called = _refusal(list(messages), headers, drain_seconds=0.3)
    assert status == 413 and reply_headers.get(b"connection") == b"close"
    assert 0.3 <= seconds < 5
    assert called == (not headers)  # a declared size over the limit never reaches the app
