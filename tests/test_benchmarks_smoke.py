"""The benchmark scripts run end to end with tiny settings and write the JSON they promise.

Each script runs in its own process (as a user runs it), on the first few examples of the shared data,
with a tiny model and tokenizer, so the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
MACHINE_KEYS = {
    "platform",
    "processor",
    "cpu_count",
    "python",
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "cpu_features",
}
TINY_BERT = ["--vocab-size", "300", "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64"]

pytestmark = pytest.mark.integration


def run_script(name: str, *args: str, out: Path) -> dict:
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text(encoding="utf-8"))
    assert MACHINE_KEYS <= set(result["machine"]), sorted(result["machine"])
    assert result["machine"]["cpu_count"] == os.cpu_count()
    return {**result, "stdout": proc.stdout}


def test_bench_features(tmp_path, data_dir, tiny_tokenizer_dir):
    result = run_script(
        "bench_features.py",
        "--data-dir",
        str(data_dir),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--max-examples",
        "12",
        "--repeat",
        "1",
        "--profile",
        "3",
        out=tmp_path / "features.json",
    )
    # Train features come from the *train* files and eval features from the *dev* files (the splits
    # may share ids, so they are never concatenated).
    assert result["settings"]["num_examples"] == {"train": 12, "eval": 12}
    files = [Path(f).name for f in result["settings"]["files"]]
    assert files and all("train" in f or "dev" in f for f in files)
    rows = result["results"]
    assert [(r["kind"], r["implementation"].split(" (")[0]) for r in rows] == [
        (kind, name) for kind in ("train", "eval") for name in ("seed recipe", "kqa cold", "kqa uncached", "kqa warm")
    ]
    for row in rows:
        assert row["examples"] == 12 and row["median_s"] > 0 and row["features_per_s"] > 0
        assert row["features"] >= 12 and row["tokens_non_pad"] <= row["tokens_stored"]
    reference, kqa_cold = rows[0], rows[1]
    assert reference["features"] == 12 and reference["tokens_stored"] == 12 * 512  # one padded row per example
    assert kqa_cold["lost_answers"] == 0 and kqa_cold["tokens_stored"] == kqa_cold["tokens_non_pad"]  # unpadded
    assert set(result["profiles"]) == {"train cold", "train warm"}
    assert "ncalls" in result["profiles"]["train cold"]
    assert "kind" in result["stdout"] and "features/s" in result["stdout"]


def test_bench_training(tmp_path, data_dir):
    steps, batch_size = 3, 2
    result = run_script(
        "bench_training.py",
        "--data-dir",
        str(data_dir),
        "--max-train-examples",
        "12",
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--max-seq-length",
        "128",
        "--doc-stride",
        "32",
        "--reference-max-length",
        "128",
        *TINY_BERT,
        out=tmp_path / "training.json",
    )
    rows = result["results"]
    assert [r["recipe"] for r in rows] == [
        "transformers.Trainer, common recipe",
        "transformers.Trainer, dynamic padding",
        "kqa.training.recipe.QATrainingRecipe",
    ]
    for row in rows:
        assert row["s_per_step"] > 0 and row["samples_per_s"] > 0
        assert 0 < row["non_pad_tokens_per_s"] <= row["padded_tokens_per_s"]
        assert row["tokens_padded_total"] <= steps * batch_size * 128
    # The common recipe pads every row to its max_length: every step is 2 x 128 tokens.
    assert rows[0]["tokens_padded_total"] == steps * batch_size * 128
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert result["settings"]["reference_features"] == 12 and result["settings"]["kqa_features"] >= 12
    assert rows[0]["mfu"] is None  # no --peak-tflops


def test_bench_training_pretrained_backbone(tmp_path, data_dir, tiny_tokenizer, monkeypatch):
    """--model and --config: a saved backbone (transformers layout, attention dropout 0.1) trained on the
    files and window geometry of a kqa config, by every Trainer recipe and by kqa."""
    import torch
    import yaml
    from transformers import BertModel

    from kqa.testing import tiny_bert_config

    backbone = tmp_path / "backbone"
    torch.manual_seed(0)
    BertModel(
        tiny_bert_config(
            len(tiny_tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            attention_probs_dropout_prob=0.1,
        ),
        add_pooling_layer=False,
    ).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    train_files = ["tydiqa-goldp-ko/korean_tydiqa_train.json", "korquad-1.0-sample/KorQuAD_v1.0_train.json"]
    config = tmp_path / "main-job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "not-this-one",
                "data_dir": str(data_dir),
                "train_files": train_files,
                "max_train_samples": 40,
                "max_seq_length": 128,
                "doc_stride": 32,
                "max_query_length": 32,
                "per_device_train_batch_size": 4,
                "learning_rate": 1.0e-4,
                "seed": 7,
                "group_by_length": False,
                "attention_dropout": "model",  # as a main job may set them: not for kqa's row
            }
        ),
        encoding="utf-8",
    )
    # One thread: the tiny model gains nothing from more, and on a busy machine OpenMP threads waiting
    # for each other make every step many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    steps, batch_size = 12, 4
    result = run_script(
        "bench_training.py",
        "--model",
        str(backbone),
        "--config",
        str(config),
        "--steps",
        str(steps),
        "--reference-max-length",
        "128",
        out=tmp_path / "training.json",
    )
    settings = result["settings"]
    assert [Path(f).relative_to(data_dir).as_posix() for f in settings["train_files"]] == train_files
    assert (
        settings["batch_size"],
        settings["max_seq_length"],
        settings["doc_stride"],
        settings["max_query_length"],
        settings["learning_rate"],
        settings["seed"],
    ) == (batch_size, 128, 32, 32, 1.0e-4, 7)  # from the config
    assert settings["train_examples"] == 40 and settings["reference_features"] == 40
    assert settings["backbone_attention_dropout"] == pytest.approx(0.1)
    rows = {row["recipe"]: row for row in result["results"]}
    common_recipe, dynamic, grouped, kqa = (
        rows[name]
        for name in (
            "transformers.Trainer, common recipe",
            "transformers.Trainer, dynamic padding",
            "transformers.Trainer, dynamic padding + group_by_length",
            "kqa.training.recipe.QATrainingRecipe",
        )
    )
    assert list(rows) == [r["recipe"] for r in (common_recipe, dynamic, grouped, kqa)]
    for row in rows.values():
        assert row["s_per_step"] > 0 and row["samples_per_s"] > 0
        assert 0 < row["non_pad_tokens_per_s"] <= row["padded_tokens_per_s"]
        assert row["tokens_padded_total"] <= steps * batch_size * 128
        assert row["samples_per_s_vs_grouped"] == pytest.approx(row["samples_per_s"] / grouped["samples_per_s"])
    assert dynamic["samples_per_s_vs_dynamic"] == 1.0 and grouped["samples_per_s_vs_grouped"] == 1.0
    # Trainer trains the backbone's own config; kqa its default attention_dropout (auto: 0 on CPU).
    assert [r["attention_dropout"] for r in (common_recipe, dynamic, grouped)] == [pytest.approx(0.1)] * 3
    assert kqa["attention_dropout"] == (pytest.approx(0.1) if torch.cuda.is_available() else 0.0)
    # Trainer really groups by length, and that pads less than random batches; kqa groups by its own
    # default (group_by_length: true), not because the config says so.
    assert (dynamic["sampler"], grouped["sampler"]) == ("RandomSampler", "LengthGroupedSampler")
    assert kqa["sampler"] == "LengthGroupedSampler"
    assert kqa["pad_fraction"] < 0.5 * dynamic["pad_fraction"]
    assert grouped["pad_fraction"] < 0.5 * dynamic["pad_fraction"]
    headline = result["headline"]
    assert headline["kqa_samples_per_s_vs_dynamic"] == kqa["samples_per_s_vs_dynamic"]
    assert headline["kqa_samples_per_s_vs_grouped"] == kqa["samples_per_s_vs_grouped"]
    assert headline["kqa_non_pad_tokens_per_s_vs_grouped"] == pytest.approx(
        kqa["non_pad_tokens_per_s"] / grouped["non_pad_tokens_per_s"]
    )
    assert headline["target"] == 1.5 and headline["target_met"] == (
        kqa["samples_per_s_vs_dynamic"] >= 1.5 and kqa["samples_per_s_vs_grouped"] >= 1.5
    )
    assert "group_by_length: Trainer orders its batches with LengthGroupedSampler" in result["stdout"]
    assert "attn dropout" in result["stdout"] and "kqa samples/s:" in result["stdout"]


def test_bench_int8(tmp_path, data_dir):
    pytest.importorskip("onnxruntime", reason="the onnx backends need requirements-serve.txt")
    result = run_script(
        "bench_int8.py",
        "--smoke",
        "--data-dir",
        str(data_dir),
        "--exports",
        str(tmp_path / "e"),
        "--variants",
        "default",
        "u8s8",
        "torch-int8",
        out=tmp_path / "int8.json",
    )
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["fp32", "default", "u8s8", "torch-int8"]
    assert rows["default"]["settings"] == {} and rows["u8s8"]["settings"]["reduce_range"] is False
    assert "AVX2" in result["machine"]["cpu_features"]
    assert rows["fp32"]["korquad-1.0-sample_f1_delta"] == 0.0 and rows["fp32"]["short_speedup"] == 1.0
    for name, row in rows.items():
        assert row["accuracy"]["tydiqa-goldp-ko"]["total"] == 4 and row["long_p50_ms"] > 0
        onnx_int8 = name not in ("fp32", "torch-int8")
        assert (row["probe_diff_here"] is not None) == onnx_int8
        if onnx_int8:  # the same export measured where it was made: no drift
            assert row["probe_diff_here"] == pytest.approx(row["probe_diff_at_export"], abs=1e-6)
            assert (tmp_path / "e" / name / "onnx_probes.safetensors").is_file()
    assert "int8 exports against the fp32 export" in result["stdout"]


def test_bench_int8_scores_logits_computed_elsewhere(tmp_path, data_dir, monkeypatch):
    """record the dev-set batches → ort_replay.py computes their logits in a numpy + onnxruntime process →
    bench_int8.py scores those: the same EM/F1 as the live export, and the replaying CPU is named."""
    pytest.importorskip("onnxruntime", reason="the onnx backends need requirements-serve.txt")
    common = ("--smoke", "--data-dir", str(data_dir), "--exports", str(tmp_path / "e"), "--variants", "default")
    live = run_script("bench_int8.py", *common, "--record-feeds", str(tmp_path / "feeds"), out=tmp_path / "live.json")
    assert {p.parent.name for p in (tmp_path / "feeds").glob("*/*.npz")} == {"korquad-1.0-sample", "tydiqa-goldp-ko"}
    replay = [sys.executable, str(BENCHMARKS / "ort_replay.py"), "--feeds", str(tmp_path / "feeds")]
    replay += ["--onnx", str(tmp_path / "e" / "default" / "model.onnx"), "--out", str(tmp_path / "logits" / "default")]
    proc = subprocess.run(replay, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = run_script(
        "bench_int8.py",
        *common,
        "--feeds",
        str(tmp_path / "feeds"),
        "--replay-logits",
        str(tmp_path / "logits"),
        out=tmp_path / "replayed.json",
    )
    live_rows = {r["variant"]: r for r in live["results"]}
    for row in scored["results"]:
        for name in ("korquad-1.0-sample", "tydiqa-goldp-ko"):
            assert row[f"{name}_f1"] == live_rows[row["variant"]][f"{name}_f1"]
    # The replayed logits are the export's own, batch by batch, and an unrecorded batch is refused.
    import numpy as np
    import onnxruntime as ort

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_int8 import ReplaySession

    replayed = ReplaySession(tmp_path / "feeds", tmp_path / "logits" / "default")
    session = ort.InferenceSession(str(tmp_path / "e" / "default" / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in sorted((tmp_path / "feeds").glob("*/*.npz")):
        with np.load(path) as recorded:
            feeds = {name: recorded[name] for name in recorded.files}
        for got, expected in zip(replayed.run(["start_logits", "end_logits"], feeds), session.run(None, feeds)):
            np.testing.assert_allclose(got, expected, atol=1e-5)
    feeds["input_ids"] = feeds["input_ids"][:, ::-1].copy()
    with pytest.raises(KeyError, match="not recorded"):
        replayed.run(["start_logits", "end_logits"], feeds)
    # compare_logits.py: the same logits agree everywhere; another export's do not.
    replay[replay.index("--onnx") + 1] = str(tmp_path / "e" / "fp32" / "model.onnx")
    replay[replay.index("--out") + 1] = str(tmp_path / "logits" / "fp32")
    assert subprocess.run([*replay, "--limit", "1"], cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    assert len(list((tmp_path / "logits" / "fp32").glob("*/*.npz"))) == 1
    compare = [sys.executable, str(BENCHMARKS / "compare_logits.py"), str(tmp_path / "logits" / "default")]
    for reference, same in (("default", True), ("fp32", False)):
        out = tmp_path / f"compare-{reference}.json"
        proc = subprocess.run([*compare, str(tmp_path / "logits" / reference), "--out", str(out)], capture_output=True)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(out.read_text(encoding="utf-8"))["summary"]
        assert (summary["max_abs_diff"] == 0.0) == same
        assert summary["batches"] == len(list((tmp_path / "logits" / reference).glob("*/*.npz")))
    replay_info = json.loads((tmp_path / "logits" / "default" / "replay.json").read_text(encoding="utf-8"))
    assert scored["results"][1]["logits_cpu_features"] == replay_info["cpu_features"]
    assert "AVX2" in replay_info["cpu_features"] and "logits computed with" in scored["stdout"]


def test_bench_inference(tmp_path, data_dir):
    pytest.importorskip("onnxruntime", reason="the onnx backends need requirements-serve.txt")
    result = run_script("bench_inference.py", "--smoke", "--data-dir", str(data_dir), out=tmp_path / "inference.json")
    backends = ["torch", "torch-int8", "onnx", "onnx-int8"]
    assert [r["backend"] for r in result["summary"]] == backends
    assert [(r["backend"], r["context"]) for r in result["latency"]] == [
        (b, k) for b in backends for k in ("short", "long")
    ]
    for row in result["latency"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["windows_per_question"] == 1.0 if row["context"] == "short" else row["windows_per_question"] > 1.0
    assert [(r["backend"], r["context"], r["batch_size"], r["questions"]) for r in result["throughput"]] == [
        (b, k, n, 3) for b in backends for k in ("short", "long") for n in (1, 3)
    ]
    dev_sets = result["settings"]["dev_sets"]
    assert dev_sets == {"korquad-1.0-sample": 4, "tydiqa-goldp-ko": 4}
    for row in result["summary"]:
        assert row["short_questions_per_s"] > 0 and row["long_questions_per_s"] > 0
        for name in dev_sets:
            assert 0.0 <= row[f"{name}_em"] <= 100.0 and 0.0 <= row[f"{name}_f1"] <= 100.0
            assert row["accuracy"][name]["total"] == 4
    torch_row = result["summary"][0]
    assert torch_row["short_p50_ms_speedup"] == 1.0 and torch_row["long_questions_per_s_speedup"] == 1.0
    exports = result["settings"]["exports"]
    assert exports["onnx"]["max_abs_diff"] < 1e-4 and exports["onnx-int8"]["quantize"] == "int8"
    for row in result["breakdown"]:
        stages = [row[s] for s in ("examples table", "features", "model", "post-processing", "other")]
        assert all(t >= 0 for t in stages) and row["total"] == pytest.approx(sum(stages))
        assert row["model"] > 0 and row["features"] > 0  # every stage was found and timed
    assert set(result["op_profiles"]) == set(backends)
    assert all(p["top_ms_per_call"] for p in result["op_profiles"].values())
    assert "random-init" in result["settings"]["model_description"]
    assert result["profile"]["own_time_by_library_s_per_call"]
    assert "backends (windows/question" in result["stdout"]


def test_bench_accuracy(tmp_path, data_dir):
    epochs, batch_size, eval_examples = 2, 8, 4
    result = run_script(
        "bench_accuracy.py",
        "--tiny-random-backbone",
        "--data-dir",
        str(data_dir),
        "--max-train-examples",
        "16",
        "--max-eval-examples",
        str(eval_examples),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        "--max-seq-length",
        "128",
        "--doc-stride",
        "32",
        "--reference-max-length",
        "128",
        *TINY_BERT,
        out=tmp_path / "accuracy.json",
    )
    rows = result["results"]
    assert [r["recipe"] for r in rows] == [
        "common recipe (argmax, offsets)",
        "common recipe (argmax, tokenizer.decode)",
        "kqa (windows, n-best)",
    ]
    for row in rows:
        for dev in ("korquad_dev", "tydi_dev"):
            assert 0.0 <= row[f"{dev}_em"] <= 100.0 and 0.0 <= row[f"{dev}_f1"] <= 100.0
        assert 0.0 <= row["overall_f1"] <= 100.0
        assert isinstance(row["lost_train_answers"], int) and row["lost_train_answers"] >= 0
        # Checkpoint selection happened over both epochs and picked one of them.
        assert 1 <= row["selected_epoch"] <= epochs and 1 <= row["selected_step"] <= row["total_steps"]
        assert row["total_steps"] == epochs * row["steps_per_epoch"]
        assert len(row["history"]) == epochs and row["selected_step"] in [h["step"] for h in row["history"]]
        assert row["train_s"] > 0 and row["selected"].startswith(f"epoch {row['selected_epoch']} ")
    offsets, decode, kqa = rows
    assert offsets["selected_by"] == decode["selected_by"] == "eval_loss" and kqa["selected_by"] == "f1"
    assert offsets["selected_step"] == decode["selected_step"] and offsets["train_s"] == decode["train_s"]
    for dev in ("korquad_dev", "tydi_dev"):
        assert offsets["scores"][dev]["total"] == eval_examples  # every question scored, answered or not
        assert sum(offsets["empty_predictions"][dev].values()) <= eval_examples
    # One 128-token row per example for the common recipe (the first 16 are long KorQuAD contexts: answers
    # are lost); kqa's strided windows keep every answer.
    assert offsets["train_features"] == 16 and offsets["total_steps"] == epochs * 2
    assert kqa["train_features"] > 16 and kqa["lost_train_answers"] == 0
    assert result["settings"]["common_lost_train_answers"] == offsets["lost_train_answers"]
    assert set(result["settings"]["common_lost_dev_answers"]) == {"korquad_dev", "tydi_dev"}
    assert "selected checkpoint" in result["stdout"] and "kqa (windows, n-best)" in result["stdout"]


def test_bench_accuracy_argmax_decoding(tiny_tokenizer, korean_examples):
    """The common recipe's two decodings of one argmax span, and its empty answers."""
    import datasets
    import numpy as np

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_accuracy
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    examples = datasets.Dataset.from_list(korean_examples[:3])
    features, lost = common.seed_recipe_features(examples, tiny_tokenizer, 64, with_labels=False)
    assert lost == 0
    start = np.zeros((3, 64), dtype=np.float32)
    end = np.zeros((3, 64), dtype=np.float32)
    for i, ex in enumerate(korean_examples[:2]):  # rows 0 and 1 point at their gold answers
        s_char = ex["answers"]["answer_start"][0]
        e_char = s_char + len(ex["answers"]["text"][0])
        offsets = features["offset_mapping"][i]
        start[i, next(k for k, o in enumerate(offsets) if o[0] == s_char)] = 1.0
        end[i, next(k for k, o in enumerate(offsets) if o[1] == e_char)] = 1.0
    start[2, 5], end[2, 3] = 1.0, 1.0  # end before start
    by_offsets, by_decode, empty = bench_accuracy.argmax_answers(start, end, features, examples, tiny_tokenizer)
    assert by_offsets == {"ko-1": "서울", "ko-2": "부산", "ko-3": ""}
    assert by_decode == by_offsets  # a character vocabulary decodes back to the same text
    assert empty == {"end_before_start": 1, "outside_context": 0}
    start[0], end[0] = 0.0, 0.0
    start[0, 0] = end[0, 0] = 1.0  # the CLS token: outside the context
    _, _, empty = bench_accuracy.argmax_answers(start, end, features, examples, tiny_tokenizer)
    assert empty == {"end_before_start": 1, "outside_context": 1}


