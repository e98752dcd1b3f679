"""Benchmark feature building: kqa.features (strided windows, offsets into the original text, cached)
against the common seed recipe (one padded 512-token sequence per example, no stride).

Both run in the same process on the same examples (train features from every `*train*.json` of the data
directory, eval features from every `*dev*.json`) with
the same tokenizer (by default multilingual-e5-small's real XLM-R tokenizer). kqa is timed

- cold:     a fresh, empty KQA_CACHE_DIR (builds the features and writes the cache file),
- uncached: `cache=False` (builds, writes nothing; the pure cost of the work),
- warm:     the same call again, served from the cache file,

for train features (labels) and eval features (offsets). The table reports examples/s, features/s,
the tokens each stores, and how many answers each loses (no window/sequence holds them).

    python benchmarks/bench_features.py --repeat 3 --out results.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

KINDS = ("train", "eval")


def count_tokens(features) -> tuple[int, int]:
    """(tokens stored, non-padding tokens) of a feature set."""
    import pyarrow.compute as pc

    table = features.select_columns(["input_ids", "attention_mask"]).with_format("arrow")[:]
    stored = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    real = int(pc.sum(pc.list_flatten(table.column("attention_mask"))).as_py() or 0)
    return stored, real


def kqa_builder(kind: str):
    from kqa.features import prepare_eval_features, prepare_train_features

    return prepare_train_features if kind == "train" else prepare_eval_features


def cache_files(directory: Path) -> set[Path]:
    return set(directory.rglob("*.arrow")) if directory.exists() else set()


def same_table(a, b) -> bool:
    return a.with_format("arrow")[:].equals(b.with_format("arrow")[:])


def bench_kind(kind: str, examples, tokenizer, config, args, cache_root: Path) -> tuple[list[dict], dict]:
    """Time the reference and kqa (cold, uncached, warm) for one kind of features."""
    build = kqa_builder(kind)
    rows: list[dict] = []
    n = len(examples)

    ref_times, (ref_features, ref_lost) = common.time_calls(
        lambda: common.seed_recipe_features(
            examples, tokenizer, args.reference_max_length, with_labels=kind == "train"
        ),
        args.repeat,
    )

    cold_times, cold_result = [], None
    for r in range(args.repeat):
        directory = cache_root / f"{kind}-cold-{r}"
        os.environ["KQA_CACHE_DIR"] = str(directory)
        t0 = time.perf_counter()
        cold_result = build(examples, tokenizer, config)
        cold_times.append(time.perf_counter() - t0)
        if not cache_files(directory):
            raise RuntimeError(f"the cold {kind} build wrote no cache file under {directory}")
    features, report = cold_result

    # Warm: the last cold run's cache directory is still KQA_CACHE_DIR.
    before = cache_files(cache_root / f"{kind}-cold-{args.repeat - 1}")
    warm_times, (warm_features, warm_report) = common.time_calls(
        lambda: build(examples, tokenizer, config), args.repeat
    )
    if cache_files(cache_root / f"{kind}-cold-{args.repeat - 1}") != before:
        raise RuntimeError(f"the warm {kind} build wrote a new cache file: it was not served from the cache")
    if not same_table(features, warm_features) or warm_report != report:
        raise RuntimeError(f"the warm {kind} build differs from the cold one")

    uncached_times, (uncached_features, _) = common.time_calls(
        lambda: build(examples, tokenizer, config, cache=False), args.repeat
    )
    if not same_table(features, uncached_features):
        raise RuntimeError(f"the uncached {kind} build differs from the cached one")

    ref_median = common.median(ref_times)
    ref_stored, ref_real = count_tokens(ref_features)
    kqa_stored, kqa_real = count_tokens(features)
    entries = [
        (
            f"seed recipe ({args.reference_max_length}, padded, no stride)",
            ref_times,
            len(ref_features),
            ref_stored,
            ref_real,
            ref_lost,
        ),
        ("kqa cold (empty cache, writes it)", cold_times, len(features), kqa_stored, kqa_real, report.num_lost_answers),
        ("kqa uncached (cache=False)", uncached_times, len(features), kqa_stored, kqa_real, report.num_lost_answers),
        ("kqa warm (from the cache)", warm_times, len(features), kqa_stored, kqa_real, report.num_lost_answers),
    ]
    for name, times, num_features, stored, real, lost in entries:
        m = common.median(times)
        rows.append(
            {
                "kind": kind,
                "implementation": name,
                "median_s": m,
                "best_s": min(times),
                "times_s": times,
                "examples": n,
                "features": num_features,
                "examples_per_s": n / m,
                "features_per_s": num_features / m,
                "speedup": ref_median / m,
                "tokens_stored": stored,
                "tokens_non_pad": real,
                "lost_answers": lost,
            }
        )
    summary = {"kqa_report": report.summary(), "reference_lost_answers": ref_lost}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=common.default_data_dir(),
        help="folder of SQuAD-format JSON files (all are used); default $KQA_DATA_DIR or ../shared/data",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a tokenizer directory; default: multilingual-e5-small's XLM-R tokenizer",
    )
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples only (smoke runs)")
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-query-length", type=int, default=64)
    parser.add_argument("--reference-max-length", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per implementation; median and best are reported")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="also cProfile one cold and one warm kqa train build; print the TOP functions",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import datasets

    from kqa.features import FeatureConfig

    datasets.disable_progress_bars()
    logging.getLogger("kqa").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    # Train features from the *train* files, eval features from the *dev* files: as a run builds them
    # (and the two splits may share ids: TyDi QA's Korean dev repeats two train questions).
    files, examples_by_kind, per_file = [], {}, {}
    for kind, split in (("train", "train"), ("eval", "dev")):
        kind_files = common.squad_files(args.data_dir, split=split)
        examples_by_kind[kind], counts = common.load_examples(kind_files, args.max_examples)
        files += kind_files
        per_file.update(counts)
    tokenizer, tokenizer_name = common.load_tokenizer(args.tokenizer)
    config = FeatureConfig(
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length
    )
    setup_s = time.perf_counter() - t0

    rows, summaries, profiles = [], {}, {}
    previous_cache_dir = os.environ.get("KQA_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="kqa-bench-features-") as tmp:
        cache_root = Path(tmp)
        try:
            for kind in args.kinds:
                kind_rows, summaries[kind] = bench_kind(
                    kind, examples_by_kind[kind], tokenizer, config, args, cache_root
                )
                rows.extend(kind_rows)
            if args.profile:
                os.environ["KQA_CACHE_DIR"] = str(cache_root / "profile")
                build = kqa_builder("train")
                train_examples = examples_by_kind["train"]
                profiles["train cold"] = common.profile_call(
                    lambda: build(train_examples, tokenizer, config), args.profile
                )
                profiles["train warm"] = common.profile_call(
                    lambda: build(train_examples, tokenizer, config), args.profile
                )
        finally:
            if previous_cache_dir is None:
                os.environ.pop("KQA_CACHE_DIR", None)
            else:
                os.environ["KQA_CACHE_DIR"] = previous_cache_dir

    machine = common.machine_info()
    settings = common.settings_from_args(args)
    counts = {kind: len(ex) for kind, ex in examples_by_kind.items()}
    settings.update({"tokenizer_name": tokenizer_name, "num_examples": counts, "files": per_file})
    common.print_header(machine, {k: v for k, v in settings.items() if k != "files"})
    print(
        f"data: {counts['train']} train examples (*train*.json) and {counts['eval']} eval examples (*dev*.json) "
        f"from {len(files)} files (loaded with the tokenizer in {setup_s:.1f} s)"
    )
    for kind, summary in summaries.items():
        print(f"kqa {kind}: {summary['kqa_report']}")
    print("checked: warm features equal cold ones and wrote no cache file; uncached features equal cached ones")
    common.print_table(
        rows,
        [
            ("kind", "kind", ""),
            ("implementation", "implementation", ""),
            ("median_s", "median s", ".3f"),
            ("best_s", "best s", ".3f"),
            ("examples_per_s", "examples/s", ",.0f"),
            ("features", "features", ","),
            ("features_per_s", "features/s", ",.0f"),
            ("speedup", "vs ref", ".2f"),
            ("tokens_stored", "tokens stored", ","),
            ("tokens_non_pad", "non-pad tokens", ","),
            ("lost_answers", "lost answers", ""),
        ],
    )
    for name, text in profiles.items():
        print(f"\ncProfile, kqa {name} build (top {args.profile} by own time):\n{text}")
    common.write_json(args.out, machine=machine, settings=settings, results=rows, reports=summaries, profiles=profiles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
