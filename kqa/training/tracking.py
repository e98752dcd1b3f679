"""What a run reports: wandb that never needs a login, metrics.jsonl records, peak memory."""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch

logger = logging.getLogger(__name__)


METRICS_FILE = "metrics.jsonl"


def wandb_credentials_exist() -> bool:
    """True when wandb can log in: WANDB_API_KEY, or the netrc entry `wandb login` writes for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no netrc file, or one that cannot be read
        return False


def default_wandb_to_offline() -> None:
    """Never require a login to train: with no credentials at all (and no WANDB_MODE chosen), wandb logs
    locally (`wandb sync` uploads it later). A user logged in with `wandb login` stays online."""
    if not os.environ.get("WANDB_MODE") and not wandb_credentials_exist():
        os.environ["WANDB_MODE"] = "offline"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated tensors on a CUDA device, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a last line cut short by a crash is dropped with a warning."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not valid JSON ({err})") from err
            logger.warning("%s:%d: dropping a record cut short (%s)", path, number, err)
    return records