def test_bench_server_soak(tmp_path):
    # The soak mode of the server benchmark for a few seconds (its load test: tests/test_server.py).
    result = run_script(
        "bench_server.py", "--tiny", "--soak-seconds", "4", "--sample-seconds", "1", out=tmp_path / "soak.json"
    )
    soak = result["soak"]
    assert soak["concurrency"] == 8 and soak["requests"] > soak["bad"] > 0
    assert soak["unexpected"] == {}, soak["unexpected"]  # every reply had its documented status
    assert sum(soak["by_kind"].values()) == soak["requests"] and soak["by_kind"]["question"] > 0
    samples = soak["samples"]
    assert len(samples) >= 2 and all(s["rss_mib"] > 0 for s in samples)  # a loaded CI machine samples late
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples) and samples[-1]["t_s"] >= 4
    rss = [s["rss_mib"] for s in samples]
    assert abs(soak["growth_last_half_mib"]) <= max(rss) - min(rss)  # medians of two windows of these samples
    assert soak["levelled_off"] == (soak["growth_last_half_mib"] <= soak["level_off_mib"])
    assert isinstance(soak["slope_last_half_mib_per_min"], float)
    assert "RSS MiB" in result["stdout"] and "over the last half" in result["stdout"]


def test_bench_optimizer_step(tmp_path):
    result = run_script(
        "bench_optimizer_step.py",
        *TINY_BERT,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-length",
        "16",
        out=tmp_path / "optimizer.json",
    )
    rows = {row["optim"]: row for row in result["rows"]}
    assert set(rows) == {"adamw_torch", "adamw_torch_fused"}
    assert rows["adamw_torch_fused"]["fused"] is True and rows["adamw_torch"]["fused"] is False
    for row in rows.values():
        assert 0 < row["clip_optimizer_ms"] < row["step_ms"]
        assert row["step_ms"] == pytest.approx(row["forward_backward_ms"] + row["clip_optimizer_ms"])
    assert rows["adamw_torch"]["speed_up"] == 1.0
    assert len(result["runs"]) == 4 and "clip+step ms" in result["stdout"]


