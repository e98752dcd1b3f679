"""The marker of a checkpoint (`kqa_trainer_state.json`, written last): the loop state, the size and
sha256 of every other file, and its own checksum; and the errors a checkpoint can raise.
`kqa.training.checkpoints` writes and reads checkpoints with it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STATE_MARKER = "kqa_trainer_state.json"  # written last: a checkpoint without it is incomplete
KQA_FORMAT, ACCELERATE_FORMAT = "kqa-safetensors-json", "accelerate-save-state"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint (or best/, final/) failed, e.g. on a full disk; what was saved before is intact."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is missing, truncated or altered; the message names it."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _body_checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def write_marker(directory: Path, body: dict) -> None:
    """The marker, last: `body` plus the size and sha256 of every file beside it, and its own checksum."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != STATE_MARKER)
    manifest = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    body = {**body, "files": manifest}
    text = json.dumps({**body, "checksum": _body_checksum(body)}, indent=2)
    (directory / STATE_MARKER).write_text(text, encoding="utf-8")


def read_marker(checkpoint: Path) -> dict:
    """The marker's content; `CorruptCheckpointError` naming it when it does not parse or check out."""
    path = checkpoint / STATE_MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
        raise CorruptCheckpointError(f"{path}: unreadable ({err})") from err
    if not isinstance(marker, dict):
        raise CorruptCheckpointError(f"{path}: expected a JSON object")
    if "format" not in marker:
        return {"format": ACCELERATE_FORMAT, "training_state": marker, "files": None}  # kqa before the manifest
    body = {k: v for k, v in marker.items() if k != "checksum"}
    if marker.get("checksum") != _body_checksum(body) or not isinstance(marker.get("files"), dict):
        raise CorruptCheckpointError(f"{path}: its checksum does not match its content")
    return marker


def verify_checkpoint(checkpoint: Path) -> dict:
    """Check every file against the marker's manifest (size, then sha256); returns the marker.
    `CorruptCheckpointError` names the first file that is missing, cut short or altered."""
    marker = read_marker(checkpoint)
    for name, expected in (marker["files"] or {}).items():
        path = checkpoint / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptCheckpointError(f"{path}: {size} bytes where {expected['bytes']} were written")
        if _sha256(path) != expected["sha256"]:
            raise CorruptCheckpointError(f"{path}: its content changed since it was written (sha256 differs)")
    return marker
