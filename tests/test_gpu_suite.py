"""benchmarks/gpu_suite.sh: the prepared GPU run, smoke-tested on the CPU as CI runs it (every part at tiny
shapes, each part's JSON with its fields, a summary, at most the 8 files the device tool brings back), its
summary's verdicts, and the synthetic data it falls back to on a machine without the shared data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PARTS = ("training", "training_compile", "eval", "inference", "embedder", "profile")
MAX_FILES = 8  # what the device tool brings back from $OUT
SMOKE_LIMIT_S = 120  # the smoke run's bound on an idle 2-core machine (measured, not asserted: CI may be busy)


def run_suite(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **env}
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_suite.sh"), "--smoke"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=3 * SMOKE_LIMIT_S,
    )
    return proc, time.perf_counter() - t0


@pytest.mark.integration
def test_the_smoke_run_writes_every_part_and_a_summary(tmp_path):
    out = tmp_path / "out"
    proc, seconds = run_suite(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{name}.json" for name in PARTS] + ["summary.json", "suite.log"])
    assert len(files) <= MAX_FILES and all(p.is_file() for p in out.iterdir())  # nothing in sub-folders
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {name: part["status"] for name, part in summary["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert summary["smoke"] is True and summary["total_s"] < seconds
    print(f"the smoke run took {seconds:.0f} s (bound {SMOKE_LIMIT_S} s on an idle 2-core machine; not asserted)")
    parts = {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8")) for name in PARTS}

    training = {row["recipe"]: row for row in parts["training"]["results"]}
    assert [r.split(",")[0] for r in training] == ["transformers.Trainer"] * 2 + [
        "kqa.training.recipe.QATrainingRecipe"
    ]
    for row in training.values():
        assert row["samples_per_s"] > 0 and row["non_pad_tokens_per_s"] > 0 and row["mfu"] > 0
        assert "peak_memory_mib" in row and row["compiled"] is False
    compiled = parts["training_compile"]["results"]
    assert len(compiled) == 2 and all(row["compiled"] for row in compiled)
    assert parts["training_compile"]["settings"]["warmup_steps"] == 2

    evaluation = parts["eval"]["results"]
    assert set(evaluation["stages_s"]) == {"features", "model", "post-processing", "metric"}
    assert evaluation["evaluation_s"] == pytest.approx(
        sum(evaluation["stages_s"][k] for k in ("model", "post-processing", "metric"))
    )
    assert evaluation["windows"] >= 40 and evaluation["target_met"] is None  # tiny shapes judge nothing
    assert [row["batch_size"] for row in parts["inference"]["throughput"]] == [1, 3, 1, 3]
    assert parts["embedder"]["results"]["passages_per_s"] > 0
    profile = parts["profile"]["results"]
    assert profile["top_kernels"] and "Name" in profile["table"] and profile["versions"]["torch"]
    assert "nvidia_smi" in profile and profile["matmul_tflops_per_s"] > 0

    headlines = summary["headlines"]
    assert headlines["training"]["kqa_vs_trainer_dynamic"] == pytest.approx(
        training["kqa.training.recipe.QATrainingRecipe"]["samples_per_s"]
        / training["transformers.Trainer, dynamic padding"]["samples_per_s"]
    )
    assert {t["verdict"] for t in summary["targets"]} == {"not judged (smoke / no GPU)"}
    assert "GPU suite (smoke)" in proc.stdout and "training_compile" in proc.stdout


def test_the_summary_records_failures_and_judges_targets(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_suite_summary as summary
    finally:
        sys.path.remove(str(BENCHMARKS))
    kqa = {"recipe": summary.KQA, "samples_per_s": 13.0, "mfu": 0.35}
    dynamic = {"recipe": summary.DYNAMIC, "samples_per_s": 10.0, "mfu": 0.30}
    for row in (kqa, dynamic):
        row.update(non_pad_tokens_per_s=1.0, peak_memory_mib=1.0, model_tflops_per_s=1.0, compiled=False)
    (tmp_path / "training.json").write_text(json.dumps({"results": [dynamic, kqa]}), encoding="utf-8")
    kernels = [{"name": f"kernel{i}"} for i in range(5)]
    profile = {"results": {"versions": {}, "matmul_tflops_per_s": 700.0, "top_kernels": kernels}}
    (tmp_path / "profile.json").write_text(json.dumps(profile), encoding="utf-8")
    (tmp_path / "parts.tsv").write_text(
        "training\t0\t1000\t90\ntraining_compile\t124\t180000\t180\neval\t1\t500\t60\nprofile\t0\t900\t40\n",
        encoding="utf-8",
    )
    parts = summary.read_parts(tmp_path / "parts.tsv", tmp_path)
    assert {name: p["status"] for name, p in parts.items()} == {
        "training": "ok",
        "training_compile": "timed out after 180 s",
        "eval": "failed (exit 1; suite.log has its output)",
        "inference": "not run",
        "embedder": "not run",
        "profile": "ok",
    }
    out = summary.headlines(parts)
    assert out["training"]["kqa_vs_trainer_dynamic"] == pytest.approx(1.3)
    verdicts = {t["target"]: t for t in summary.targets(out, judged=True)}
    assert verdicts["kqa / Trainer dynamic samples/s (eager)"]["verdict"] == "met"  # 1.3 >= 1.3
    mfu = verdicts["kqa MFU, BERT-base bf16 384 (eager)"]
    assert mfu["verdict"] == "missed" and mfu["profile_top_kernels"] == "kernel0, kernel1, kernel2"
    assert verdicts["evaluation of ~6,000 windows, s"]["verdict"] == "no result"
    assert {t["verdict"] for t in summary.targets(out, judged=False)} == {"not judged (smoke / no GPU)", "no result"}


def test_synthetic_data_has_the_context_lengths_the_benchmarks_need(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
        import synthetic_data
    finally:
        sys.path.remove(str(BENCHMARKS))
    data_dir = synthetic_data.write_synthetic(tmp_path / "first", scale=0.25)
    again = synthetic_data.write_synthetic(tmp_path / "again", scale=0.25)
    for split in ("train", "dev"):
        files = common.squad_files(data_dir, split)
        assert [f.name for f in files] == [f"synthetic_{split}.json"]
        assert files[0].read_bytes() == common.squad_files(again, split)[0].read_bytes()  # deterministic
        examples, _ = common.load_examples(files)  # kqa's loader checks every answer against its context
        lengths = [len(c) for c in examples["context"]]
        assert any(150 <= n <= 260 for n in lengths) and any(2000 <= n <= 4000 for n in lengths)
        assert all("무엇인가?" in q for q in examples["question"])
