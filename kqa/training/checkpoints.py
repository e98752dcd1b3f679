"""Checkpoints of a run: what one holds, how it is written and verified, which one `latest` resumes from.

A checkpoint (`checkpoints/checkpoint-<step>/`) loads without unpickling anything:

  model.safetensors                  the weights (safetensors `save_model`)
  optimizer.json + .safetensors      the optimizer's state dict (kqa.training.state_files)
  scheduler.json                     the learning-rate schedule's state dict
  grad_scaler.json                   fp16 only: the gradient scaler's state dict
  rng_state_<process>.json + .safetensors   each process's Python, NumPy, torch CPU and CUDA generators
  kqa_trainer_state.json             written last: the loop counters (`TrainingState`), Accelerate's
                                     accumulation step, and every other file's size and sha256

It is written into `.tmp-checkpoint-<step>` (the main process writes the shared files, each process its
RNG state), the marker last after a barrier, fsync'd, then renamed: a process killed while writing (or a
power loss) leaves no directory `latest` would consider. A write that fails (a full disk, or any error
on any process) raises `CheckpointWriteError` on every process and removes the temporary directory.
`verify_checkpoint` checks every file against the marker; `find_latest_checkpoint` skips a checkpoint
that fails it with a warning naming the file. The next run's setup cleans up after a killed one
(`recover_interrupted_writes`).

Under FSDP, DeepSpeed, Megatron-LM or XLA the weights and optimizer are sharded in ways only Accelerate
knows how to gather, so there the checkpoint is Accelerate's `save_state` (pickles) with the same marker,
and resuming from it needs `allow_pickled_checkpoint` (as do checkpoints written by kqa before this
format).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from kqa.model_card import ModelCardInfo, write_model_card
from kqa.training.marker import (  # the errors and the marker's names are part of this module's API
    ACCELERATE_FORMAT,
    KQA_FORMAT,
    STATE_MARKER,
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    verify_checkpoint,
    write_marker,
)
from kqa.training.state import TrainingState
from kqa.training.state_files import capture_rng_state, load_state_tree, restore_rng_state, save_state_tree

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"  # a directory being written: `.tmp-checkpoint-<step>`
MODEL_FILE = "model.safetensors"
OPTIMIZER_STEM, SCHEDULER_STEM, SCALER_STEM = "optimizer", "scheduler", "grad_scaler"
RNG_STEM = "rng_state_{process}"
FORMAT_VERSION = 1
ALLOW_PICKLE_FLAG = "--allow_pickled_checkpoint true"
_SHARDING_TYPES = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")  # Accelerate alone gathers their state


class PickledCheckpointError(CheckpointError):
    """A checkpoint in Accelerate's pickle format, which resumes only with `allow_pickled_checkpoint`."""


@dataclass
class Checkpointed:
    """What a checkpoint saves and restores: the prepared objects and the loop counters."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    state: TrainingState


# ---- which checkpoints exist, which is the latest usable one -------------------------------------------


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Checkpoints whose marker was written (not yet verified), oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = []
    for path in checkpoint_root.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / STATE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(checkpoint_root: Path) -> Optional[Path]:
    """The newest checkpoint that verifies; a newer one that does not is skipped with a warning. None when
    there is no checkpoint; `CorruptCheckpointError` when there are some and none verifies (starting over
    would discard them)."""
    found = _latest_verified(checkpoint_root)
    return found[0] if found else None


def _latest_verified(checkpoint_root: Path) -> Optional[tuple[Path, dict]]:
    """`find_latest_checkpoint`'s checkpoint and its verified marker."""
    problems = []
    for path in reversed(list_checkpoints(checkpoint_root)):
        try:
            marker = verify_checkpoint(path)
        except CorruptCheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            logger.warning("falling back to %s, the newest checkpoint that verifies: %s", path, "; ".join(problems))
        return path, marker
    if problems:
        raise CorruptCheckpointError(f"no usable checkpoint in {checkpoint_root}: {'; '.join(problems)}")
    return None


