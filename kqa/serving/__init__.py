"""`kqa serve`: an HTTP server for a saved model (docs/serving.md).

- `kqa.serving.settings`: `ServerLimits` and `BatchingSettings`, plain dataclasses (the flags' defaults),
- `kqa.serving.schemas`: request and response bodies, errors (a bounded 4xx naming the field),
- `kqa.serving.batching`: the micro-batcher that gathers questions of concurrent requests,
- `kqa.serving.limits`: the body cap (a body over `max_body_bytes` is a 413 after a bounded drain, chunked or not),
- `kqa.serving.errors`: the error handlers (every error is `{"error": {...}}`; nothing is kept after it),
- `kqa.serving.app`: the FastAPI application and `serve`,
- `kqa.serving.harness`: a server in a child process, for tests and benchmarks.

The names below load on first use, so that `kqa.serving.settings` imports no web framework.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_app": "kqa.serving.app",
    "max_body_bytes": "kqa.serving.settings",
    "serve": "kqa.serving.app",
    "MicroBatcher": "kqa.serving.batching",
    "ServerProcess": "kqa.serving.harness",
    "free_port": "kqa.serving.harness",
    "ApiError": "kqa.serving.schemas",
    "BatchingSettings": "kqa.serving.settings",
    "ServerLimits": "kqa.serving.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kqa.serving' has no attribute {name!r}")
