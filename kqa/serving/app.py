"""An HTTP server for a saved kqa model (`kqa serve`): a JSON API, a web page, micro-batching.

    kqa serve --model outputs/kqa/best --port 8000
    curl -s localhost:8000/v1/answer -H 'content-type: application/json' \\
         -d '{"question": "대한민국의 수도는 어디인가?", "context": "대한민국의 수도는 서울이며, …"}'

Endpoints (docs/serving.md has examples):
- `POST /v1/answer` — one question and its context → `{"answers": [...]}` (top_k answers, best first),
- `POST /v1/answer/batch` — `{"questions": [{question, context, ...}, ...]}` → `{"results": [...]}`,
- `POST /v1/ask` — with `--index`: `{"question"}` → retrieve passages of the index, read them →
  `{"question", "answers": [...], "passages": [...]}` (kqa.retrieval.RetrieveAndRead),
- `GET /health` — model directory, uptime, queue and batching counters, limits, server memory
  (`HEAD /health`: a 200 without a body, for health checkers),
- `GET /` — a page to ask questions in the browser (kqa/serving/static/index.html, no CDN),
- `GET /docs`, `GET /openapi.json` — FastAPI's Swagger UI and the OpenAPI schema.

Micro-batching: every question becomes one item on a queue. A collector task takes the first item,
waits up to `max_wait_ms` for more (or until `batch_size` are there) and runs them together through
`QuestionAnswerer.predict_rows` on one worker thread, so the event loop keeps accepting requests
while the model runs; each answer goes back to the request it came from. Questions whose settings
change the post-processing (`handle_impossible_answer`, `null_score_diff_threshold`, a `top_k` above
the model's `n_best_size`) run in the same batch only with questions that share those settings, so an
answer is exactly what the same question alone would get.

Bad input is a 4xx with `{"error": {"type", "field", "message", ...}}` (kqa.serving.errors); a body
over `max_body_bytes` is a 413, chunked or not, sent once the rest of the body is drained (read and
thrown away, within bounds) so that the client can read it (kqa.serving.limits);
an unexpected failure is a 500 whose `error.id` is also in the server log. Nothing a client sends
stops the server."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

from kqa.serving.batching import MicroBatcher
from kqa.serving.errors import ERROR_RESPONSES, add_error_handlers, internal_error
from kqa.serving.limits import BodyLimit
from kqa.serving.schemas import (
    AnswersOut,
    ApiError,
    AskIn,
    AskOut,
    BatchIn,
    BatchOut,
    ErrorOut,
    QuestionIn,
    batch_model,
    check_ask,
    check_question,
)
from kqa.serving.settings import BatchingSettings, ServerLimits

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


# --------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------


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


@dataclass
class AskStats:
    requests: int = 0
    errors: int = 0


def _index_summary(retriever, index_dir) -> dict:
    return {
        "path": str(index_dir) if index_dir is not None else None,
        "documents": len(retriever.documents),
        "passages": len(retriever.passages),
        "method": retriever.settings.method,
        "analyzer": retriever.settings.analyzer,
        "embedder": retriever.embedder.name if retriever.dense is not None else None,
    }


def create_app(
    qa,
    *,
    model_dir: str | Path | None = None,
    limits: ServerLimits | None = None,
    batching: BatchingSettings | None = None,
    retriever=None,
    index_dir: str | Path | None = None,
    passages: int | None = None,
) -> FastAPI:
    """The FastAPI application around a loaded `QuestionAnswerer` (or anything with its
    `settings.postprocess.n_best_size`, `predict_rows` and `answers_of`). With a `retriever`
    (`kqa.retrieval.Retriever`), `POST /v1/ask` retrieves `passages` passages (default 5) per question
    and reads them with `qa`."""
    limits = limits or ServerLimits()
    batching = batching or BatchingSettings()
    batcher = MicroBatcher(qa, batching)
    pipeline = _ask_pipeline(qa, retriever, passages, limits)
    app = FastAPI(
        title="kqa",
        version=_version(),
        lifespan=_lifespan(batcher, pipeline, model_dir, index_dir),
        description="Korean extractive question answering. Offsets are character offsets "
        "(Unicode code points) into the context as sent.",
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    add_error_handlers(app)
    _add_answer_routes(app, batcher, limits)
    ask_stats = _add_ask_route(app, batcher, pipeline, limits)
    _add_health_and_page(app, qa, model_dir, batcher, limits, pipeline, index_dir, ask_stats)
    return app


def _ask_pipeline(qa, retriever, passages: int | None, limits: ServerLimits):
    """The retrieve-then-read pipeline of `POST /v1/ask`, or None without a retriever."""
    if retriever is None:
        return None
    from kqa.retrieval.pipeline import DEFAULT_PASSAGES, RetrieveAndRead

    passages = DEFAULT_PASSAGES if passages is None else passages
    if not isinstance(passages, int) or isinstance(passages, bool) or not 1 <= passages <= limits.max_passages:
        raise ValueError(f"passages must be between 1 and max_passages ({limits.max_passages}), got {passages!r}")
    return RetrieveAndRead(retriever, qa, passages=passages)


def _lifespan(batcher: MicroBatcher, pipeline, model_dir, index_dir):
    """Start the batcher with the server, stop it with the server."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        logger.info(
            "serving %s (batch_size %d, max_wait_ms %g)",
            model_dir,
            batcher.settings.batch_size,
            batcher.settings.max_wait_ms,
        )
        if pipeline is not None:
            logger.info(
                "POST /v1/ask over index %s: %d documents, %d passages, method %s, %d passages read per question",
                index_dir,
                len(pipeline.retriever.documents),
                len(pipeline.retriever.passages),
                pipeline.retriever.settings.method,
                pipeline.passages,
            )
        yield
        await batcher.stop()

    return lifespan


