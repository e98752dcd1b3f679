"""An HTTP server for a saved kqa model (`kqa serve`): a JSON API, a web page, micro-batching.

    kqa serve --model outputs/kqa/best --port 8000
    curl -s localhost:8000/v1/answer -H 'content-type: application/json' \\
         -d '{"question": "대한민국의 수도는 어디인가?", "context": "대한민국의 수도는 서울이며, …"}'

Endpoints (docs/serving.md has examples):
- `POST /v1/answer` — one question and its context → `{"answers": [...]}` (top_k answers, best first),
- `POST /v1/answer/batch` — `{"questions": [{question, context, ...}, ...]}` → `{"results": [...]}`,
- `POST /v1/ask` — with `--index`: `{"question"}` → retrieve passages of the index, read them →
  `{"question", "answers": [...], "passages": [...]}` (kqa.retrieval.RetrieveAndRead),
- `GET /health` — model directory, uptime, queue and batching counters, limits, server memory,
- `GET /` — a page to ask questions in the browser (kqa/static/index.html, no CDN),
- `GET /docs`, `GET /openapi.json` — FastAPI's Swagger UI and the OpenAPI schema.

Micro-batching: every question becomes one item on a queue. A collector task takes the first item,
waits up to `max_wait_ms` for more (or until `batch_size` are there) and runs them together through
`QuestionAnswerer.predict_rows` on one worker thread, so the event loop keeps accepting requests
while the model runs; each answer goes back to the request it came from. Questions whose settings
change the post-processing (`handle_impossible_answer`, `null_score_diff_threshold`, a `top_k` above
the model's `n_best_size`) run in the same batch only with questions that share those settings, so an
answer is exactly what the same question alone would get.

Bad input is a 4xx with `{"error": {"type", "field", "message", ...}}`; an unexpected failure is a
500 whose `error.id` is also in the server log. Nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("kqa.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for. Larger input is a 422 naming the field and the limit."""

    max_context_chars: int = 10_000  # ~25 windows of 384 tokens: a few seconds on 2 CPU cores
    max_question_chars: int = 1_000  # the model reads max_query_length tokens of it anyway
    max_batch_questions: int = 64  # questions in one /v1/answer/batch request
    max_top_k: int = 20
    max_passages: int = 20  # passages one /v1/ask request may have read

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BatchingSettings:
    """Micro-batching: up to `batch_size` questions per model call, gathered for up to `max_wait_ms`.
    `batch_size=1` turns it off (one question per call). More than `max_queue` waiting questions
    makes new requests a 503."""

    batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and 0 <= self.max_wait_ms < 10_000):
            raise ValueError(f"max_wait_ms must be between 0 and 10000, got {self.max_wait_ms!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ValueError(f"max_queue must be a positive integer, got {self.max_queue!r}")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error the client gets as `{"error": {"type", "field", "message", ...}}` with `status`."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.type, self.message, self.field, self.extra = status, type_, message, field, extra

    def response(self) -> JSONResponse:
        body = {"type": self.type, "field": self.field, "message": self.message, **self.extra}
        return JSONResponse({"error": body}, status_code=self.status)


def _field_name(loc: tuple) -> str:
    """("body", "questions", 3, "context") → "questions[3].context"; the body itself → "body"."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


_PROBLEMS = {  # pydantic error type → wording of the problem
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "extra_forbidden": "is not a known field",
    "greater_than_equal": "is too small",
    "less_than_equal": "is too large",
    "too_short": "is too short",
    "too_long": "is too long",
}


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = []
    for err in exc.errors():
        kind = err.get("type", "invalid")
        name = _field_name(tuple(err.get("loc", ())))
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            errors.append({"field": "body", "problem": "json_invalid",
                           "message": f"the request body is not valid JSON{': ' + detail if detail else ''}"})
            continue
        wording = _PROBLEMS.get(kind)
        message = f"field '{name}' {wording}" if wording else f"field '{name}': {err.get('msg', 'invalid value')}"
        if name == "body" and kind in ("missing", "model_attributes_type", "model_type", "dict_type"):
            message = "the request body must be a JSON object, sent with content-type: application/json"
        errors.append({"field": name, "problem": kind, "message": message})
    if not errors:
        errors.append({"field": "body", "problem": "invalid", "message": "invalid request"})
    first = errors[0]
    status = 400 if first["problem"] == "json_invalid" else 422
    return ApiError(status, "invalid_request", first["message"], first["field"], problem=first["problem"],
                    errors=errors)


# --------------------------------------------------------------------------------------------------
# Request and response bodies
# --------------------------------------------------------------------------------------------------

class QuestionIn(BaseModel):
    """One question about one context. Strings are taken as they are (no coercion of numbers)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "question": "가장 큰 항구 도시는 어디인가?",
        "context": "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다.",
        "top_k": 3}]})

    question: str = Field(description="the question (non-empty; at most max_question_chars characters)")
    context: str = Field(description="the passage to take the answer from (non-empty; at most max_context_chars)")
    top_k: int = Field(1, description="how many answers, best first (1 … max_top_k)")
    handle_impossible_answer: Optional[bool] = Field(
        None, description="let the null answer \"\" compete (default: as the model was trained)")
    null_score_diff_threshold: Optional[float] = Field(
        None, description="answer \"\" when null score − best span score exceeds this (default: the saved one)")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    questions: list[QuestionIn] = Field(description="1 … max_batch_questions questions, answered in order")


