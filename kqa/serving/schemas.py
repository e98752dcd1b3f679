"""What the server accepts and answers: the per-request limits, the request and response bodies, and
the errors (a bounded 4xx naming the field)."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from kqa.serving.settings import ServerLimits

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

MAX_LISTED_ERRORS = 10  # problems an error reply lists; `errors_total` counts them all
MAX_NAME_CHARS = 100  # a field name longer than this (an unknown field) is cut in the reply


class ApiError(Exception):
    """An error the client gets as `{"error": {"type", "field", "message", ...}}` with `status`."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.type, self.message, self.field, self.extra = status, type_, message, field, extra

    def response(self) -> JSONResponse:
        body = {"type": self.type, "field": self.field, "message": self.message, **self.extra}
        return JSONResponse({"error": body}, status_code=self.status)


def _printable_name(part: str) -> str:
    """A key as the reply can show it: a lone surrogate as its JSON escape (it cannot be encoded as
    UTF-8, so it cannot be sent back), at most MAX_NAME_CHARS characters."""
    part = part.encode("utf-8", "backslashreplace").decode("utf-8")
    return part if len(part) <= MAX_NAME_CHARS else part[:MAX_NAME_CHARS] + "…"


def _field_name(loc: tuple) -> str:
    """("body", "questions", 3, "context") → "questions[3].context"; the body itself → "body"."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{_printable_name(str(part))}" if name else _printable_name(str(part))
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


def _problem(err: dict) -> dict:
    """One pydantic error as `{"field", "problem", "message"}` (and `limit` where one was passed)."""
    from kqa.text import check_text

    kind = err.get("type", "invalid")
    loc, ctx = tuple(err.get("loc", ())), err.get("ctx") or {}
    if kind == "json_invalid":
        detail = f": {ctx['error']}" if ctx.get("error") else ""
        return {"field": "body", "problem": "json_invalid", "message": f"the request body is not valid JSON{detail}"}
    if kind == "string_unicode" and isinstance(err.get("input"), str):
        # A key pydantic cannot read: its loc is the object, its input the key (values are checked
        # after validation, by _check_text, with the same wording).
        name = _field_name(loc + (err["input"],))
        try:
            check_text(err["input"], f"the name of field '{name}'")
        except ValueError as problem:
            return {"field": name, "problem": "not_encodable", "message": str(problem)}
    name = _field_name(loc)
    if name == "body" and kind in ("missing", "model_attributes_type", "model_type", "dict_type"):
        message = "the request body must be a JSON object, sent with content-type: application/json"
        return {"field": name, "problem": kind, "message": message}
    if kind == "too_long" and "max_length" in ctx:
        message = f"field '{name}' has {ctx.get('actual_length')} entries (the limit is {ctx['max_length']})"
        return {"field": name, "problem": kind, "message": message, "limit": ctx["max_length"]}
    wording = _PROBLEMS.get(kind)
    message = f"field '{name}' {wording}" if wording else f"field '{name}': {err.get('msg', 'invalid value')}"
    return {"field": name, "problem": kind, "message": message}


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first MAX_LISTED_ERRORS problems, the first of them at the top, and how many there are: a
    small request can have many (20,000 unknown fields), its reply stays small."""
    found = exc.errors()
    errors = [_problem(err) for err in found[:MAX_LISTED_ERRORS]] or [
        {"field": "body", "problem": "invalid", "message": "invalid request"}
    ]
    first = errors[0]
    status = 400 if first["problem"] == "json_invalid" else 422
    limit = {"limit": first["limit"]} if "limit" in first else {}
    return ApiError(
        status,
        "invalid_request",
        first["message"],
        first["field"],
        problem=first["problem"],
        **limit,
        errors=errors,
        errors_total=max(len(found), 1),
    )


# --------------------------------------------------------------------------------------------------
# Request and response bodies
# --------------------------------------------------------------------------------------------------


