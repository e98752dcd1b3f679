"""Where a saved index lives on disk, and how a new version replaces the old one without a moment in
which the directory holds half of each.

    IDX/CURRENT                 {"generation": N}: the version `Retriever.load(IDX)` reads
    IDX/generations/N/          one complete index (index.json, documents.jsonl, passages.safetensors, bm25/)

A save writes generation N+1 beside N, flushes it to disk, then switches `CURRENT` with one atomic
`os.replace`; only then are older generations removed. Killed before the switch, the index is still
N (the half-written N+1 is removed by the next save); killed after it, it is N+1. A generation
directory is itself a loadable index, and so is the flat layout of format version 1 (the files
directly in IDX, no CURRENT): the first save into such a directory moves it to this layout.

One writer at a time: two processes saving into the same directory at once are not supported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

POINTER_FILE = "CURRENT"
GENERATIONS_DIR = "generations"
# every file a generation holds (kqa.retrieval.retriever, ann.ANN_FILE): a flat copy of one holds them too
FLAT_LAYOUT_FILES = ("index.json", "documents.jsonl", "passages.safetensors", "terms.json", "bm25", "dense.hnsw")
# Test hook: with KQA_INDEX_PAUSE_AT=<point>, a save prints "kqa-index-pause: <point>" to stderr and
# sleeps at that point, so a test can kill the process there (tests/test_index_update.py). Points:
# "generation-partial" (some files of the new generation written), "generation-written" (all of
# them, before the switch), "switched" (after the switch, before older generations are removed).
PAUSE_ENV = "KQA_INDEX_PAUSE_AT"
PAUSE_POINTS = ("generation-partial", "generation-written", "switched")


def pause_point(point: str) -> None:
    """The test hook above; does nothing unless the environment names `point`."""
    if os.environ.get(PAUSE_ENV) == point:
        print(f"kqa-index-pause: {point}", file=sys.stderr, flush=True)
        time.sleep(3600)


def current_generation(index_dir: Path) -> int | None:
    """The generation CURRENT names, or None for a directory without CURRENT (flat layout, or new)."""
    pointer = index_dir / POINTER_FILE
    if not pointer.is_file():
        return None
    try:
        generation = json.loads(pointer.read_text(encoding="utf-8"))["generation"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{pointer}: not a readable index pointer ({type(err).__name__}: {err})") from None
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise ValueError(f"{pointer}: generation must be a positive int, got {generation!r}")
    return generation


def files_dir(index_dir: str | Path) -> Path:
    """The directory holding the current version's files: the generation CURRENT names, else `index_dir`
    itself (a flat layout, or a generation directory given directly)."""
    index_dir = Path(index_dir)
    generation = current_generation(index_dir)
    return index_dir if generation is None else index_dir / GENERATIONS_DIR / str(generation)


def begin_generation(index_dir: Path) -> Path:
    """A fresh, empty directory for the next generation. Generations a killed save left behind (any
    but the current one) are removed first. `index_dir` must be an index's root, not one of its
    generations: saving there would turn a live generation into a root and remove its files."""
    root_of = index_dir.parent.parent
    if index_dir.parent.name == GENERATIONS_DIR and index_dir.name.isdigit() and (root_of / POINTER_FILE).is_file():
        raise ValueError(
            f"{index_dir} is generation {index_dir.name} of the index {root_of}, not an index directory: "
            f"save into {root_of} (a new generation is written beside this one)"
        )
    index_dir.mkdir(parents=True, exist_ok=True)
    current = current_generation(index_dir)
    root = index_dir / GENERATIONS_DIR
    root.mkdir(exist_ok=True)
    existing = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    for leftover in root.iterdir():
        if leftover.name != str(current):
            _remove(leftover)
    target = root / str(max([*existing, current or 0]) + 1)  # never reuse a number a reader may still hold
    target.mkdir()
    return target


def commit_generation(index_dir: Path, target: Path) -> None:
    """Flush `target` to disk, point CURRENT at it atomically, then remove older generations and the
    files of a flat layout (no reader looks at them once CURRENT exists)."""
    for path in sorted(target.rglob("*")):
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(target)
    _fsync_dir(target.parent)
    pointer_tmp = index_dir / (POINTER_FILE + ".tmp")
    with open(pointer_tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"generation": int(target.name)}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, index_dir / POINTER_FILE)
    _fsync_dir(index_dir)
    pause_point("switched")
    for old in (target.parent).iterdir():
        if old != target:
            _remove(old)
    for name in FLAT_LAYOUT_FILES:
        if (index_dir / name).exists():
            _remove(index_dir / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """A rename or a new file is durable only once its directory is flushed (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
