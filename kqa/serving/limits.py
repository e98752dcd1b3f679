"""The body cap of `kqa serve`: a request body over `ServerLimits.max_body_bytes` is a 413, whatever
the route and whatever the request says about its size.

A pure ASGI middleware, so that it sees the body as it arrives, before any route parses it:
- a `Content-Length` over the limit is refused before anything is read (the fast path);
- a body without one (`Transfer-Encoding: chunked`) is counted chunk by chunk as the app reads it,
  and the 413 goes out as soon as the count passes the limit, without waiting for the rest.

Either reply says `Connection: close`: the server then stops reading that connection, so the rest of
the body is neither read nor kept."""

from __future__ import annotations

from kqa.serving.schemas import ApiError


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


async def _send_closing(error: ApiError, scope, send) -> None:
    response = error.response()
    response.headers["connection"] = "close"  # uvicorn closes the connection after it: the rest is never read

    async def no_body():  # a JSONResponse does not read the request
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _CountedBody:
    """One request's `receive` and `send`, counting body bytes: past the limit, `receive` sends the 413
    (when no reply has started) and raises `BodyTooLarge`; whatever the app still sends afterwards
    (its own reply to the failed read) is dropped."""

    def __init__(self, scope, receive, send, limit: int):
        self.scope, self._receive, self._send, self.limit = scope, receive, send, limit
        self.received = 0
        self.reply_started = False
        self.refused = False

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                if not self.reply_started and not self.refused:
                    self.refused = True
                    await _send_closing(too_large(self.limit), self.scope, self._send)
                raise BodyTooLarge(f"request body over {self.limit} bytes")
        return message

    async def send(self, message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.reply_started = True
        await self._send(message)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413 (see the module's docstring)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _send_closing(too_large(self.limit, declared), scope, send)
            return
        body = _CountedBody(scope, receive, send, self.limit)
        try:
            await self.app(scope, body.receive, body.send)
        except BodyTooLarge:
            pass  # the 413 is out; the app gave up reading (FastAPI usually turns this into a 400 we drop)
