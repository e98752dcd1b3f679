"""The body cap of `kqa serve`: a request body over `ServerLimits.max_body_bytes` is a 413, whatever
the route and whatever the request says about its size.

A pure ASGI middleware, so that it sees the body as it arrives, before any route parses it. Once a
body is known to be over the limit (by its `Content-Length`, or counted chunk by chunk as the app
reads a chunked one), the rest of it is *drained*: received and thrown away, never kept or parsed,
up to `BODY_DRAIN_FACTOR` × the limit in all and for up to `BODY_DRAIN_SECONDS`, and only then is
the 413 sent. An ordinary client (`http.client`, `requests`, urllib3) sends its whole body before it
reads the reply; a reply sent, and the connection closed, while it is still sending makes the
kernel reset the connection, and the client sees a connection error instead of the 413. (Under
uvicorn, once the reply is complete `receive()` only says `http.disconnect`: the draining must come
before the reply.) This is nginx's lingering close, bounded:
- the body ends within the drain bounds: a 413, and the connection stays usable;
- it does not (an endless or very slow body), or its `Content-Length` is over the drain bound: a 413
  with `Connection: close`, at once, and nothing more is read; a client still sending may see a
  reset then;
- a `Content-Length` over the limit with `Expect: 100-continue`: a 413 with `Connection: close` at
  once (such a client sends no body before the server asks for it, and it is not asked for)."""

from __future__ import annotations

import asyncio

from kqa.serving.schemas import ApiError

BODY_DRAIN_FACTOR = 4  # drain up to 4 × max_body_bytes (17 MB by default): a few seconds at worst on a LAN
BODY_DRAIN_SECONDS = 10.0  # nginx's lingering_time is 30 s; the drain is for a client sending at full speed


class BodyTooLarge(Exception):
    """Raised into the app by `receive` once the body passed the limit (the 413 is already out)."""


def too_large(limit: int, declared: int | None = None) -> ApiError:
    """The 413 for a body over `limit` bytes; `declared`: its Content-Length, when it had one."""
    size = f"has {declared} bytes" if declared is not None else f"has more than {limit} bytes"
    return ApiError(
        413,
        "invalid_request",
        f"the request body {size} (the limit is {limit})",
        "body",
        problem="too_large",
        limit=limit,
    )


async def _reply(error: ApiError, scope, send, *, close: bool) -> None:
    """Send the 413; `close`: the rest of the body was not read, so the connection cannot carry another
    request (uvicorn closes it after a reply that says `Connection: close`)."""
    response = error.response()
    if close:
        response.headers["connection"] = "close"

    async def no_body():  # a JSONResponse does not read the request
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


async def drain(receive, received: int, budget: int, seconds: float) -> bool:
    """Receive and throw away the rest of a body of which `received` bytes were read: True when it
    ended (or the client went away) within `budget` bytes in all and `seconds`, False when it did not
    (then more of it is still to come, and the connection must be closed)."""

    async def rest() -> bool:
        nonlocal received
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return True  # the client is gone: nothing more will come
            received += len(message.get("body", b""))  # counted, not kept
            if not message.get("more_body", False):
                return True
            if received > budget:
                return False

    try:
        return await asyncio.wait_for(rest(), seconds)
    except asyncio.TimeoutError:
        return False


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


class _CountedBody:
    """One request's `receive` and `send`, counting body bytes: past the limit, `receive` drains the
    rest, sends the 413 (when no reply has started) and raises `BodyTooLarge`; whatever the app still
    sends afterwards (its own reply to the failed read) is dropped."""

    def __init__(self, scope, receive, send, middleware: BodyLimit):
        self.scope, self._receive, self._send, self.bounds = scope, receive, send, middleware
        self.received = 0
        self.reply_started = False
        self.refused = False

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.bounds.limit:
                if not self.reply_started and not self.refused:
                    self.refused = True
                    ended = not message.get("more_body", False) or await self.bounds.drain(self._receive, self.received)
                    await _reply(too_large(self.bounds.limit), self.scope, self._send, close=not ended)
                raise BodyTooLarge(f"request body over {self.bounds.limit} bytes")
        return message

    async def send(self, message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.reply_started = True
        await self._send(message)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413 (see the module's docstring);
    `drain_bytes` (default `BODY_DRAIN_FACTOR` × `limit`) and `drain_seconds` bound the draining."""

    def __init__(self, app, limit: int, drain_bytes: int | None = None, drain_seconds: float = BODY_DRAIN_SECONDS):
        self.app, self.limit, self.drain_seconds = app, limit, drain_seconds
        self.drain_bytes = BODY_DRAIN_FACTOR * limit if drain_bytes is None else drain_bytes

    async def drain(self, receive, received: int = 0) -> bool:
        return await drain(receive, received, self.drain_bytes, self.drain_seconds)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            # Drain only a body the client sends anyway and that fits the drain; otherwise refuse at once.
            waits = (_header(scope, b"expect") or b"").lower() == b"100-continue"
            ended = declared <= self.drain_bytes and not waits and await self.drain(receive)
            await _reply(too_large(self.limit, declared), scope, send, close=not ended)
            return
        body = _CountedBody(scope, receive, send, self)
        try:
            await self.app(scope, body.receive, body.send)
        except BodyTooLarge:
            pass  # the 413 is out; the app gave up reading (FastAPI usually turns this into a 400 we drop)