def _resolve_checkpoint(source: Optional[str], checkpoint_root: Path) -> Optional[tuple[Path, dict]]:
    """`resume_from_checkpoint` → the checkpoint to load and its verified marker, or None to start fresh."""
    if not source:
        return None
    if source == "latest":
        found = _latest_verified(checkpoint_root)
        if found is None:
            logger.warning("resume_from_checkpoint=latest: no checkpoint in %s; starting fresh", checkpoint_root)
        return found
    path = Path(source)
    if not (path / STATE_MARKER).is_file():
        raise FileNotFoundError(f"{path}: not a complete kqa checkpoint (missing {STATE_MARKER})")
    return path, verify_checkpoint(path)


# ---- writing -------------------------------------------------------------------------------------------


def checkpoint_format(accelerator) -> str:
    """kqa's own files everywhere Accelerate's state is not sharded (CPU, one GPU, DDP)."""
    return ACCELERATE_FORMAT if accelerator.distributed_type.name in _SHARDING_TYPES else KQA_FORMAT


def _raise_together(accelerator, error: Optional[Exception], what: Path, cleanup: Callable[[], None]) -> None:
    """A barrier that also tells every process whether any failed (so none waits for one that gave up):
    then the temporary files are removed and all raise `CheckpointWriteError`."""
    failed = torch.tensor(float(error is not None), device=accelerator.device)
    if accelerator.reduce(failed, "sum").item() == 0:
        return
    if accelerator.is_main_process:
        cleanup()
    if error is None:
        reason = "another process failed to write"
    else:  # an OSError's reason without the file name (the message names the checkpoint)
        reason = f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"
    raise CheckpointWriteError(f"could not write {what.name} in {what.parent}: {reason}") from error


def _attempt(write: Callable[[], None]) -> Optional[Exception]:
    """Run one process's part of a write; what it raised. Any exception, not only I/O errors (a full disk,
    safetensors' EFBIG): one that escaped here would skip the collective in `_raise_together` and leave
    the other processes waiting there until the distributed timeout."""
    try:
        write()
    except Exception as err:  # noqa: BLE001 (reported to every process, then raised on all)
        return err
    return None


def _fsync(path: Path) -> None:
    if path.is_dir() and os.name == "nt":
        return  # Windows has no directory handle to sync (NTFS journals the rename itself)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in_durably(tmp: Path, target: Path, aside: Optional[Path] = None) -> None:
    """Rename the written directory `tmp` to `target` (moving an existing `target` to `aside` first) so that
    a power loss cannot leave `target` empty or half-written: the rename reaches the disk before the data
    unless both are synced. So every file and directory under `tmp` is fsync'd, then renamed, then the
    parent fsync'd; only after that may the caller delete older copies (rotation, `aside`)."""
    for path in [*tmp.rglob("*"), tmp]:
        _fsync(path)
    if aside is not None and target.exists():
        target.rename(aside)
    tmp.rename(target)
    _fsync(target.parent)


def _write_kqa_files(parts: Checkpointed, tmp: Path) -> None:
    """The main process writes the shared state, each process its own RNG state."""
    from safetensors.torch import save_model

    acc = parts.accelerator
    if acc.is_main_process:
        save_model(acc.unwrap_model(parts.model), str(tmp / MODEL_FILE))
        save_state_tree(parts.optimizer.state_dict(), tmp, OPTIMIZER_STEM)
        save_state_tree(parts.scheduler.state_dict(), tmp, SCHEDULER_STEM)
        if acc.scaler is not None:
            save_state_tree(acc.scaler.state_dict(), tmp, SCALER_STEM)
    save_state_tree(capture_rng_state(acc.device), tmp, RNG_STEM.format(process=acc.process_index))


