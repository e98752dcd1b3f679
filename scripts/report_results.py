"""Write a results report for a finished run, from the files the run wrote (never typed by hand).

    python scripts/report_results.py outputs/offline-e5-small [--data_dir ../shared/data] [--wall_seconds N]

Reads `metrics.jsonl` (the step-0 baseline when `eval_before_training` was on, every evaluation),
`train_config.yaml`, and `best/` (metrics and predictions), and writes `results.md` and
`results.json` into the run directory: EM/F1 per evaluation set for the untrained head and the best
checkpoint, and an error analysis of the best checkpoint's predictions on each set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path


from kqa.config import TrainConfig, load_yaml
from kqa.data import load_squad_json
from kqa.metric import exact_match_score, f1_score

# Particles and copulas that attach to Korean nouns: the usual "almost right" answer.
PARTICLES = sorted(["은", "는", "이", "가", "을", "를", "의", "에", "에서", "에게", "로", "으로", "와", "과", "도",
                    "만", "까지", "부터", "이다", "이며", "이고", "였다", "이었다", "라는", "이라는", "인", "란"],
                   key=len, reverse=True)
LONG_ANSWER_CHARS = 15


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _particle_error(prediction: str, golds: list[str]) -> bool:
    """The prediction is a gold answer plus a particle, or a gold answer minus its trailing particle."""
    for gold in golds:
        for longer, shorter in ((prediction, gold), (gold, prediction)):
            if shorter and longer.startswith(shorter) and longer[len(shorter):].strip() in PARTICLES:
                return True
    return False


def error_analysis(examples, predictions: dict[str, str]) -> dict:
    rows = {"questions": 0, "wrong": 0, "partial_overlap": 0, "no_overlap": 0, "unanswered": 0,
            "particle_attached_or_missing": 0,
            "long_answers": 0, "long_answers_wrong": 0,
            "numbers_or_dates": 0, "numbers_or_dates_wrong": 0}
    for ex in examples:
        golds = ex["answers"]["text"]
        prediction = predictions.get(ex["id"])
        rows["questions"] += 1
        is_long = max(len(g) for g in golds) >= LONG_ANSWER_CHARS
        has_number = any(re.search(r"\d", g) for g in golds)
        rows["long_answers"] += is_long
        rows["numbers_or_dates"] += has_number
        if prediction is None:
            rows["unanswered"] += 1
            rows["wrong"] += 1
            continue
        if max(exact_match_score(prediction, g) for g in golds):
            continue
        rows["wrong"] += 1
        rows["long_answers_wrong"] += is_long
        rows["numbers_or_dates_wrong"] += has_number
        f1 = max(f1_score(prediction, g) for g in golds)
        rows["partial_overlap" if f1 > 0 else "no_overlap"] += 1
        rows["particle_attached_or_missing"] += _particle_error(prediction, golds)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data_dir", help="overrides the run's data_dir to find the validation files")
    parser.add_argument("--wall_seconds", type=float, help="wall time of the job, to record")
    args = parser.parse_args(argv)

    run = args.run_dir
    config = TrainConfig.from_flat(**load_yaml(run / "train_config.yaml"))
    if args.data_dir:
        config.data_dir = args.data_dir
    records = _read_jsonl(run / "metrics.jsonl")
    evals = [r for r in records if "eval/f1" in r]
    if not evals:
        raise SystemExit(f"{run}/metrics.jsonl holds no evaluation")
    baseline = next((r for r in evals if r["step"] == 0), None)
    best_metrics = json.loads((run / "best" / "metrics.json").read_text(encoding="utf-8"))
    sets = list(config.named_validation_files().items())

    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}"
    lines = ["| model | " + " | ".join(f"{name} EM | {name} F1" for name, _ in sets) + " |",
             "|---|" + "---|---|" * len(sets)]

    def row(label: str, metrics: dict, prefix: str) -> str:
        cells = [f"{metrics[f'{prefix}{n}/exact_match']:.2f} | {metrics[f'{prefix}{n}/f1']:.2f}" for n, _ in sets]
        return f"| {label} | " + " | ".join(cells) + " |"

    if baseline:
        lines.append(row("(a) backbone + untrained head (step 0)", baseline, "eval/"))
    lines.append(row(f"(b) fine-tuned, best checkpoint (step {best_metrics['step']})", best_metrics, ""))
    history = ["| step | " + " | ".join(f"{n} EM | {n} F1 | {n} loss" for n, _ in sets) + " |",
               "|---|" + "---|---|---|" * len(sets)]
    for r in evals:
        history.append(f"| {r['step']} | " + " | ".join(
            f"{r[f'eval/{n}/exact_match']:.2f} | {r[f'eval/{n}/f1']:.2f} | {r.get(f'eval/{n}/loss', float('nan')):.3f}"
            for n, _ in sets) + " |")

    analysis = {}
    for name, path in sets:
        examples, _ = load_squad_json(path)
        predictions = json.loads((run / "best" / "predictions" / name / "predictions.json").read_text(encoding="utf-8"))
        analysis[name] = error_analysis(examples, predictions)
    keys = list(next(iter(analysis.values())))
    err = ["| | " + " | ".join(n for n, _ in sets) + " |", "|---|" + "---|" * len(sets)]
    for key in keys:
        err.append(f"| {key.replace('_', ' ')} | " + " | ".join(str(analysis[n][key]) for n, _ in sets) + " |")

    train_steps = max(r["step"] for r in records)
    text = "\n".join([
        f"Run: `{run}` — {train_steps} optimizer steps; machine: {machine}"
        + (f"; wall time {args.wall_seconds / 60:.1f} min (training, evaluations, checkpoints)" if args.wall_seconds else ""),
        "",
        f"Settings: model `{config.model_name_or_path}`, train files {config.train_files}, "
        f"max_seq_length {config.features.max_seq_length}, doc_stride {config.features.doc_stride}, epochs {config.num_train_epochs}, "
        f"batch {config.per_device_train_batch_size}×{config.gradient_accumulation_steps}, lr {config.learning_rate}, "
        f"n-best: n_best_size {config.postprocess.n_best_size}, max_answer_length {config.postprocess.max_answer_length} tokens; "
        f"best checkpoint by `{config.metric_for_best_model}`.",
        "", *lines, "", "Every evaluation of the run:", "", *history, "",
        f"Error analysis of the best checkpoint (a question is wrong when not an exact match; long answers: "
        f">= {LONG_ANSWER_CHARS} characters; numbers/dates: the gold answer holds a digit; particle: the prediction "
        f"is a gold answer with a particle added or removed):", "", *err, "",
    ])
    (run / "results.md").write_text(text, encoding="utf-8")
    (run / "results.json").write_text(json.dumps({"baseline": baseline, "best": best_metrics, "evaluations": evals,
                                                  "error_analysis": analysis, "machine": machine,
                                                  "wall_seconds": args.wall_seconds}, indent=2, ensure_ascii=False),
                                      encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
