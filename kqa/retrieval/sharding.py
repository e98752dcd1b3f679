"""Embedding a corpus's passages over processes (`accelerate launch -m kqa index`), in resumable chunks.

The passages are cut into fixed chunks of `chunk_size` by index ([0, 1024), [1024, 2048), …): the
boundaries depend on the passage count only, never on the number of processes, so a run resumed with
another `--num_processes` still reuses what was done. Each process embeds a contiguous share of the
chunks still missing and writes each one as it finishes,

    <output_dir>/.embedding-work/<fingerprint>/chunk-<start>-<end>.npy     float32 [end - start, d]

to a temporary name first and renamed into place (a killed process never leaves a half chunk under a
chunk's name). The main process waits for every process, then merges the chunks in order; the others
are done. The fingerprint hashes the embedding model (weights, vocabulary, settings) and the text of
every passage, so a work folder of another corpus, passage length or model is never read.

Test hook: with KQA_EMBED_STOP_AFTER_CHUNKS=N in the environment, each process stops with
`EmbeddingStopped` after writing N chunks of its own — an interrupted run, for tests of resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kqa.retrieval.dense import Embedder

DEFAULT_CHUNK_PASSAGES = 1024  # e5-small: seconds on a GPU, minutes on CPU; 1.5 MiB of float32 per chunk
WORK_DIR_NAME = ".embedding-work"  # inside the index's output directory
STOP_AFTER_ENV = "KQA_EMBED_STOP_AFTER_CHUNKS"


class EmbeddingStopped(RuntimeError):
    """A process stopped on purpose after some chunks (the KQA_EMBED_STOP_AFTER_CHUNKS test hook)."""


@dataclass(frozen=True)
class ShardReport:
    work_dir: Path
    passages: int
    chunk_size: int
    chunks: int
    reused: int  # complete chunks found from an earlier run, not embedded again
    invalid: int  # files under a chunk's name with the wrong shape or unreadable: embedded again
    processes: int
    device: str
    cpu_threads: int | None  # torch threads of each process on CPU (None on GPUs)

    def summary(self) -> str:
        threads = f", {self.cpu_threads} torch thread(s) each" if self.cpu_threads else ""
        invalid = f", {self.invalid} unreadable chunk(s) embedded again" if self.invalid else ""
        return (
            f"embedding {self.passages} passages in {self.chunks} chunks of {self.chunk_size} over "
            f"{self.processes} process(es) on {self.device}{threads}: {self.reused} chunk(s) reused from "
            f"{self.work_dir}, {self.chunks - self.reused} embedded{invalid}"
        )


@dataclass
class ShardedEmbeddings:
    embeddings: np.ndarray  # [passages, d] float32, in passage order
    report: ShardReport
    seconds: float  # wall time of the call on the main process, waits included


def launched_by_accelerate() -> bool:
    """True under `accelerate launch` (any number of processes) or another launcher of several
    processes (torchrun): then `kqa index` embeds in chunks (this module)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