def test_bench_retrieval(tmp_path, data_dir):
    result = run_script(
        "bench_retrieval.py",
        "--smoke",
        "--data-dir",
        str(data_dir),
        "--scales",
        "1,2",
        "--dense-only-sizes",
        "1000",
        "--latency-queries",
        "5",
        "--read-latency-queries",
        "3",
        out=tmp_path / "retrieval.json",
    )
    assert result["questions"] == {"korquad": 20, "tydi": 20}
    retrievers = [r["retriever"] for r in result["recall"]]
    assert retrievers[:3] == ["bm25 morphemes", "bm25 bigrams", "dense e5"] and len(retrievers) == 7
    for row in result["recall"]:
        for name in ("korquad", "tydi"):
            recalls = [row[f"{name} R@{k}"] for k in (1, 5, 20)]
            assert recalls == sorted(recalls) and all(0.0 <= r <= 1.0 for r in recalls)
    # BM25 finds most gold passages even in the smoke corpus (80 documents): the evaluation is wired right
    assert result["recall"][1]["korquad R@20"] >= 0.8
    settings = [(r["set"], r["setting"]) for r in result["end_to_end"]]
    assert settings == [
        (s, k)
        for s in ("korquad", "tydi")
        for k in (
            "gold passage",
            "hybrid, top 1 passages",
            "hybrid, top 3 passages",
            "hybrid, top 5 passages",
            "hybrid, top 5, reader alone ranks",
        )
    ]
    assert [(r["copies"], r["passages"]) for r in result["scaling"]] == [
        (1, result["corpus"]["passages"]),
        (2, 2 * result["corpus"]["passages"]),
    ]
    for row in result["scaling"]:
        for method in ("sparse", "dense", "hybrid"):
            assert 0 < row[f"{method} p50 ms"] <= row[f"{method} p95 ms"]
    assert result["scaling"][0]["retrieve+read(5) p50 ms"] > 0
    assert [r["vectors"] for r in result["dense_search"]] == [1000]
    assert set(result["targets"]) == {
        "korquad hybrid R@5",
        "korquad F1 gap (gold - top 5)",
        "tydi hybrid R@5",
        "tydi F1 gap (gold - top 5)",
    }


