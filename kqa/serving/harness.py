"""A server in a child process, ready when `GET /health` answers: for tests and benchmarks/bench_server.py."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


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

    def __init__(
        self,
        model_dir: str | Path,
        args: list[str] | tuple = (),
        *,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        ready_timeout_s: float = 180.0,
        env: dict | None = None,
    ):
        self.model_dir, self.args, self.host = str(model_dir), [str(a) for a in args], host
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            **(env or {}),
        }
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

    def start(self, attempts: int = 3) -> ServerProcess:
        import subprocess
        import sys
        import tempfile

        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="kqa-serve-")) / "server.log"
        for attempt in range(attempts):
            self.port = free_port(self.host)
            self._log = open(self.log_path, "a", encoding="utf-8")
            command = [
                sys.executable,
                "-m",
                "kqa",
                "serve",
                "--model",
                self.model_dir,
                "--host",
                self.host,
                "--port",
                str(self.port),
                *self.args,
            ]
            self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
            if self._wait_ready():
                return self
            code = self.proc.poll()
            self.stop()
            if code is None or attempt == attempts - 1 or "address already in use" not in self.log_tail().lower():
                raise RuntimeError(
                    f"kqa serve did not become ready (exit code {code}); log {self.log_path}:\n{self.log_tail()}"
                )
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

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
