"""Benchmark inference with `kqa.QuestionAnswerer`: single-question latency and batched throughput, for
short and long contexts, with a breakdown of where the time goes (features / model / post-processing).

Questions and contexts are real pairs from the data directory: short contexts of about 200 characters
(TyDi QA) and long ones of 2,000-4,000 characters (several 384-token windows each). The model is a
saved kqa model directory (`--model`, e.g. outputs/offline-e5-small/best) or, by default, a random-init
BERT built here with a WordPiece tokenizer trained on the data; the table says which.

- latency: one question per call, `--runs` calls after `--warmup` calls; p50 / p95 / mean,
- throughput: lists of `--batch-sizes` questions per call (each with its own context); questions/s,
- breakdown: the time of every call split into the stages `QuestionAnswerer.predict_rows` runs
  (examples table, feature building, model, post-processing, the rest),
- profile: cProfile of single-question calls, own time grouped by library and the top functions.

    python benchmarks/bench_inference.py --out results.json
    python benchmarks/bench_inference.py --model outputs/offline-e5-small/best --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

STAGES = ("examples table", "features", "model", "post-processing")


# --------------------------------------------------------------------------------------------------
# Inputs and model
# --------------------------------------------------------------------------------------------------

def question_pools(data_dir: Path, short_chars: tuple[int, int], long_chars: tuple[int, int]) -> dict[str, list[tuple]]:
    """(question, context) pairs with short and with long contexts, from every file of `data_dir`."""
    examples, _ = common.load_examples(common.squad_files(data_dir))
    pools: dict[str, list[tuple]] = {"short": [], "long": []}
    for question, context in zip(examples["question"], examples["context"]):
        if short_chars[0] <= len(context) <= short_chars[1]:
            pools["short"].append((question, context))
        elif long_chars[0] <= len(context) <= long_chars[1]:
            pools["long"].append((question, context))
    for kind, pool in pools.items():
        if not pool:
            raise SystemExit(f"{data_dir}: no question has a {kind} context "
                             f"(short: {short_chars[0]}-{short_chars[1]} characters, long: {long_chars[0]}-{long_chars[1]})")
    return pools


def build_random_model(args, work: Path) -> Path:
    """A random-init BERT of the requested shape with a WordPiece tokenizer trained on the data, saved
    as a kqa model directory (so that it loads exactly as a trained model would)."""
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    examples, _ = common.load_examples(common.squad_files(args.data_dir))
    tokenizer = build_wordpiece_tokenizer(common.corpus_texts(examples), vocab_size=args.vocab_size)
    config = tiny_bert_config(**common.bert_shape(args, max(args.vocab_size, len(tokenizer))))
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(config)
    model_dir = work / "random-model"
    model.save_pretrained(model_dir, tokenizer=tokenizer,
                          kqa_config={"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64})
    return model_dir


def describe_model(qa, model_dir: Path, built_here: bool) -> str:
    config = qa.model.config
    params = qa.model.num_parameters() / 1e6
    shape = (f"{getattr(config, 'model_type', '?')} {getattr(config, 'num_hidden_layers', '?')} layers x "
             f"{getattr(config, 'hidden_size', '?')}, {params:.1f}M parameters, tokenizer {len(qa.tokenizer)} pieces")
    origin = "random-init, built by the benchmark" if built_here else f"trained, {model_dir}"
    return f"{shape} ({origin})"


# --------------------------------------------------------------------------------------------------
# Stage timing
# --------------------------------------------------------------------------------------------------

class StageTimer:
    """Wraps the functions `QuestionAnswerer.predict_rows` calls, to split each call's time into its
    stages. A stage whose function cannot be found is counted under "other"."""

    def __init__(self, qa):
        self.qa = qa
        self.totals: dict[str, float] = defaultdict(float)
        self.found: list[str] = []

    def _timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[stage] += time.perf_counter() - t0
        return wrapper

    def reset(self) -> None:
        self.totals.clear()

    @contextlib.contextmanager
    def active(self):
        import datasets

        import kqa.inference as inference
        import kqa.prediction as prediction

        saved_from_list = datasets.Dataset.__dict__["from_list"]
        patched = []
        for module, stage, name in ((inference, "features", "prepare_eval_features"),
                                    (prediction, "model", "predict_logits"),
                                    (prediction, "post-processing", "decode_answers")):
            if hasattr(module, name):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, self._timed(stage, getattr(module, name)))
                self.found.append(stage)
        datasets.Dataset.from_list = self._timed("examples table", datasets.Dataset.from_list)
        self.found.append("examples table")
        try:
            yield self
        finally:
            setattr(datasets.Dataset, "from_list", saved_from_list)
            for module, name, fn in patched:
                setattr(module, name, fn)


def measure(qa, timer: StageTimer, pool: list[tuple], batch_size: int, calls: int, warmup: int) -> dict:
    """`calls` timed calls of `batch_size` questions (after `warmup` untimed ones); per-call times and the
    mean time per call of every stage."""
    def batch(i: int):
        items = [pool[(i * batch_size + k) % len(pool)] for k in range(batch_size)]
        questions, contexts = [q for q, _ in items], [c for _, c in items]
        return (questions[0], contexts[0]) if batch_size == 1 else (questions, contexts)

    for i in range(warmup):
        qa(*batch(i))
    timer.reset()
    times = []
    for i in range(calls):
        args = batch(warmup + i)
        t0 = time.perf_counter()
        qa(*args)
        times.append(time.perf_counter() - t0)
    stages = {stage: timer.totals.get(stage, 0.0) / calls for stage in STAGES}
    stages["other"] = max(sum(times) / calls - sum(stages.values()), 0.0)
    return {"times_s": times, "stages_s": stages}


def windows_per_question(qa, pool: list[tuple], limit: int = 200) -> float:
    import datasets

    from kqa.features import prepare_eval_features

    rows = [{"id": str(i), "question": q, "context": c} for i, (q, c) in enumerate(pool[:limit])]
    features, _ = prepare_eval_features(datasets.Dataset.from_list(rows), qa.tokenizer, qa.settings.features,
                                        cache=False)
    return len(features) / len(rows)


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------

def library_of(filename: str, function: str) -> str:
    """Which library a profiled function belongs to (C functions by the type they are a method of)."""
    text = filename if filename != "~" else function
    for name in ("kqa", "datasets", "pyarrow", "dill", "multiprocess", "tokenizers", "transformers", "torch",
                 "numpy", "safetensors", "fsspec", "huggingface_hub", "xxhash"):
        if f"/{name}/" in text or f"'{name}." in text or f" {name}." in text or f"<{name}." in text:
            return name
    if filename == "~":
        return "python built-ins"
    return "python stdlib"


def profile_single_questions(qa, pool: list[tuple], runs: int, top: int) -> dict:
    """cProfile `runs` single-question calls: own time per call grouped by library, and the top functions."""
    stats = common.run_profiled(lambda: [qa(*pool[i % len(pool)]) for i in range(runs)])
    by_library: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():
        by_library[library_of(filename, function)] += own
    total = sum(by_library.values())
    grouped = sorted(((lib, t / runs) for lib, t in by_library.items()), key=lambda item: -item[1])
    return {"runs": runs, "total_s_per_call": total / runs, "own_time_by_library_s_per_call": dict(grouped),
            "top_functions": common.top_functions(stats, top),
            "top_cumulative": common.top_functions(stats, top, sort="cumulative")}


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a saved kqa model directory; default: a random-init BERT built here")
    parser.add_argument("--data-dir", type=Path, default=common.default_data_dir(),
                        help="folder of SQuAD-format JSON files; default $KQA_DATA_DIR or ../shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=50, help="timed single-question calls per context kind")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before every measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--throughput-questions", type=int, default=64,
                        help="questions per (context kind, batch size) throughput measurement (at least one call)")
    parser.add_argument("--short-chars", type=int, nargs=2, default=[150, 260], metavar=("MIN", "MAX"))
    parser.add_argument("--long-chars", type=int, nargs=2, default=[2000, 4000], metavar=("MIN", "MAX"))
    parser.add_argument("--profile", type=int, default=15, metavar="TOP",
                        help="cProfile single short-context questions and print the TOP functions (0: off)")
    parser.add_argument("--profile-runs", type=int, default=20)
    common.add_bert_shape_arguments(parser, vocab_size=8000, what="random model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    from kqa.inference import QuestionAnswerer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.getLogger("kqa").setLevel(logging.WARNING)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="kqa-bench-inference-") as tmp:
        t0 = time.perf_counter()
        pools = question_pools(args.data_dir, tuple(args.short_chars), tuple(args.long_chars))
        built_here = args.model is None
        model_dir = build_random_model(args, Path(tmp)) if built_here else args.model
        qa = QuestionAnswerer.from_pretrained(model_dir, device=args.device)
        model_name = describe_model(qa, model_dir, built_here)
        setup_s = time.perf_counter() - t0

    windows = {kind: windows_per_question(qa, pool) for kind, pool in pools.items()}
    chars = {kind: sum(len(c) for _, c in pool) / len(pool) for kind, pool in pools.items()}
    timer = StageTimer(qa)
    latency_rows, throughput_rows = [], []
    with torch.inference_mode(), timer.active():
        for kind, pool in pools.items():
            result = measure(qa, timer, pool, 1, args.runs, args.warmup)
            times_ms = [t * 1e3 for t in result["times_s"]]
            latency_rows.append({
                "context": kind, "mean_chars": chars[kind], "windows_per_question": windows[kind],
                "runs": args.runs, "p50_ms": common.percentile(times_ms, 50), "p95_ms": common.percentile(times_ms, 95),
                "mean_ms": sum(times_ms) / len(times_ms), "stages_ms": {k: v * 1e3 for k, v in result["stages_s"].items()},
            })
        for kind, pool in pools.items():
            for batch_size in args.batch_sizes:
                calls = max(1, math.ceil(args.throughput_questions / batch_size))
                result = measure(qa, timer, pool, batch_size, calls, warmup=1)
                total = sum(result["times_s"])
                throughput_rows.append({
                    "context": kind, "batch_size": batch_size, "calls": calls, "questions": calls * batch_size,
                    "questions_per_s": calls * batch_size / total, "ms_per_call": total / calls * 1e3,
                    "stages_ms": {k: v * 1e3 for k, v in result["stages_s"].items()},
                })
    profile = None
    if args.profile:
        with torch.inference_mode():
            profile = profile_single_questions(qa, pools["short"], args.profile_runs, args.profile)

    machine = common.machine_info()
    settings = common.settings_from_args(args)
    settings.update({"model_description": model_name, "pool_sizes": {k: len(v) for k, v in pools.items()},
                     "settings": qa.settings.to_dict(),
                     "timed_stages": timer.found})
    common.print_header(machine, settings)
    print(f"model: {model_name} on {args.device}; loaded in {setup_s:.1f} s")
    common.print_table(latency_rows, [
        ("context", "context", ""), ("mean_chars", "mean chars", ",.0f"),
        ("windows_per_question", "windows/question", ".2f"), ("runs", "runs", ""),
        ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"), ("mean_ms", "mean ms", ".1f"),
    ], title="latency, one question per call")
    common.print_table(throughput_rows, [
        ("context", "context", ""), ("batch_size", "batch", ""), ("calls", "calls", ""),
        ("ms_per_call", "ms/call", ",.1f"), ("questions_per_s", "questions/s", ",.1f"),
    ], title="throughput, a list of questions per call")

    breakdown = []
    for row in latency_rows:
        breakdown.append({"setting": f"{row['context']}, 1 question", **row["stages_ms"]})
    for row in throughput_rows:
        breakdown.append({"setting": f"{row['context']}, batch {row['batch_size']}", **row["stages_ms"]})
    for row in breakdown:
        total = sum(row[s] for s in (*STAGES, "other"))
        row["total"] = total
        row["dominant"] = max((*STAGES, "other"), key=lambda s: row[s])
        row["dominant_share"] = row[row["dominant"]] / total if total else 0.0
    common.print_table(breakdown, [("setting", "setting", "")] + [(s, f"{s} ms", ".1f") for s in (*STAGES, "other")]
                       + [("total", "total ms", ".1f"), ("dominant", "largest", ""), ("dominant_share", "share", ".0%")],
                       title="where the time goes, mean ms per call")
    if profile:
        print(f"\ncProfile of {profile['runs']} single short-context questions: own time per call by library "
              f"(profiler overhead included: {profile['total_s_per_call'] * 1e3:.1f} ms per call)")
        for library, seconds in profile["own_time_by_library_s_per_call"].items():
            print(f"  {library:<18} {seconds * 1e3:8.2f} ms  {seconds / profile['total_s_per_call']:6.1%}")
        print(f"\ntop {args.profile} functions by own time ({profile['runs']} calls):\n{profile['top_functions']}")
        print(f"\ntop {args.profile} functions by time with callees ({profile['runs']} calls):\n"
              f"{profile['top_cumulative']}")
    common.write_json(args.out, machine=machine, settings=settings, latency=latency_rows, throughput=throughput_rows,
                      breakdown=breakdown, profile=profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