class QuestionIn(BaseModel):
    """One question about one context. Strings are taken as they are (no coercion of numbers)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "question": "가장 큰 항구 도시는 어디인가?",
                    "context": "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다.",
                    "top_k": 3,
                }
            ]
        },
    )

    question: str = Field(description="the question (non-empty; at most max_question_chars characters)")
    context: str = Field(description="the passage to take the answer from (non-empty; at most max_context_chars)")
    top_k: int = Field(1, description="how many answers, best first (1 … max_top_k)")
    handle_impossible_answer: Optional[bool] = Field(
        None, description='let the null answer "" compete (default: as the model was trained)'
    )
    null_score_diff_threshold: Optional[float] = Field(
        None, description='answer "" when null score − best span score exceeds this (default: the saved one)'
    )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    questions: list[QuestionIn] = Field(description="1 … max_batch_questions questions, answered in order")


def batch_model(max_questions: int) -> type[BatchIn]:
    """`BatchIn` with a server's `max_batch_questions` as the length limit of `questions`: pydantic
    checks a list's length before its entries, and the OpenAPI schema shows the limit (maxItems)."""
    return create_model(
        "BatchIn",
        __base__=BatchIn,
        questions=(
            list[QuestionIn],
            Field(max_length=max_questions, description=f"1 … {max_questions} questions, answered in order"),
        ),
    )


