"""The error handlers of `kqa serve`: every error is `{"error": {"type", "field", "message", ...}}`
(schemas.ApiError), a 4xx naming the field or a 500 whose id is in the server log; and an error leaves
nothing behind once it is answered."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kqa.serving.schemas import ApiError, ErrorOut, validation_error

logger = logging.getLogger(__name__)

ERROR_RESPONSES = {
    400: {"model": ErrorOut, "description": "the body is not valid JSON"},
    413: {"model": ErrorOut, "description": "the body is over max_body_bytes (chunked or not)"},
    422: {"model": ErrorOut, "description": "a field is missing, of the wrong type, empty or over a limit"},
    500: {"model": ErrorOut, "description": "internal error (its id is in the server log)"},
    503: {"model": ErrorOut, "description": "too many questions waiting"},
}


def forget_tracebacks(exc: BaseException) -> None:
    """Drop the tracebacks of `exc` and of the exceptions chained to it, once it is answered.

    FastAPI raises its JSON and body-reading errors from a frame that holds the error in a local
    variable (`raise validation_error from e`): error → traceback → frame → error is a reference
    cycle, and that frame also holds the body and its decoded text. Only a full garbage collection
    frees a cycle, and with a model loaded (millions of long-lived objects) Python runs one rarely:
    before this, each rejected 20 MB body kept ~38 MiB until then (docs/serving.md, Memory)."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending += [error.__cause__, error.__context__]


def internal_error(err: BaseException, where: str) -> ApiError:
    """A 500 whose id is logged with the traceback; the client sees the id, never the details."""
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s in %s: %s", error_id, where, err, exc_info=(type(err), err, err.__traceback__))
    return ApiError(500, "internal", f"internal error (id {error_id}); the server log has the details", id=error_id)


def _http_error(exc: StarletteHTTPException) -> ApiError:
    if exc.status_code == 400:  # Starlette could not read the body (e.g. bytes that are not UTF-8)
        return ApiError(
            400,
            "invalid_request",
            f"the request body could not be read as JSON: {exc.detail}",
            "body",
            problem="json_invalid",
        )
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, kind, str(exc.detail))


def add_error_handlers(app: FastAPI) -> None:
    """Ours, pydantic's (422 naming the field), Starlette's, and any other exception (a 500 whose id
    is in the log). The 4xx handlers forget the error's tracebacks (see `forget_tracebacks`); a 500
    keeps its traceback, which Starlette re-raises for uvicorn to log."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        forget_tracebacks(exc)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        error = validation_error(exc)
        forget_tracebacks(exc)
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        forget_tracebacks(exc)
        return _http_error(exc).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return internal_error(exc, f"{request.method} {request.url.path}").response()
