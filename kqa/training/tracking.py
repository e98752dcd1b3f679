"""What a run reports: wandb that never needs a login, metrics.jsonl records, evaluation metrics, peak memory."""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Optional
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


def start_metrics_log(metrics_file: Path, resumed_step: Optional[int]) -> None:
    """metrics.jsonl holds each step of this run once. A run resumed at `resumed_step` keeps the records up
    to it (those after it are logged again); a new run (None) moves an older log aside."""
    if not metrics_file.exists():
        return
    if resumed_step is not None:
        kept = [r for r in _read_records(metrics_file) if r.get("step", 0) <= resumed_step]
        tmp = metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(metrics_file)
        return
    number = 1
    while (old := metrics_file.with_name(f"metrics.previous-{number}.jsonl")).exists():
        number += 1
    metrics_file.rename(old)
    logger.warning("%s held the log of an earlier run; moved it to %s", metrics_file, old)


# The SQuAD 2.0-style scores logged per set with unanswerable questions (`SetEvaluation.v2`).
V2_METRICS = ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1", "best_f1_thresh")


def evaluation_metrics(evaluations: dict) -> dict[str, float]:
    """`<set>/exact_match`, `<set>/f1`, `<set>/unanswered`, `<set>/loss` of each set's `SetEvaluation`,
    `<set>/<column>=<value>/exact_match` and `.../f1` for each breakdown of its result (KLUE-MRC's
    `question_type=1`, ...), `<set>/HasAns_f1` and the rest of `V2_METRICS` for a set with unanswerable
    questions, and `exact_match` / `f1` over all sets, weighted by their questions."""
    metrics: dict[str, float] = {}
    for name, evaluation in evaluations.items():
        result = evaluation.result
        metrics[f"{name}/exact_match"] = result.exact_match
        metrics[f"{name}/f1"] = result.f1
        metrics[f"{name}/unanswered"] = result.unanswered
        for column, groups in result.breakdown.items():
            for value, group in groups.items():
                metrics[f"{name}/{column}={value}/exact_match"] = group.exact_match
                metrics[f"{name}/{column}={value}/f1"] = group.f1
        if evaluation.loss is not None:
            metrics[f"{name}/loss"] = evaluation.loss
        v2 = getattr(evaluation, "v2", None)
        metrics.update({f"{name}/{k}": v2.scores[k] for k in V2_METRICS if v2 is not None and k in v2.scores})
    total_questions = sum(e.result.total for e in evaluations.values())
    if total_questions:
        metrics["exact_match"] = (
            sum(e.result.exact_match * e.result.total for e in evaluations.values()) / total_questions
        )
        metrics["f1"] = sum(e.result.f1 * e.result.total for e in evaluations.values()) / total_questions
    return metrics


def start_trackers(accelerator, config) -> None:
    """Accelerate's trackers (`report_to`), given the scalar settings of the run (a `TrainConfig`)."""
    flat = {k: v for k, v in config.to_flat_dict().items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers(
        config.project_name,
        config=flat,
        init_kwargs={"wandb": {"name": config.run_name, "dir": str(config.output_dir)}},
    )