def write_checkpoint(parts: Checkpointed, final: Path, keep: Optional[int] = None) -> None:
    """Write the checkpoint into a temporary directory, the marker last, then rename it to `final`; keep
    the newest `keep` checkpoints."""
    acc = parts.accelerator
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    layout = checkpoint_format(acc)

    def prepare() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def cleanup() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    # Each _raise_together is the barrier between the phases: the directory exists, every process wrote
    # its files, the main process renamed the checkpoint.
    _raise_together(acc, _attempt(prepare) if acc.is_main_process else None, final, cleanup)
    if layout == ACCELERATE_FORMAT:
        error = _attempt(lambda: acc.save_state(str(tmp), safe_serialization=True))
    else:
        error = _attempt(lambda: _write_kqa_files(parts, tmp))
    _raise_together(acc, error, final, cleanup)
    body = {
        "format": layout,
        "version": FORMAT_VERSION,
        "training_state": parts.state.state_dict(),
        "accelerator_step": acc.step,
        "num_processes": acc.num_processes,
    }

    def commit() -> None:
        write_marker(tmp, body)
        shutil.rmtree(final, ignore_errors=True)  # this step saved before (a resumed run), or a corrupt one
        _swap_in_durably(tmp, final)
        rotate_checkpoints(final.parent, keep)

    _raise_together(acc, _attempt(commit) if acc.is_main_process else None, final, cleanup)