def test_bench_passage_ends(tmp_path, data_dir):
    dev = data_dir / "korquad-1.0-sample" / "KorQuAD_v1.0_dev.json"
    result = run_script("bench_passage_ends.py", "--dev_files", str(dev), "--max_chars", "300", out=tmp_path / "e.json")
    regex, kiwi = result["rows"]
    assert (regex["sentences"], kiwi["sentences"]) == ("regex", "kiwi")
    assert kiwi["cuts"] > 0 and kiwi["mid-sentence (Kiwi)"] < regex["mid-sentence (Kiwi)"]
    assert 0 <= kiwi["korquad R@1"] <= kiwi["korquad R@5"] <= kiwi["korquad R@20"] <= 1
    assert "korquad R@5" in result["stdout"]


@pytest.mark.slow  # two `kqa index` runs, one of them two launched processes: about a minute on 2 cores
def test_bench_sharded_index(tmp_path, data_dir):
    result = run_script("bench_sharded_index.py", "--smoke", "--data-dir", str(data_dir), out=tmp_path / "sharded.json")
    single, sharded = result["results"]
    assert (single["run"], sharded["run"]) == ("1 process", "2 processes")
    assert single["passages"] == sharded["passages"] > 0 and sharded["command"].startswith(sys.executable)
    assert single["passages_per_s"] > 0 and sharded["passages_per_s"] > 0
    assert result["max_difference"] < 1e-5 and "processor" in result["machine"]