class AskIn(BaseModel):
    """One question about the documents of the server's index (`kqa serve --index`)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"question": "가장 큰 항구 도시는 어디인가?", "top_k": 1, "passages": 5}]},
    )

    question: str = Field(description="the question (non-empty; at most max_question_chars characters)")
    top_k: int = Field(1, description="how many answers, best first (1 … max_top_k)")
    passages: Optional[int] = Field(
        None, description="how many retrieved passages to read (1 … max_passages; default: the server's --passages)"
    )
    score_threshold: Optional[float] = Field(
        None,
        description="answer 'no answer' when the best answer's calibrated confidence is below this (0 … 1; "
        "default: the one stored with the model's calibrator; a model without one never abstains)",
    )
    filter: Optional[list[str]] = Field(
        None,
        description="metadata conditions, all of which a document must meet to be read, e.g. "
        '["tags=역사", "mtime>=2026-01-01"] (docs/retrieval.md#metadata-filters)',
    )


class AnswerOut(BaseModel):
    text: str = Field(description='the answer; "" is the null answer (no answer in this context)')
    start: int = Field(description="character offset of the answer in the given context")
    end: int = Field(description="end offset (exclusive): context[start:end] == text")
    score: Optional[float] = Field(description="start logit + end logit (null when there is no span at all)")
    probability: float = Field(description="softmax of the score over the n-best candidates")
    confidence: Optional[float] = Field(
        None, description="calibrated P(correct) (kqa calibrate); null without a calibrator and for the null answer"
    )


class AnswersOut(BaseModel):
    answers: list[AnswerOut]


class BatchOut(BaseModel):
    results: list[AnswersOut]


class OpenAnswerOut(BaseModel):
    text: str = Field(description="the answer (a span of a document)")
    score: float = Field(description="the reader's span score, start logit + end logit")
    probability: float = Field(
        description="P(passage | question) × P(span | passage): what answers are ranked by, "
        "comparable across passages (docs/retrieval.md)"
    )
    confidence: Optional[float] = Field(
        None,
        description="calibrated P(correct) (kqa calibrate): the best answer is withheld below score_threshold",
    )
    doc_id: str = Field(description="the document the answer is in")
    title: str
    start: int = Field(description="character offset of the answer in its document")
    end: int = Field(description="end offset (exclusive): document text[start:end] == text")
    passage_id: str = Field(description="the passage it was read in")
    passage_start: int = Field(description="character offset of that passage in the document")
    passage_end: int
    retrieval_rank: int = Field(description="the passage's place in retrieval (1 = best)")
    retrieval_score: float
    location: Optional[str] = Field(
        None, description='where the answer is in its file: "page 3" (PDF), "h2: 역사 > p[3]" (HTML), … (null for text)'
    )
    null_score: Optional[float] = Field(
        None, description="the passage's null (CLS) score: how strongly the reader says it holds no answer"
    )


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
    location: Optional[str] = Field(None, description="where the passage is in its file (null for text)")
    text: str


class AskOut(BaseModel):
    question: str
    answers: list[OpenAnswerOut] = Field(
        description="top_k answers, best first (none when no passage was found or the reader abstained)"
    )
    no_answer: bool = Field(
        False,
        description="true when no answer is given: no passage found, or the best confidence below score_threshold",
    )
    best_confidence: Optional[float] = Field(
        None,
        description="the best answer's calibrated confidence, also when it was withheld (null without a calibrator)",
    )
    score_threshold: Optional[float] = Field(None, description="the threshold applied (null without a calibrator)")
    passages: list[PassageOut] = Field(description="the passages retrieved and read, best first")


class ErrorBody(BaseModel):
    type: str
    field: Optional[str] = None
    message: str
    problem: Optional[str] = Field(None, description="missing, string_type, empty, too_long, json_invalid, …")
    errors: Optional[list[dict]] = Field(
        None, description=f"the first {MAX_LISTED_ERRORS} problems found, each with field, problem and message"
    )
    errors_total: Optional[int] = Field(None, description="how many problems were found (errors lists the first)")
    limit: Optional[int] = Field(None, description="the limit that was exceeded")
    id: Optional[str] = Field(None, description="internal errors: the id under which the server logged it")


class ErrorOut(BaseModel):
    error: ErrorBody


def _answer_dict(answer) -> dict:
    score = float(answer.score)
    return {
        "text": answer.text,
        "start": int(answer.start),
        "end": int(answer.end),
        "score": score if math.isfinite(score) else None,
        "probability": float(answer.probability),
        "confidence": None if answer.confidence is None else float(answer.confidence),
    }


# --------------------------------------------------------------------------------------------------
# What the JSON schema cannot say: non-blank, encodable text, the configured limits
# --------------------------------------------------------------------------------------------------


def _check_text(value: str, where: str, limit: int) -> None:
    """A string field: not blank, at most `limit` characters, encodable as UTF-8 (no lone surrogates)."""
    from kqa.text import blank_problem, check_text

    if problem := blank_problem(value):
        raise ApiError(
            422,
            "invalid_request",
            f"field '{where}' is {problem}",
            where,
            problem="empty",
        )
    if len(value) > limit:
        raise ApiError(
            422,
            "invalid_request",
            f"field '{where}' is too long: {len(value)} characters (the limit is {limit})",
            where,
            problem="too_long",
            limit=limit,
        )
    try:
        check_text(value, f"field '{where}'")
    except ValueError as err:
        raise ApiError(422, "invalid_request", str(err), where, problem="not_encodable") from None


def _check_range(value: int, where: str, limit: int) -> None:
    if not 1 <= value <= limit:
        raise ApiError(
            422,
            "invalid_request",
            f"field '{where}' must be between 1 and {limit}, got {value}",
            where,
            problem="out_of_range",
            limit=limit,
        )


def check_question(q: QuestionIn, prefix: str, limits: ServerLimits) -> None:
    """What the JSON schema cannot say: non-blank text, encodable text, the configured limits."""
    _check_text(q.question, f"{prefix}question", limits.max_question_chars)
    _check_text(q.context, f"{prefix}context", limits.max_context_chars)
    _check_range(q.top_k, f"{prefix}top_k", limits.max_top_k)
    if q.null_score_diff_threshold is not None and not math.isfinite(q.null_score_diff_threshold):
        raise ApiError(
            422,
            "invalid_request",
            f"field '{prefix}null_score_diff_threshold' must be a finite number",
            f"{prefix}null_score_diff_threshold",
            problem="not_finite",
        )


def check_ask(body: AskIn, limits: ServerLimits):
    """Checks what the schema cannot; returns the request's parsed metadata filter."""
    from kqa.retrieval.filters import FilterError, parse_filters

    _check_text(body.question, "question", limits.max_question_chars)
    _check_range(body.top_k, "top_k", limits.max_top_k)
    if body.passages is not None:
        _check_range(body.passages, "passages", limits.max_passages)
    if body.score_threshold is not None and not (
        math.isfinite(body.score_threshold) and 0.0 <= body.score_threshold <= 1.0
    ):
        raise ApiError(
            422,
            "invalid_request",
            f"field 'score_threshold' must be a number between 0 and 1, got {body.score_threshold}",
            "score_threshold",
            problem="out_of_range",
        )
    try:
        return parse_filters(body.filter)
    except FilterError as err:
        raise ApiError(422, "invalid_request", f"field 'filter': {err}", "filter", problem="bad_filter") from None
