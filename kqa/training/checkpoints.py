"""Checkpoint folders of a run: a checkpoint is complete once its state marker is written (last)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

CHECKPOINT_PREFIX = "checkpoint-"


STATE_MARKER = "kqa_trainer_state.json"  # written last: a checkpoint without it is incomplete


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints (their state marker exists), oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = []
    for path in checkpoint_root.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / STATE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(checkpoint_root: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(checkpoint_root)
    return checkpoints[-1] if checkpoints else None
