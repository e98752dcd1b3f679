"""The body cap of `kqa serve`: a request whose Content-Length is over `ServerLimits.max_body_bytes`
is a 413 before its body is read (the per-field limits come after parsing; this keeps a huge body
from being parsed at all). A pure ASGI middleware, so that it runs before any route."""

from __future__ import annotations

from kqa.serving.schemas import ApiError


def too_large(limit: int, declared: int) -> ApiError:
    """The 413 for a body of `declared` bytes (its Content-Length), over `limit`."""
    return ApiError(
        413,
        "invalid_request",
        f"the request body has {declared} bytes (the limit is {limit})",
        "body",
        problem="too_large",
        limit=limit,
    )


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over `limit` bytes is a 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = _content_length(scope)
            if declared is not None and declared > self.limit:
                await too_large(self.limit, declared).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
