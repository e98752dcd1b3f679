"""The server's settings as plain dataclasses (no web framework imported): what one request may ask
for (`ServerLimits`) and how questions are micro-batched (`BatchingSettings`). `kqa serve`'s flags take
their defaults from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# 6, not 4 (UTF-8's most): json.dumps' default (ensure_ascii=True, what `requests.post(json=...)` and
# most clients send) writes every non-ASCII character as a \uXXXX escape, so 가 is 6 bytes on the wire.
# A character outside the BMP is a surrogate pair of escapes, 12 bytes: a request whose texts are all
# such characters, every one at its limit, can still pass the cap (sent as UTF-8 it is 4 bytes each).
JSON_BYTES_PER_CHAR = 6
JSON_OVERHEAD_BYTES = 65_536  # keys, quotes, commas, top_k and the other numbers of up to max_batch_questions


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

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted (a larger one is a 413, also when it is sent chunked): what a
        valid request can need, every question and context at its limit, `JSON_BYTES_PER_CHAR` bytes
        per character, plus `JSON_OVERHEAD_BYTES` for keys, punctuation and numbers."""
        chars = self.max_batch_questions * (self.max_context_chars + self.max_question_chars)
        return JSON_BYTES_PER_CHAR * chars + JSON_OVERHEAD_BYTES


def max_body_bytes(limits: ServerLimits) -> int:
    """`limits.max_body_bytes` (the function form `kqa.serving` has always exported)."""
    return limits.max_body_bytes


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
