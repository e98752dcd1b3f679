"""`kqa serve`: an HTTP server for a saved model (docs/serving.md).

- `kqa.serving.schemas`: per-request limits, request and response bodies, errors (a bounded 4xx),
- `kqa.serving.batching`: the micro-batcher that gathers questions of concurrent requests,
- `kqa.serving.app`: the FastAPI application and `serve`,
- `kqa.serving.harness`: a server in a child process, for tests and benchmarks.
"""

from kqa.serving.app import create_app, max_body_bytes, serve
from kqa.serving.batching import BatchingSettings, MicroBatcher
from kqa.serving.harness import ServerProcess, free_port
from kqa.serving.schemas import ApiError, ServerLimits

__all__ = ["ApiError", "BatchingSettings", "MicroBatcher", "ServerLimits", "ServerProcess", "create_app", "free_port",
           "max_body_bytes", "serve"]
