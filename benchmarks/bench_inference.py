"""Benchmark inference with `kqa.QuestionAnswerer` on every backend (torch fp32, torch-int8, onnx
fp32, onnx int8): latency, throughput, where the time goes, and EM/F1 on the dev sets, in one run on the
same inputs.

Questions and contexts are real pairs from the data directory: short contexts of about 200 characters
(TyDi QA) and long ones of 2,000-4,000 characters (several 384-token windows each). The model is a
saved kqa model directory (`--model`, e.g. outputs/offline-e5-small/best) or, by default, a random-init
BERT built here with a WordPiece tokenizer trained on the data; the table says which. The ONNX models
are exported from it in this run (`kqa.inference.export.export_onnx`, fp32 and int8) and their logits checked
against the PyTorch model's.

- latency: one question per call, `--runs` calls after `--warmup` calls; p50 / p95 / mean,
- throughput: lists of `--batch-sizes` questions per call (each with its own context); questions/s,
- accuracy: EM / F1 (official KorQuAD metric) of every backend on every `*dev*.json` of the data
  directory (the KorQuAD dev sample and TyDi dev),
- breakdown: the time of every call split into the stages `QuestionAnswerer.predict_rows` runs
  (examples table, feature building, model, post-processing, the rest),
- profiles: cProfile of single-question calls (`--profile`), and per-operator model time
  (`--op-profile`: ONNX Runtime's profiler for onnx backends, torch.profiler for torch ones).

All windows of a question, and of every question of a call, go through the model in batches of
`--model-batch-size` windows (`QuestionAnswerer.batch_size`).

    python benchmarks/bench_inference.py --out results.json
    python benchmarks/bench_inference.py --model outputs/offline-e5-small/best --out results.json
    python benchmarks/bench_inference.py --smoke --out results.json     # tiny model, a few calls: a smoke run
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
            raise SystemExit(
                f"{data_dir}: no question has a {kind} context "
                f"(short: {short_chars[0]}-{short_chars[1]} characters, long: {long_chars[0]}-{long_chars[1]})"
            )
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
    model.save_pretrained(
        model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
    )
    return model_dir


def describe_model(qa, model_dir: Path, built_here: bool) -> str:
    config = qa.model.config
    params = qa.model.num_parameters() / 1e6
    shape = (
        f"{getattr(config, 'model_type', '?')} {getattr(config, 'num_hidden_layers', '?')} layers x "
        f"{getattr(config, 'hidden_size', '?')}, {params:.1f}M parameters, tokenizer {len(qa.tokenizer)} pieces"
    )
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

        import kqa.inference.answerer as inference  # the module whose globals predict_rows calls
        import kqa.prediction as prediction

        saved_from_list = datasets.Dataset.__dict__["from_list"]
        patched = []
        for module, stage, name in (
            (inference, "examples table", "examples_table"),
            (inference, "features", "prepare_eval_features"),
            (prediction, "model", "predict_logits"),
            (prediction, "post-processing", "decode_answers"),
        ):
            if hasattr(module, name):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, self._timed(stage, getattr(module, name)))
                self.found.append(stage)
        if "examples table" not in self.found:  # older QuestionAnswerer: Dataset.from_list
            datasets.Dataset.from_list = self._timed("examples table", datasets.Dataset.from_list)
            self.found.append("examples table")
        try:
            yield self
        finally:
            datasets.Dataset.from_list = saved_from_list
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
    features, _ = prepare_eval_features(
        datasets.Dataset.from_list(rows), qa.tokenizer, qa.settings.features, cache=False
    )
    return len(features) / len(rows)


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------


def library_of(filename: str, function: str) -> str:
    """Which library a profiled function belongs to (C functions by the type they are a method of)."""
    text = filename if filename != "~" else function
    for name in (
        "kqa",
        "datasets",
        "pyarrow",
        "dill",
        "multiprocess",
        "tokenizers",
        "transformers",
        "torch",
        "numpy",
        "safetensors",
        "fsspec",
        "huggingface_hub",
        "xxhash",
    ):
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
    return {
        "runs": runs,
        "total_s_per_call": total / runs,
        "own_time_by_library_s_per_call": dict(grouped),
        "top_functions": common.top_functions(stats, top),
        "top_cumulative": common.top_functions(stats, top, sort="cumulative"),
    }


# --------------------------------------------------------------------------------------------------
# Backends, accuracy and operator profiles
# --------------------------------------------------------------------------------------------------

BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")  # benchmark names; onnx-int8 is the int8 export


def export_models(model_dir: Path, names, work: Path) -> dict[str, dict]:
    """The ONNX exports the requested backends need, written under `work`: name → directory and report."""
    from kqa.inference.export import export_onnx

    exports = {}
    for name, quantize in (("onnx", None), ("onnx-int8", "int8")):
        if name in names:
            report = export_onnx(model_dir, work / name, quantize=quantize)
            exports[name] = {"dir": work / name, "report": report.to_dict()}
    return exports


def load_backend(name: str, model_dir: Path, exports: dict, args):
    from kqa.inference import QuestionAnswerer

    if name.startswith("onnx"):
        return QuestionAnswerer.from_pretrained(exports[name]["dir"], backend="onnx", batch_size=args.model_batch_size)
    dtype = None if name != "torch" else args.dtype
    return QuestionAnswerer.from_pretrained(
        model_dir, backend=name, device=args.device, dtype=dtype, batch_size=args.model_batch_size
    )


def dev_sets(data_dir: Path, max_examples: int | None) -> dict[str, list[dict]]:
    """Every `*dev*.json` of the data directory as rows for `predict_rows`, with its examples for scoring."""
    sets = {}
    for path in common.squad_files(data_dir, "dev"):
        examples, _ = common.load_examples([path], max_examples)
        sets[path.parent.name] = examples
    return sets


def accuracy(qa, sets: dict) -> dict[str, dict]:
    from kqa.metric import score_predictions

    scores = {}
    for name, examples in sets.items():
        rows = [{"id": r["id"], "question": r["question"], "context": r["context"]} for r in examples]
        t0 = time.perf_counter()
        predictions = qa.predict_rows(rows)
        seconds = time.perf_counter() - t0
        result = score_predictions(examples, {k: p.text for k, p in predictions.items()})
        scores[name] = {"em": result.exact_match, "f1": result.f1, "total": result.total, "seconds": seconds}
    return scores


def op_profile(qa, pool: list[tuple], calls: int, work: Path, top: int = 12) -> dict:
    """Model time per operator type over `calls` single-question calls (ms per call): ONNX Runtime's
    profiler for the onnx backend, torch.profiler for the torch ones."""
    from collections import Counter

    times: Counter = Counter()
    if qa.backend == "onnx":
        from kqa.inference.runtimes import OnnxQuestionAnsweringModel

        profiled = OnnxQuestionAnsweringModel(
            qa.model.path,
            num_threads=qa.model.num_threads,
            config=qa.model.config,
            profile_prefix=str(work / "ort-profile"),
        )
        saved, qa.model = qa.model, profiled
        try:
            for i in range(calls):
                qa(*pool[i % len(pool)])
        finally:
            qa.model = saved
        import json

        events = json.loads(Path(profiled.session.end_profiling()).read_text())
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                times[event["args"].get("op_name", "?")] += event["dur"] / 1e3  # µs → ms
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(calls):
                qa(*pool[i % len(pool)])
        for item in prof.key_averages():
            if item.key.startswith(("aten::", "quantized::")) and item.self_cpu_time_total > 0:
                times[item.key] += item.self_cpu_time_total / 1e3
    total = sum(times.values())
    return {
        "calls": calls,
        "total_ms_per_call": total / calls,
        "top_ms_per_call": {k: v / calls for k, v in times.most_common(top)},
    }


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="a saved kqa model directory; default: a random-init BERT built here"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=common.default_data_dir(),
        help="folder of SQuAD-format JSON files; default $KQA_DATA_DIR or ../shared/data",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=BACKENDS,
        help="backends to compare (the first is the reference of the speed-ups; default all)",
    )
    parser.add_argument("--device", default="cpu", help="device of the torch backend (the others run on the CPU)")
    parser.add_argument("--dtype", default=None, help="dtype of the torch backend (float16 / bfloat16; default fp32)")
    parser.add_argument("--model-batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--runs", type=int, default=50, help="timed single-question calls per context kind")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before every measurement")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8],
        help="questions per call in the throughput measurements; the summary uses the largest",
    )
    parser.add_argument(
        "--throughput-questions",
        type=int,
        default=32,
        help="questions per (context kind, batch size) throughput measurement (at least one call)",
    )
    parser.add_argument(
        "--max-eval-examples",
        type=int,
        default=None,
        help="first N questions of every dev file for EM/F1 (default all; 0: skip accuracy)",
    )
    parser.add_argument("--short-chars", type=int, nargs=2, default=[150, 260], metavar=("MIN", "MAX"))
    parser.add_argument("--long-chars", type=int, nargs=2, default=[2000, 4000], metavar=("MIN", "MAX"))
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="cProfile single short-context questions of the first backend, print TOP functions",
    )
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument(
        "--op-profile",
        type=int,
        default=0,
        metavar="CALLS",
        help="per-operator model time of every backend over CALLS long-context questions (0: off)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random model and a few calls of everything: checks the script runs"
    )
    common.add_bert_shape_arguments(parser, vocab_size=8000, what="random model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        if args.model is not None:
            parser.error("--smoke builds its own tiny model; leave out --model")
        args.vocab_size, args.hidden_size, args.layers, args.heads, args.intermediate_size = 300, 32, 1, 2, 64
        args.runs, args.warmup, args.batch_sizes, args.throughput_questions = 2, 1, [1, 3], 3
        args.max_eval_examples = args.max_eval_examples if args.max_eval_examples is not None else 4
        args.profile_runs, args.op_profile = 1, args.op_profile or 1
        args.profile = args.profile or 5

    import datasets
    import torch
    import transformers

    from kqa.inference import QuestionAnswerer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.getLogger("kqa").setLevel(logging.WARNING)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization advises on the root logger
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="kqa-bench-inference-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pools = question_pools(args.data_dir, tuple(args.short_chars), tuple(args.long_chars))
        built_here = args.model is None
        model_dir = build_random_model(args, tmp) if built_here else args.model
        reference_qa = QuestionAnswerer.from_pretrained(model_dir, device="cpu")
        model_name = describe_model(reference_qa, model_dir, built_here)
        sets = dev_sets(args.data_dir, args.max_eval_examples) if args.max_eval_examples != 0 else {}
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        exports = export_models(model_dir, args.backends, tmp)
        export_s = time.perf_counter() - t0
        windows = {kind: windows_per_question(reference_qa, pool) for kind, pool in pools.items()}
        chars = {kind: sum(len(c) for _, c in pool) / len(pool) for kind, pool in pools.items()}
        prediction_settings = reference_qa.settings.to_dict()
        del reference_qa

        latency_rows, throughput_rows, summary, breakdown, op_profiles, profile = [], [], [], [], {}, None
        for name in args.backends:
            t0 = time.perf_counter()
            qa = load_backend(name, model_dir, exports, args)
            load_s = time.perf_counter() - t0
            timer = StageTimer(qa)
            row = {
                "backend": name,
                "load_s": load_s,
                "max_abs_logit_diff": exports[name]["report"]["max_abs_diff"] if name in exports else None,
            }
            with torch.inference_mode(), timer.active():
                for kind, pool in pools.items():
                    result = measure(qa, timer, pool, 1, args.runs, args.warmup)
                    times_ms = [t * 1e3 for t in result["times_s"]]
                    latency = {
                        "backend": name,
                        "context": kind,
                        "mean_chars": chars[kind],
                        "windows_per_question": windows[kind],
                        "runs": args.runs,
                        "p50_ms": common.percentile(times_ms, 50),
                        "p95_ms": common.percentile(times_ms, 95),
                        "mean_ms": sum(times_ms) / len(times_ms),
                        "stages_ms": {k: v * 1e3 for k, v in result["stages_s"].items()},
                    }
                    latency_rows.append(latency)
                    row[f"{kind}_p50_ms"], row[f"{kind}_p95_ms"] = latency["p50_ms"], latency["p95_ms"]
                    breakdown.append({"setting": f"{name}, {kind}, 1 question", **latency["stages_ms"]})
                for kind, pool in pools.items():
                    for batch_size in args.batch_sizes:
                        calls = max(1, math.ceil(args.throughput_questions / batch_size))
                        result = measure(qa, timer, pool, batch_size, calls, warmup=1)
                        total = sum(result["times_s"])
                        throughput = {
                            "backend": name,
                            "context": kind,
                            "batch_size": batch_size,
                            "calls": calls,
                            "questions": calls * batch_size,
                            "questions_per_s": calls * batch_size / total,
                            "ms_per_call": total / calls * 1e3,
                            "stages_ms": {k: v * 1e3 for k, v in result["stages_s"].items()},
                        }
                        throughput_rows.append(throughput)
                        if batch_size == max(args.batch_sizes):
                            row[f"{kind}_questions_per_s"] = throughput["questions_per_s"]
                            breakdown.append(
                                {"setting": f"{name}, {kind}, {batch_size} questions", **throughput["stages_ms"]}
                            )
                row["accuracy"] = accuracy(qa, sets)
            for set_name, scores in row["accuracy"].items():
                row[f"{set_name}_em"], row[f"{set_name}_f1"] = scores["em"], scores["f1"]
            if args.op_profile:
                with torch.inference_mode():
                    op_profiles[name] = op_profile(qa, pools["long"], args.op_profile, tmp)
            if args.profile and profile is None:
                with torch.inference_mode():
                    profile = profile_single_questions(qa, pools["short"], args.profile_runs, args.profile)
                    profile["backend"] = name
            summary.append(row)
            del qa

    reference = summary[0]
    for row in summary:
        for key in ("short_p50_ms", "long_p50_ms"):
            row[f"{key}_speedup"] = reference[key] / row[key]
        for key in ("short_questions_per_s", "long_questions_per_s"):
            row[f"{key}_speedup"] = row[key] / reference[key]
        for set_name in sets:
            row[f"{set_name}_f1_delta"] = row[f"{set_name}_f1"] - reference[f"{set_name}_f1"]
            row[f"{set_name}_em_delta"] = row[f"{set_name}_em"] - reference[f"{set_name}_em"]
    for row in breakdown:
        total = sum(row[s] for s in (*STAGES, "other"))
        row["total"] = total
        row["dominant"] = max((*STAGES, "other"), key=lambda s: row[s])
        row["dominant_share"] = row[row["dominant"]] / total if total else 0.0

    machine = common.machine_info()
    machine["onnxruntime"] = common._version("onnxruntime")
    settings = common.settings_from_args(args)
    settings.update(
        {
            "model_description": model_name,
            "pool_sizes": {k: len(v) for k, v in pools.items()},
            "dev_sets": {k: len(v) for k, v in sets.items()},
            "settings": prediction_settings,
            "windows_per_question": windows,
            "export_s": export_s,
            "exports": {k: v["report"] for k, v in exports.items()},
        }
    )
    common.print_header(machine, settings)
    print(f"model: {model_name}; loaded in {setup_s:.1f} s; exports in {export_s:.1f} s")
    for name, export in exports.items():
        report = export["report"]
        print(
            f"  {name}: max |logit diff| vs torch fp32 {report['max_abs_diff']:.2e} "
            f"({report['onnx_bytes'] / 2**20:.1f} MiB; fused {report['fused'] or 'nothing'})"
        )
    top = max(args.batch_sizes)
    columns = [
        ("backend", "backend", ""),
        ("short_p50_ms", "short p50 ms", ".1f"),
        ("short_p95_ms", "short p95", ".1f"),
        ("long_p50_ms", "long p50 ms", ".1f"),
        ("long_p95_ms", "long p95", ".1f"),
        ("short_questions_per_s", f"short q/s @{top}", ".1f"),
        ("long_questions_per_s", f"long q/s @{top}", ".2f"),
        ("short_p50_ms_speedup", "p50 x short", ".2f"),
        ("long_p50_ms_speedup", "p50 x long", ".2f"),
        ("short_questions_per_s_speedup", "q/s x short", ".2f"),
        ("long_questions_per_s_speedup", "q/s x long", ".2f"),
    ]
    for set_name in sets:
        columns += [
            (f"{set_name}_em", f"{set_name} EM", ".2f"),
            (f"{set_name}_f1", "F1", ".2f"),
            (f"{set_name}_f1_delta", "dF1", "+.2f"),
        ]
    columns.append(("max_abs_logit_diff", "max |dlogit|", ".1e"))
    common.print_table(
        summary,
        columns,
        title=f"backends (windows/question: short {windows['short']:.2f}, "
        f"long {windows['long']:.2f}; speed-ups against {reference['backend']})",
    )
    common.print_table(
        latency_rows,
        [
            ("backend", "backend", ""),
            ("context", "context", ""),
            ("mean_chars", "mean chars", ",.0f"),
            ("windows_per_question", "windows/question", ".2f"),
            ("runs", "runs", ""),
            ("p50_ms", "p50 ms", ".1f"),
            ("p95_ms", "p95 ms", ".1f"),
            ("mean_ms", "mean ms", ".1f"),
        ],
        title="latency, one question per call",
    )
    common.print_table(
        throughput_rows,
        [
            ("backend", "backend", ""),
            ("context", "context", ""),
            ("batch_size", "batch", ""),
            ("calls", "calls", ""),
            ("ms_per_call", "ms/call", ",.1f"),
            ("questions_per_s", "questions/s", ",.2f"),
        ],
        title="throughput, a list of questions per call",
    )
    common.print_table(
        breakdown,
        [("setting", "setting", "")]
        + [(s, f"{s} ms", ".1f") for s in (*STAGES, "other")]
        + [("total", "total ms", ".1f"), ("dominant", "largest", ""), ("dominant_share", "share", ".0%")],
        title="where the time goes, mean ms per call",
    )
    for name, ops in op_profiles.items():
        print(
            f"\n{name}: model time by operator, long context, {ops['total_ms_per_call']:.1f} ms per question "
            f"({ops['calls']} questions)"
        )
        for op, ms in ops["top_ms_per_call"].items():
            print(f"  {op:<40} {ms:9.2f} ms  {ms / ops['total_ms_per_call']:6.1%}")
    if profile:
        print(
            f"\ncProfile of {profile['runs']} single short-context questions ({profile['backend']}): own time per "
            f"call by library (profiler overhead included: {profile['total_s_per_call'] * 1e3:.1f} ms per call)"
        )
        for library, seconds in profile["own_time_by_library_s_per_call"].items():
            print(f"  {library:<18} {seconds * 1e3:8.2f} ms  {seconds / profile['total_s_per_call']:6.1%}")
        print(f"\ntop {args.profile} functions by own time ({profile['runs']} calls):\n{profile['top_functions']}")
        print(
            f"\ntop {args.profile} functions by time with callees ({profile['runs']} calls):\n"
            f"{profile['top_cumulative']}"
        )
    common.write_json(
        args.out,
        machine=machine,
        settings=settings,
        summary=summary,
        latency=latency_rows,
        throughput=throughput_rows,
        breakdown=breakdown,
        op_profiles=op_profiles,
        profile=profile,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