def rotate_checkpoints(checkpoint_root: Path, keep: Optional[int]) -> None:
    """Keep the newest `keep` checkpoints (all when None or 0)."""
    if not keep:
        return
    for old in list_checkpoints(checkpoint_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _swap_paths(directory: Path) -> tuple[Path, Path]:
    """Where `replace_directory` writes the new `directory` and where it moves the previous one meanwhile."""
    return directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")


def replace_directory(accelerator, directory: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into `.<name>.tmp` on the main process, then swap it in for `directory` (best/, final/).
    On failure the temporary directory is removed, `directory` is left as it was and every process raises
    `CheckpointWriteError`."""
    tmp, old = _swap_paths(directory)

    def write_and_swap() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        _swap_in_durably(tmp, directory, aside=old)
        shutil.rmtree(old, ignore_errors=True)

    error = _attempt(write_and_swap) if accelerator.is_main_process else None
    _raise_together(accelerator, error, directory, lambda: shutil.rmtree(tmp, ignore_errors=True))


def recover_interrupted_writes(checkpoint_root: Path, model_directories: Iterable[Path]) -> None:
    """Undo what a process killed while saving left behind; for the main process, before the run writes.

    Killed between moving `best/` aside and renaming the new one in, only `.best.old` holds the best model:
    it is put back (so is `final/`), else the next swap would delete it. The temporary directories of
    killed writes (`.tmp-checkpoint-<step>`, `.best.tmp`, a `.best.old` beside its `best/`) are removed."""
    stale = []
    for directory in model_directories:
        tmp, old = _swap_paths(directory)
        if old.is_dir() and not directory.exists():
            old.rename(directory)
            logger.warning("restored %s from %s: a run was killed while replacing it", directory, old)
        stale += [path for path in (tmp, old) if path.exists()]
    if checkpoint_root.is_dir():
        stale += [path for path in checkpoint_root.iterdir() if path.name.startswith(TMP_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        names = ", ".join(path.name for path in stale)
        logger.info("removed %d temporary directories an interrupted run left: %s", len(stale), names)


def save_model_directory(
    accelerator,
    model: torch.nn.Module,
    directory: Path,
    tokenizer,
    kqa_config: dict,
    metrics: Optional[dict[str, float]],
    predictions: dict,
    card: Optional[ModelCardInfo] = None,
) -> None:
    """best/ or final/: the save_pretrained layout that `QuestionAnswerer` and `evaluate.py` load, with the
    metrics, predictions and model card (`README.md`), replaced whole (`replace_directory`).

    Every process takes part in gathering the state dict: under FSDP or DeepSpeed ZeRO-3 each holds only a
    shard, and `get_state_dict` assembles the full weights; the main process writes them."""
    from kqa.postprocess import write_predictions

    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)

    def write(tmp: Path) -> None:
        accelerator.unwrap_model(model).save_pretrained(
            tmp, tokenizer=tokenizer, kqa_config=kqa_config, state_dict=state_dict
        )
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
        for name, set_predictions in predictions.items():
            write_predictions(set_predictions, tmp / "predictions" / name)
        if card is not None:
            write_model_card(tmp, card)

    replace_directory(accelerator, directory, write)
    accelerator.wait_for_everyone()


# ---- loading ---------------------------------------------------------------------------------------------


def resume_from_checkpoint(
    parts: Checkpointed, source: Optional[str], checkpoint_root: Path, allow_pickle: bool = False
) -> bool:
    """`resume_from_checkpoint: PATH | latest` (`latest`: the newest in `checkpoint_root` that verifies):
    restore `parts` from it; False when there is nothing to resume from. Each file is hashed once, when
    the checkpoint is chosen."""
    found = _resolve_checkpoint(source, checkpoint_root)
    if found is not None:
        _load_verified(parts, *found, allow_pickle)
    return found is not None


def load_checkpoint(parts: Checkpointed, path: Path, allow_pickle: bool = False) -> None:
    """Restore `parts` from a checkpoint, verified first. kqa's format reads safetensors and JSON only;
    Accelerate's (pickles) needs `allow_pickle`, else `PickledCheckpointError` says how to allow it."""
    _load_verified(parts, path, verify_checkpoint(path), allow_pickle)


def _load_verified(parts: Checkpointed, path: Path, marker: dict, allow_pickle: bool) -> None:
    if marker["format"] == ACCELERATE_FORMAT:
        _load_with_accelerate(parts, path, marker, allow_pickle)
    elif marker["format"] == KQA_FORMAT:
        _load_kqa_files(parts, path, marker)
    else:
        raise CorruptCheckpointError(f"{path / STATE_MARKER}: unknown checkpoint format {marker['format']!r}")
    state = parts.state
    state.load_state_dict(marker["training_state"])
    logger.info(
        "resumed from %s at step %d (epoch %d, %d batches into it)",
        path,
        state.global_step,
        state.epoch,
        state.batches_seen_in_epoch,
    )


def _load_kqa_files(parts: Checkpointed, path: Path, marker: dict) -> None:
    from safetensors.torch import load_model

    acc = parts.accelerator
    # Read on the host, copied into the parameters wherever they live (safetensors rejects "cpu:0", the
    # device of a CPU process under DDP).
    load_model(acc.unwrap_model(parts.model), str(path / MODEL_FILE), device="cpu")
    parts.optimizer.load_state_dict(_read_tree(path, OPTIMIZER_STEM))
    parts.scheduler.load_state_dict(_read_tree(path, SCHEDULER_STEM))
    if acc.scaler is not None:
        acc.scaler.load_state_dict(_read_tree(path, SCALER_STEM))
    rng_stem = RNG_STEM.format(process=acc.process_index)
    if f"{rng_stem}.json" in marker["files"]:
        restore_rng_state(_read_tree(path, rng_stem), acc.device)
    else:
        logger.warning(
            "%s holds no random state for process %d (written by %d processes): it keeps its seeded generators, "
            "so the resumed run is not an exact continuation",
            path,
            acc.process_index,
            marker.get("num_processes", 1),
        )
    acc.step = marker["accelerator_step"]


def _read_tree(path: Path, stem: str) -> Any:
    try:
        return load_state_tree(path, stem)
    except ValueError as err:
        raise CorruptCheckpointError(str(err)) from err


def _load_with_accelerate(parts: Checkpointed, path: Path, marker: dict, allow_pickle: bool) -> None:
    if not allow_pickle:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pkl", ".pt"))
        raise PickledCheckpointError(
            f"{path} is in Accelerate's save_state format ({', '.join(pickles) or 'pickled state'}): loading it "
            f"unpickles files, which can run code they contain. If you wrote this checkpoint, resume with "
            f"{ALLOW_PICKLE_FLAG} (allow_pickled_checkpoint: true in YAML)"
        )
    acc = parts.accelerator
    if (path / "custom_checkpoint_0.pkl").is_file():  # kqa before the manifest registered its loop state
        acc.register_for_checkpointing(parts.state)
    acc.load_state(str(path))
