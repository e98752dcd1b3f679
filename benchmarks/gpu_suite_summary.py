"""The GPU suite's summary (`benchmarks/gpu_suite.sh` runs it last): every part's status and headline numbers,
the targets met or missed, as `summary.json` and a table.

Targets (the GPU issue), judged only on a GPU run (not with --smoke, not on a CPU):
- kqa >= 1.3x Trainer's samples/s with dynamic padding, same model and data (eager and compiled);
- MFU >= 40 % for kqa's BERT-base bf16 training at 384 (6 x non-embedding parameters x padded tokens / s over
  the peak given, H100 SXM dense bf16 989 TFLOP/s by default);
- evaluation of ~6,000 windows (model, post-processing, metric) < 15 s.
Where one is missed, the profile part's top kernels are quoted beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

PARTS = ("training", "training_compile", "eval", "inference", "embedder", "profile")
KQA, DYNAMIC = "kqa.training.recipe.QATrainingRecipe", "transformers.Trainer, dynamic padding"
GROUPED = "transformers.Trainer, dynamic padding + group_by_length"
TARGET_SPEEDUP = 1.3
TARGET_MFU = 0.40
TARGET_EVAL_S = 15.0
TIMEOUT_CODES = (124, 137)  # timeout(1): the limit, then the kill after it
QUOTED_KERNELS = 3


def read_parts(parts_file: Path, out_dir: Path) -> dict[str, dict]:
    """Each part's exit code, seconds, limit and JSON (None when it wrote none)."""
    status = {}
    for line in parts_file.read_text(encoding="utf-8").splitlines():
        name, rc, ms, limit = line.split("\t")
        status[name] = {"exit": int(rc), "seconds": int(ms) / 1e3, "limit_s": int(limit)}
    parts = {}
    for name in PARTS:
        entry = status.get(name, {"exit": None, "seconds": None, "limit_s": None})
        path = out_dir / f"{name}.json"
        entry["result"] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if entry["exit"] is None:
            entry["status"] = "not run"
        elif entry["exit"] in TIMEOUT_CODES:
            entry["status"] = f"timed out after {entry['limit_s']} s"
        elif entry["exit"] != 0 or entry["result"] is None:
            entry["status"] = f"failed (exit {entry['exit']}; suite.log has its output)"
        else:
            entry["status"] = "ok"
        parts[name] = entry
    return parts


def training_headline(result: dict | None) -> dict:
    if result is None:
        return {}
    rows = {row["recipe"]: row for row in result["results"]}
    kqa, dynamic, grouped = rows.get(KQA), rows.get(DYNAMIC), rows.get(GROUPED)
    headline = {}
    for label, row in (("kqa", kqa), ("trainer_dynamic", dynamic), ("trainer_grouped", grouped)):
        if row is not None:
            for key in (
                "samples_per_s",
                "non_pad_tokens_per_s",
                "peak_memory_mib",
                "model_tflops_per_s",
                "mfu",
                "compiled",
            ):
                headline[f"{label}_{key}"] = row[key]
    if kqa and dynamic:
        headline["kqa_vs_trainer_dynamic"] = kqa["samples_per_s"] / dynamic["samples_per_s"]
    if kqa and grouped:
        headline["kqa_vs_trainer_grouped"] = kqa["samples_per_s"] / grouped["samples_per_s"]
    return headline


def headlines(parts: dict) -> dict:
    result = {name: parts[name]["result"] for name in PARTS}
    out = {
        "training": training_headline(result["training"]),
        "training_compile": training_headline(result["training_compile"]),
    }
    if result["eval"]:
        r = result["eval"]["results"]
        out["eval"] = {k: r[k] for k in ("windows", "questions", "evaluation_s", "end_to_end_s", "windows_per_s")}
        out["eval"].update({f"{k}_s": v for k, v in r["stages_s"].items()})
    if result["inference"]:
        r = result["inference"]
        out["inference"] = {
            f"{row['context']}_p50_ms_1_question": row["p50_ms"] for row in r["latency"] if row["backend"] == "torch"
        }
        out["inference"].update(
            {
                f"{row['context']}_questions_per_s_{row['batch_size']}_per_call": row["questions_per_s"]
                for row in r["throughput"]
                if row["backend"] == "torch"
            }
        )
    if result["embedder"]:
        out["embedder"] = {"passages_per_s": result["embedder"]["results"]["passages_per_s"]}
    if result["profile"]:
        r = result["profile"]["results"]
        out["profile"] = {
            "versions": r["versions"],
            "matmul_tflops_per_s": r["matmul_tflops_per_s"],
            "top_kernels": [k["name"] for k in r["top_kernels"][:QUOTED_KERNELS]],
        }
    return out


def targets(out: dict, judged: bool) -> list[dict]:
    """Each target with its value and verdict: met, missed, not judged (smoke or CPU) or no result."""
    checks = [
        (
            "kqa / Trainer dynamic samples/s (eager)",
            out["training"].get("kqa_vs_trainer_dynamic"),
            TARGET_SPEEDUP,
            ">=",
        ),
        (
            "kqa / Trainer dynamic samples/s (compiled)",
            out["training_compile"].get("kqa_vs_trainer_dynamic"),
            TARGET_SPEEDUP,
            ">=",
        ),
        ("kqa MFU, BERT-base bf16 384 (eager)", out["training"].get("kqa_mfu"), TARGET_MFU, ">="),
        ("kqa MFU, BERT-base bf16 384 (compiled)", out["training_compile"].get("kqa_mfu"), TARGET_MFU, ">="),
        ("evaluation of ~6,000 windows, s", out.get("eval", {}).get("evaluation_s"), TARGET_EVAL_S, "<"),
    ]
    why = ", ".join(out.get("profile", {}).get("top_kernels", [])) or "no profile"
    rows = []
    for name, value, target, op in checks:
        if value is None:
            verdict = "no result"
        elif not judged:
            verdict = "not judged (smoke / no GPU)"
        else:
            verdict = "met" if (value >= target if op == ">=" else value < target) else "missed"
        row = {"target": name, "value": value, "goal": f"{op} {target}", "verdict": verdict}
        if verdict == "missed":
            row["profile_top_kernels"] = why
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--parts", type=Path, required=True, help="the suite's parts.tsv")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)

    import torch

    parts = read_parts(args.parts, args.out_dir)
    out = headlines(parts)
    judged = not args.smoke and torch.cuda.is_available()
    checks = targets(out, judged)
    status = [
        {"part": name, "status": p["status"], "seconds": p["seconds"], "limit_s": p["limit_s"]}
        for name, p in parts.items()
    ]
    common.print_table(
        status,
        [("part", "part", ""), ("status", "status", ""), ("seconds", "s", ".1f"), ("limit_s", "limit s", "")],
        title=f"GPU suite{' (smoke)' if args.smoke else ''}: data {args.data_dir}",
    )
    common.print_table(
        checks, [("target", "target", ""), ("value", "value", ".3f"), ("goal", "goal", ""), ("verdict", "", "")]
    )
    for row in checks:
        if row["verdict"] == "missed":
            print(f"missed: {row['target']}; the step's top kernels (profile.json): {row['profile_top_kernels']}")
    common.write_json(
        args.out_dir / "summary.json",
        machine=common.machine_info(),
        smoke=args.smoke,
        data_dir=args.data_dir,
        peak_tflops=args.peak_tflops,
        total_s=sum(p["seconds"] or 0.0 for p in parts.values()),
        parts={name: {k: v for k, v in p.items() if k != "result"} for name, p in parts.items()},
        headlines=out,
        targets=checks,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