def distributed_state():
    """The processes of this launch. On CPU (accelerate launch --cpu, or no GPU) accelerate's
    PartialState joins them over gloo only when told `cpu=True`, which accelerate launch passes through
    ACCELERATE_USE_CPU."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def configure_cpu_threads(state) -> int | None:
    """Torch threads per process when the processes share the CPU: OMP_NUM_THREADS when set (accelerate
    launch sets it from --num_cpu_threads_per_process, or to cores / processes with --cpu), else the
    usable cores divided among the processes of this machine — so N processes do not oversubscribe the
    cores. None (nothing set) on GPUs."""
    import torch

    if state.device.type != "cpu":
        return None
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, len(os.sched_getaffinity(0)) // local_processes)
    torch.set_num_threads(threads)
    return threads


def process_device(requested: str | None, state) -> str:
    """Each process embeds on its own device (cuda:<local rank> on GPUs); `requested` (--device) may
    only name the same kind."""
    import torch

    if requested is not None and torch.device(requested).type != state.device.type:
        raise ValueError(
            f"--device {requested}: under accelerate launch each process embeds on its own device (here "
            f"{state.device}); choose devices with accelerate launch's flags (--cpu, --gpu_ids, --num_processes)"
        )
    return str(state.device)


def work_fingerprint(embedder: Embedder, texts: Sequence[str]) -> str:
    """sha256 of the embedder (weights, vocabulary, settings) and of every passage text in order."""
    digest = hashlib.sha256()
    digest.update(json.dumps([embedder.fingerprint, asdict(embedder.settings)], sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # lengths keep ["ab", "c"] apart from ["a", "bc"]
        digest.update(data)
    return digest.hexdigest()


def chunk_ranges(num_passages: int, chunk_size: int) -> list[tuple[int, int]]:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return [(s, min(s + chunk_size, num_passages)) for s in range(0, num_passages, chunk_size)]


def share(items: list, num_processes: int, rank: int) -> list:
    """The contiguous share of `items` of process `rank` (the first len % num_processes get one more)."""
    base, extra = divmod(len(items), num_processes)
    begin = rank * base + min(rank, extra)
    return items[begin : begin + base + (rank < extra)]


def chunk_path(work_dir: Path, start: int, end: int) -> Path:
    return work_dir / f"chunk-{start}-{end}.npy"


def _read_chunk(path: Path, rows: int, dim: int, *, load: bool) -> np.ndarray | None:
    """The chunk's array if the file holds float32 [rows, dim] (only its header is read unless `load`),
    else None."""
    try:
        array = np.load(path, mmap_mode=None if load else "r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.shape != (rows, dim) or array.dtype != np.float32:
        return None
    return np.asarray(array) if load else array


def _write_chunk(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the chunk's name only ever holds a complete chunk


def _stop_after() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{STOP_AFTER_ENV}={value!r}: expected a positive number of chunks")
    return int(value)


def embed_passages_sharded(
    embedder: Embedder,
    texts: Sequence[str],
    work_root: str | Path,
    *,
    state=None,
    chunk_size: int = DEFAULT_CHUNK_PASSAGES,
    cpu_threads: int | None = None,
    show_progress: bool = False,
) -> ShardedEmbeddings | None:
    """Embed `texts` as passages over the processes of `state` (an accelerate PartialState; the
    current one when None), in chunks under `work_root/<fingerprint>`. Every process must call it with
    the same texts. Returns the merged embeddings on the main process, None on the others."""
    from tqdm.auto import tqdm

    t = time.perf_counter()
    state = state if state is not None else distributed_state()
    stop_after = _stop_after()
    work_dir = Path(work_root) / work_fingerprint(embedder, texts)[:32]
    ranges = chunk_ranges(len(texts), chunk_size)
    dim = embedder.dimension
    if state.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "work.json").write_text(
            json.dumps({"embedder": embedder.identity(), "passages": len(texts)}, indent=2) + "\n", encoding="utf-8"
        )
    state.wait_for_everyone()
    present = [chunk_path(work_dir, s, e).exists() for s, e in ranges]
    complete = [
        ok and _read_chunk(chunk_path(work_dir, s, e), e - s, dim, load=False) is not None
        for ok, (s, e) in zip(present, ranges)
    ]
    # Every process has looked before any writes, so all agree on what is missing and who embeds it.
    state.wait_for_everyone()
    missing = [r for r, ok in zip(ranges, complete) if not ok]
    mine = share(missing, state.num_processes, state.process_index)
    quiet = not (show_progress and state.is_main_process)
    bar = tqdm(total=sum(e - s for s, e in mine), desc="embedding passages", unit="passage", disable=quiet)
    for written, (s, e) in enumerate(mine, 1):
        _write_chunk(chunk_path(work_dir, s, e), embedder.embed_passages(texts[s:e]))
        bar.update(e - s)
        if stop_after is not None and written >= stop_after:
            raise EmbeddingStopped(f"process {state.process_index} stopped after {written} chunk(s) ({STOP_AFTER_ENV})")
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    report = ShardReport(
        work_dir=work_dir,
        passages=len(texts),
        chunk_size=chunk_size,
        chunks=len(ranges),
        reused=sum(complete),
        invalid=sum(p and not c for p, c in zip(present, complete)),
        processes=state.num_processes,
        device=state.device.type,
        cpu_threads=cpu_threads,
    )
    embeddings = _merge(work_dir, ranges, dim)
    return ShardedEmbeddings(embeddings, report, round(time.perf_counter() - t, 3))


def _merge(work_dir: Path, ranges: list[tuple[int, int]], dim: int) -> np.ndarray:
    out = np.empty((ranges[-1][1] if ranges else 0, dim), dtype=np.float32)
    for s, e in ranges:
        array = _read_chunk(chunk_path(work_dir, s, e), e - s, dim, load=True)
        if array is None:
            raise ValueError(f"{chunk_path(work_dir, s, e)}: missing or not float32 [{e - s}, {dim}] after embedding")
        out[s:e] = array
    return out


def remove_work_dir(work_dir: Path) -> list[Path]:
    """Remove a finished run's chunks (the index holds the embeddings now); return the other work
    folders left beside it (of other corpora or models), which are not used."""
    shutil.rmtree(work_dir, ignore_errors=True)
    others = sorted(p for p in work_dir.parent.iterdir() if p.is_dir()) if work_dir.parent.is_dir() else []
    if work_dir.parent.is_dir() and not any(work_dir.parent.iterdir()):
        work_dir.parent.rmdir()
    return others