def _add_answer_routes(app: FastAPI, batcher: MicroBatcher, limits: ServerLimits) -> None:
    """`POST /v1/answer` and `POST /v1/answer/batch`, both through the micro-batcher."""

    async def _answer(questions: list[QuestionIn]) -> list[list[dict]]:
        try:
            return await batcher.answer(questions)
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001
            batcher.stats.errors += 1
            raise internal_error(err, "model call") from None

    @app.post(
        "/v1/answer",
        response_model=AnswersOut,
        responses=ERROR_RESPONSES,
        summary="answer one question from its context",
    )
    async def answer(body: QuestionIn) -> dict:
        check_question(body, "", limits)
        (answers,) = await _answer([body])
        return {"answers": answers}

    async def answer_batch(body: BatchIn) -> dict:
        if not body.questions:
            raise ApiError(
                422,
                "invalid_request",
                "field 'questions' is empty: give at least one question",
                "questions",
                problem="empty",
            )
        for i, q in enumerate(body.questions):
            check_question(q, f"questions[{i}].", limits)
        results = await _answer(body.questions)
        return {"results": [{"answers": a} for a in results]}

    # This server's max_batch_questions is part of the body's model (max_length): a longer batch is
    # refused before any of its entries is validated (100,000 entries: one problem, not 200,000).
    answer_batch.__annotations__["body"] = batch_model(limits.max_batch_questions)
    app.post(
        "/v1/answer/batch",
        response_model=BatchOut,
        responses=ERROR_RESPONSES,
        summary="answer several questions, each with its own context, in order",
    )(answer_batch)


def _add_ask_route(app: FastAPI, batcher: MicroBatcher, pipeline, limits: ServerLimits) -> AskStats:
    """`POST /v1/ask`: retrieve, then read, on the batcher's model thread; a 404 without an index."""
    ask_stats = AskStats()

    @app.post(
        "/v1/ask",
        response_model=AskOut,
        responses={**ERROR_RESPONSES, 404: {"model": ErrorOut, "description": "started without --index"}},
        summary="answer a question from the documents of the index (kqa serve --index)",
    )
    async def ask(body: AskIn) -> dict:
        if pipeline is None:
            raise ApiError(
                404,
                "no_index",
                "this server was started without --index: /v1/ask needs a retrieval "
                "index (kqa index …, then kqa serve --model MODEL --index INDEX)",
            )
        filters = check_ask(body, limits)
        if body.score_threshold is not None and pipeline.calibrator is None:
            raise ApiError(
                422,
                "invalid_request",
                "field 'score_threshold' needs a calibrated model (kqa calibrate); this server's model has none",
                "score_threshold",
                problem="no_calibrator",
            )
        ask_stats.requests += 1
        loop = asyncio.get_running_loop()
        try:
            # On the batcher's model thread: one model call at a time, the event loop stays free.
            result = await loop.run_in_executor(
                batcher._executor,
                lambda: pipeline.ask(
                    body.question,
                    top_k=body.top_k,
                    passages=body.passages,
                    score_threshold=body.score_threshold,
                    filters=filters,
                ),
            )
        except Exception as err:  # noqa: BLE001
            ask_stats.errors += 1
            raise internal_error(err, "retrieve and read") from None
        return result.to_dict(with_passages=True)

    return ask_stats


def _add_health_and_page(
    app: FastAPI, qa, model_dir, batcher: MicroBatcher, limits: ServerLimits, pipeline, index_dir, ask_stats: AskStats
) -> None:
    """`GET /health` (model, uptime, queue and batching counters, limits, memory) and the page at `/`."""
    started = time.time()

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
            "batching": asdict(batcher.settings),
            "limits": {**asdict(limits), "max_body_bytes": limits.max_body_bytes},
            "index": None
            if pipeline is None
            else {
                **_index_summary(pipeline.retriever, index_dir),
                "default_passages": pipeline.passages,
                "ask": asdict(ask_stats),
            },
            "memory": _rss_kib(),
        }

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        # Health checkers (load balancers, uptime monitors) often ask with HEAD: alive, no body.
        return Response(status_code=200, media_type="application/json")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


def _version() -> str:
    from kqa import __version__

    return __version__


def serve(
    qa,
    *,
    model_dir,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    batching: BatchingSettings | None = None,
    log_level: str = "info",
    retriever=None,
    index_dir: str | Path | None = None,
    passages: int | None = None,
) -> None:
    """Run the server in this process until it is stopped (Ctrl-C / SIGTERM)."""
    import uvicorn
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # no "Building eval features" bar per request in the server log
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(
        qa,
        model_dir=model_dir,
        limits=limits,
        batching=batching,
        retriever=retriever,
        index_dir=index_dir,
        passages=passages,
    )
    # One process, one event loop: the model lives once in memory and the batcher sees every request.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, workers=1)