class AskIn(BaseModel):
    """One question about the documents of the server's index (`kqa serve --index`)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "question": "가장 큰 항구 도시는 어디인가?", "top_k": 1, "passages": 5}]})

    question: str = Field(description="the question (non-empty; at most max_question_chars characters)")
    top_k: int = Field(1, description="how many answers, best first (1 … max_top_k)")
    passages: Optional[int] = Field(
        None, description="how many retrieved passages to read (1 … max_passages; default: the server's --passages)")


class AnswerOut(BaseModel):
    text: str = Field(description="the answer; \"\" is the null answer (no answer in this context)")
    start: int = Field(description="character offset of the answer in the given context")
    end: int = Field(description="end offset (exclusive): context[start:end] == text")
    score: Optional[float] = Field(description="start logit + end logit (null when there is no span at all)")
    probability: float = Field(description="softmax of the score over the n-best candidates")


class AnswersOut(BaseModel):
    answers: list[AnswerOut]


class BatchOut(BaseModel):
    results: list[AnswersOut]


class OpenAnswerOut(BaseModel):
    text: str = Field(description="the answer (a span of a document)")
    score: float = Field(description="the reader's span score, start logit + end logit")
    probability: float = Field(description="P(passage | question) × P(span | passage): what answers are ranked by, "
                                           "comparable across passages (docs/retrieval.md)")
    doc_id: str = Field(description="the document the answer is in")
    title: str
    start: int = Field(description="character offset of the answer in its document")
    end: int = Field(description="end offset (exclusive): document text[start:end] == text")
    passage_id: str = Field(description="the passage it was read in")
    passage_start: int = Field(description="character offset of that passage in the document")
    passage_end: int
    retrieval_rank: int = Field(description="the passage's place in retrieval (1 = best)")
    retrieval_score: float


class PassageOut(BaseModel):
    rank: int = Field(description="1 = best")
    score: float = Field(description="the score of the index's method (BM25, cosine or fused)")
    sparse_score: Optional[float] = None
    dense_score: Optional[float] = None
    doc_id: str
    title: str
    passage_id: str
    start: int = Field(description="character offset of the passage in its document")
    end: int
    text: str


class AskOut(BaseModel):
    question: str
    answers: list[OpenAnswerOut] = Field(description="top_k answers, best first (none when no passage was found)")
    passages: list[PassageOut] = Field(description="the passages retrieved and read, best first")


class ErrorBody(BaseModel):
    type: str
    field: Optional[str] = None
    message: str
    problem: Optional[str] = Field(None, description="missing, string_type, empty, too_long, json_invalid, …")
    errors: Optional[list[dict]] = Field(None, description="every problem found, each with field and message")
    limit: Optional[int] = Field(None, description="the limit that was exceeded")
    id: Optional[str] = Field(None, description="internal errors: the id under which the server logged it")


class ErrorOut(BaseModel):
    error: ErrorBody


def _answer_dict(answer) -> dict:
    score = float(answer.score)
    return {"text": answer.text, "start": int(answer.start), "end": int(answer.end),
            "score": score if math.isfinite(score) else None, "probability": float(answer.probability)}


# --------------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------------

@dataclass
class _Item:
    question: str
    context: str
    top_k: int
    handle_impossible_answer: Optional[bool]
    null_score_diff_threshold: Optional[float]
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    requests: int = 0
    questions: int = 0
    batches: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    errors: int = 0


class MicroBatcher:
    """Gathers questions from concurrent requests into `predict_rows` calls on one worker thread."""

    def __init__(self, qa, settings: BatchingSettings):
        self.qa = qa
        self.settings = settings
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kqa-model")
        self.in_flight = 0  # questions inside the running model call

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="kqa-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def answer(self, questions: list[QuestionIn]) -> list[list[dict]]:
        """Queue the questions of one request and wait for their answers (in order)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        if self.waiting + len(questions) > self.settings.max_queue:
            raise ApiError(503, "overloaded", f"{self.waiting} questions are waiting (limit "
                           f"{self.settings.max_queue}); try again shortly")
        loop = asyncio.get_running_loop()
        items = [_Item(q.question, q.context, q.top_k, q.handle_impossible_answer, q.null_score_diff_threshold,
                       loop.create_future()) for q in questions]
        self.stats.requests += 1
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.settings.max_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait_s
            while len(batch) < self.settings.batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as err:  # noqa: BLE001 - reported to each waiting request
                outcomes = [err] * len(batch)
            finally:
                self.in_flight = 0
            self.stats.batches += 1
            self.stats.questions += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for item, outcome in zip(batch, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _group_key(self, item: _Item) -> tuple:
        """Questions that may share a predict_rows call: same null-answer settings, and the same n-best
        size (a top_k above the model's n_best_size raises it for the call)."""
        n_best = self.qa.settings.postprocess.n_best_size
        return (item.top_k if item.top_k > n_best else None, item.handle_impossible_answer,
                item.null_score_diff_threshold)

    def _run_batch(self, batch: list[_Item]) -> list[Any]:
        """On the worker thread: answers (lists of dicts) or exceptions, one per item."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(self._group_key(item), []).append(i)
        outcomes: list[Any] = [None] * len(batch)
        for indexes in groups.values():
            try:
                self._predict(batch, indexes, outcomes)
            except Exception:  # noqa: BLE001
                if len(indexes) == 1:
                    raise
                # One question broke the call: answer each alone so that only it gets the error.
                for i in indexes:
                    try:
                        self._predict(batch, [i], outcomes)
                    except Exception as err:  # noqa: BLE001
                        outcomes[i] = err
        return outcomes

    def _predict(self, batch: list[_Item], indexes: list[int], outcomes: list[Any]) -> None:
        first = batch[indexes[0]]
        rows = [{"id": str(i), "question": batch[i].question, "context": batch[i].context} for i in indexes]
        predictions = self.qa.predict_rows(
            rows, top_k=max(batch[i].top_k for i in indexes),
            handle_impossible_answer=first.handle_impossible_answer,
            null_score_diff_threshold=first.null_score_diff_threshold)
        self.stats.model_calls += 1
        for i in indexes:
            answers = self.qa.answers_of(predictions[str(i)], batch[i].top_k)
            answers = [answers] if batch[i].top_k == 1 else answers
            outcomes[i] = [_answer_dict(a) for a in answers]


# --------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------

class _BodyLimit:
    """ASGI middleware: a request whose Content-Length exceeds `max_bytes` is a 413 before its body is
    read (the per-field limits come after parsing; this keeps a huge body from being parsed at all)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                    error = ApiError(413, "invalid_request", f"the request body has {int(value)} bytes (the limit "
                                     f"is {self.max_bytes})", "body", problem="too_large", limit=self.max_bytes)
                    await error.response()(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def max_body_bytes(limits: "ServerLimits") -> int:
    """The largest body a valid request can need: every question and context at its limit, 4 bytes
    per character (UTF-8), JSON escapes aside, plus 64 KiB for keys and numbers."""
    return 4 * limits.max_batch_questions * (limits.max_context_chars + limits.max_question_chars) + 65_536


def _rss_kib(pid: int | str = "self") -> dict[str, int | None]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc (None where /proc is absent)."""
    values: dict[str, int | None] = {"rss_kib": None, "peak_rss_kib": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                values["rss_kib"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                values["peak_rss_kib"] = int(line.split()[1])
    except OSError:
        pass
    return values


def _check_text(value: str, where: str, limit: int) -> None:
    """A string field: not blank, at most `limit` characters, encodable as UTF-8 (no lone surrogates)."""
    from kqa.text import check_text

    if not value.strip():
        raise ApiError(422, "invalid_request", f"field '{where}' is {'only whitespace' if value else 'empty'}",
                       where, problem="empty")
    if len(value) > limit:
        raise ApiError(422, "invalid_request", f"field '{where}' is too long: {len(value)} characters "
                       f"(the limit is {limit})", where, problem="too_long", limit=limit)
    try:
        check_text(value, f"field '{where}'")
    except ValueError as err:
        raise ApiError(422, "invalid_request", str(err), where, problem="not_encodable") from None


def _check_range(value: int, where: str, limit: int) -> None:
    if not 1 <= value <= limit:
        raise ApiError(422, "invalid_request", f"field '{where}' must be between 1 and {limit}, got {value}",
                       where, problem="out_of_range", limit=limit)


def _check_question(q: QuestionIn, prefix: str, limits: ServerLimits) -> None:
    """What the JSON schema cannot say: non-blank text, encodable text, the configured limits."""
    _check_text(q.question, f"{prefix}question", limits.max_question_chars)
    _check_text(q.context, f"{prefix}context", limits.max_context_chars)
    _check_range(q.top_k, f"{prefix}top_k", limits.max_top_k)
    if q.null_score_diff_threshold is not None and not math.isfinite(q.null_score_diff_threshold):
        raise ApiError(422, "invalid_request", f"field '{prefix}null_score_diff_threshold' must be a finite number",
                       f"{prefix}null_score_diff_threshold", problem="not_finite")


def _check_ask(body: AskIn, limits: ServerLimits) -> None:
    _check_text(body.question, "question", limits.max_question_chars)
    _check_range(body.top_k, "top_k", limits.max_top_k)
    if body.passages is not None:
        _check_range(body.passages, "passages", limits.max_passages)


@dataclass
class AskStats:
    requests: int = 0
    errors: int = 0


def _index_summary(retriever, index_dir) -> dict:
    return {"path": str(index_dir) if index_dir is not None else None, "documents": len(retriever.documents),
            "passages": len(retriever.passages), "method": retriever.settings.method,
            "analyzer": retriever.settings.analyzer,
            "embedder": retriever.embedder.name if retriever.dense is not None else None}


def create_app(qa, *, model_dir: str | Path | None = None, limits: ServerLimits | None = None,
               batching: BatchingSettings | None = None, retriever=None, index_dir: str | Path | None = None,
               passages: int | None = None) -> FastAPI:
    """The FastAPI application around a loaded `QuestionAnswerer` (or anything with its
    `settings.postprocess.n_best_size`, `predict_rows` and `answers_of`). With a `retriever`
    (`kqa.retrieval.Retriever`), `POST /v1/ask` retrieves `passages` passages (default 5) per question
    and reads them with `qa`."""
    limits = limits or ServerLimits()
    batching = batching or BatchingSettings()
    batcher = MicroBatcher(qa, batching)
    started = time.time()
    pipeline = None
    if retriever is not None:
        from kqa.retrieval.pipeline import DEFAULT_PASSAGES, RetrieveAndRead

        passages = DEFAULT_PASSAGES if passages is None else passages
        if not isinstance(passages, int) or isinstance(passages, bool) or not 1 <= passages <= limits.max_passages:
            raise ValueError(f"passages must be between 1 and max_passages ({limits.max_passages}), got {passages!r}")
        pipeline = RetrieveAndRead(retriever, qa, passages=passages)
    ask_stats = AskStats()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        logger.info("serving %s (batch_size %d, max_wait_ms %g)", model_dir, batching.batch_size,
                    batching.max_wait_ms)
        if pipeline is not None:
            logger.info("POST /v1/ask over index %s: %d documents, %d passages, method %s, %d passages read per "
                        "question", index_dir, len(pipeline.retriever.documents), len(pipeline.retriever.passages),
                        pipeline.retriever.settings.method, pipeline.passages)
        yield
        await batcher.stop()

    error_responses = {400: {"model": ErrorOut, "description": "the body is not valid JSON"},
                       422: {"model": ErrorOut, "description": "a field is missing, of the wrong type, empty or over a limit"},
                       500: {"model": ErrorOut, "description": "internal error (its id is in the server log)"},
                       503: {"model": ErrorOut, "description": "too many questions waiting"}}
    app = FastAPI(title="kqa", version=_version(), lifespan=lifespan,
                  description="Korean extractive question answering. Offsets are character offsets "
                              "(Unicode code points) into the context as sent.")
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes(limits))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # Starlette could not read the body (e.g. bytes that are not UTF-8)
            return ApiError(400, "invalid_request", f"the request body could not be read as JSON: {exc.detail}",
                            "body", problem="json_invalid").response()
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, kind, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return _internal_error(exc, f"{request.method} {request.url.path}").response()

    async def _answer(questions: list[QuestionIn]) -> list[list[dict]]:
        try:
            return await batcher.answer(questions)
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001
            batcher.stats.errors += 1
            raise _internal_error(err, "model call") from None

    @app.post("/v1/answer", response_model=AnswersOut, responses=error_responses,
              summary="answer one question from its context")
    async def answer(body: QuestionIn) -> dict:
        _check_question(body, "", limits)
        (answers,) = await _answer([body])
        return {"answers": answers}

    @app.post("/v1/answer/batch", response_model=BatchOut, responses=error_responses,
              summary="answer several questions, each with its own context, in order")
    async def answer_batch(body: BatchIn) -> dict:
        if not body.questions:
            raise ApiError(422, "invalid_request", "field 'questions' is empty: give at least one question",
                           "questions", problem="empty")
        if len(body.questions) > limits.max_batch_questions:
            raise ApiError(422, "invalid_request", f"field 'questions' has {len(body.questions)} questions "
                           f"(the limit is {limits.max_batch_questions})", "questions", problem="too_long",
                           limit=limits.max_batch_questions)
        for i, q in enumerate(body.questions):
            _check_question(q, f"questions[{i}].", limits)
        results = await _answer(body.questions)
        return {"results": [{"answers": a} for a in results]}

    @app.post("/v1/ask", response_model=AskOut,
              responses={**error_responses, 404: {"model": ErrorOut, "description": "started without --index"}},
              summary="answer a question from the documents of the index (kqa serve --index)")
    async def ask(body: AskIn) -> dict:
        if pipeline is None:
            raise ApiError(404, "no_index", "this server was started without --index: /v1/ask needs a retrieval "
                           "index (kqa index …, then kqa serve --model MODEL --index INDEX)")
        _check_ask(body, limits)
        ask_stats.requests += 1
        loop = asyncio.get_running_loop()
        try:
            # On the batcher's model thread: one model call at a time, the event loop stays free.
            result = await loop.run_in_executor(
                batcher._executor, lambda: pipeline.ask(body.question, top_k=body.top_k, passages=body.passages))
        except Exception as err:  # noqa: BLE001
            ask_stats.errors += 1
            raise _internal_error(err, "retrieve and read") from None
        return result.to_dict(with_passages=True)

    @app.get("/health", summary="model, uptime, queue and batching counters, limits, memory")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": str(model_dir) if model_dir is not None else None,
            "device": str(getattr(qa, "device", "")) or None,
            "backend": getattr(qa, "backend", None),
            "uptime_s": round(time.time() - started, 3),
            "pid": os.getpid(),
            "queue": {"waiting": batcher.waiting, "in_flight": batcher.in_flight, **asdict(batcher.stats)},
            "batching": asdict(batching),
            "limits": {**asdict(limits), "max_body_bytes": max_body_bytes(limits)},
            "index": None if pipeline is None else {**_index_summary(pipeline.retriever, index_dir),
                                                    "default_passages": pipeline.passages, "ask": asdict(ask_stats)},
            "memory": _rss_kib(),
        }

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    return app


def _internal_error(err: BaseException, where: str) -> ApiError:
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s in %s: %s", error_id, where, err, exc_info=(type(err), err, err.__traceback__))
    return ApiError(500, "internal", f"internal error (id {error_id}); the server log has the details",
                    id=error_id)


def _version() -> str:
    from kqa import __version__

    return __version__


def serve(qa, *, model_dir, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None,
          batching: BatchingSettings | None = None, log_level: str = "info", retriever=None,
          index_dir: str | Path | None = None, passages: int | None = None) -> None:
    """Run the server in this process until it is stopped (Ctrl-C / SIGTERM)."""
    import uvicorn
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # no "Building eval features" bar per request in the server log
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(qa, model_dir=model_dir, limits=limits, batching=batching, retriever=retriever,
                     index_dir=index_dir, passages=passages)
    # One process, one event loop: the model lives once in memory and the batcher sees every request.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, workers=1)


# --------------------------------------------------------------------------------------------------
# A server in a child process (tests, benchmarks/bench_server.py)
# --------------------------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (another process may take it before it is used: `ServerProcess`
    retries on another port when its server cannot bind)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m kqa serve --model DIR --host 127.0.0.1 --port P …` as a child process, ready when
    `GET /health` answers. Use as a context manager, or `start()` / `stop()`.

        with ServerProcess(model_dir, ["--batch_size", "8"], log_path=tmp / "server.log") as server:
            urllib.request.urlopen(server.url + "/health")
    """

    def __init__(self, model_dir: str | Path, args: list[str] | tuple = (), *, host: str = "127.0.0.1",
                 log_path: str | Path | None = None, ready_timeout_s: float = 180.0, env: dict | None = None):
        self.model_dir, self.args, self.host = str(model_dir), [str(a) for a in args], host
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
        self.proc = None
        self.port: int | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def start(self, attempts: int = 3) -> "ServerProcess":
        import subprocess
        import sys
        import tempfile

        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="kqa-serve-")) / "server.log"
        for attempt in range(attempts):
            self.port = free_port(self.host)
            self._log = open(self.log_path, "a", encoding="utf-8")
            command = [sys.executable, "-m", "kqa", "serve", "--model", self.model_dir, "--host", self.host,
                       "--port", str(self.port), *self.args]
            self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
            if self._wait_ready():
                return self
            code = self.proc.poll()
            self.stop()
            if code is None or attempt == attempts - 1 or "address already in use" not in self.log_tail().lower():
                raise RuntimeError(f"kqa serve did not become ready (exit code {code}); log {self.log_path}:\n"
                                   f"{self.log_tail()}")
        raise AssertionError("unreachable")

    def _wait_ready(self) -> bool:
        import urllib.request

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 15.0) -> int | None:
        import subprocess

        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout_s)
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ApiError", "BatchingSettings", "MicroBatcher", "ServerLimits", "ServerProcess", "create_app", "free_port",
           "serve"]
