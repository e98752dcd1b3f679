"""Write a results report for a finished run, from the files the run wrote (never typed by hand).

    python scripts/report_results.py outputs/offline-e5-small [--data_dir ../shared/data] [--wall_seconds N]

Reads `metrics.jsonl` (the step-0 baseline when `eval_before_training` was on, every evaluation),
`train_config.yaml`, and `best/` (metrics, predictions and tokenizer), and writes `results.md` and
`results.json` into the run directory: EM/F1 per evaluation set for the untrained head and the best
checkpoint, and an error analysis of the best checkpoint's predictions on each set. Beside them go
PNG figures (FIGURES): learning curves, the best checkpoint's F1 by context length and by answer type,
and where gold answers fall in the model windows. Each PNG names its series and their point counts in
a `series` text chunk (JSON), so they can be checked without reading pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kqa.data import load_squad_json
from kqa.features import FeatureConfig, prepare_eval_features
from kqa.metric import exact_match_score, f1_score
from kqa.training.config import TrainConfig, load_yaml

# Particles and copulas that attach to Korean nouns: the usual "almost right" answer.
PARTICLES = sorted(
    [
        "은",
        "는",
        "이",
        "가",
        "을",
        "를",
        "의",
        "에",
        "에서",
        "에게",
        "로",
        "으로",
        "와",
        "과",
        "도",
        "만",
        "까지",
        "부터",
        "이다",
        "이며",
        "이고",
        "였다",
        "이었다",
        "라는",
        "이라는",
        "인",
        "란",
    ],
    key=len,
    reverse=True,
)
LONG_ANSWER_CHARS = 15

# Answer types of the F1 figure. number/date and long are the error analysis's own tests (a long date
# is both); other short is everything else.
NUMBER_OR_DATE, LONG, OTHER_SHORT = "number/date", "long", "other short"
ANSWER_TYPES = (NUMBER_OR_DATE, LONG, OTHER_SHORT)

# Upper bounds (characters, exclusive) of the context-length buckets; the last bucket is open. Korean
# QA contexts run from under 100 characters (TyDi) through a few hundred (KorQuAD) to several thousand.
CONTEXT_BUCKET_EDGES = (200, 400, 600, 1000, 2000)

# What each figure shows, in the order results.md lists them.
FIGURES = {
    "learning_curves.png": "training loss, dev loss per validation set, and dev EM and F1 per set against "
    "optimizer steps (step 0: the untrained head).",
    "f1_by_context_length.png": "the best checkpoint's mean F1 per question by context length in characters; "
    "n is the number of questions in the bucket.",
    "f1_by_answer_type.png": f"the best checkpoint's mean F1 by answer type: {NUMBER_OR_DATE} (the gold answer "
    f"holds a digit), {LONG} (>= {LONG_ANSWER_CHARS} characters; a long date counts "
    f"in both), {OTHER_SHORT} (the rest).",
    "gold_answer_positions.png": "token position of the gold answer's start in each model window that holds "
    "it (question tokens come first); the dashed line is max_seq_length.",
}

Series = dict[str, list]
"""What a plot drew: series label -> its points (or, for a histogram, the values counted)."""


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _particle_error(prediction: str, golds: list[str]) -> bool:
    """The prediction is a gold answer plus a particle, or a gold answer minus its trailing particle."""
    for gold in golds:
        for longer, shorter in ((prediction, gold), (gold, prediction)):
            if shorter and longer.startswith(shorter) and longer[len(shorter) :].strip() in PARTICLES:
                return True
    return False


def is_number_or_date(golds: Sequence[str]) -> bool:
    return any(re.search(r"\d", g) for g in golds)


def is_long_answer(golds: Sequence[str]) -> bool:
    return max(len(g) for g in golds) >= LONG_ANSWER_CHARS


def answer_types(golds: Sequence[str]) -> list[str]:
    types = [name for name, test in ((NUMBER_OR_DATE, is_number_or_date), (LONG, is_long_answer)) if test(golds)]
    return types or [OTHER_SHORT]


def context_bucket_labels(edges: Sequence[int] = CONTEXT_BUCKET_EDGES) -> list[str]:
    lower = [0, *edges]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(lower, edges)] + [f"{edges[-1]}+"]


def context_bucket(chars: int, edges: Sequence[int] = CONTEXT_BUCKET_EDGES) -> str:
    index = next((i for i, edge in enumerate(edges) if chars < edge), len(edges))
    return context_bucket_labels(edges)[index]


def question_f1(prediction: Optional[str], golds: Sequence[str]) -> float:
    """The official per-question F1 (best over the gold answers), in percent; no prediction scores 0."""
    if prediction is None:
        return 0.0
    return 100.0 * max(f1_score(prediction, g) for g in golds)


def question_scores(examples, predictions: dict[str, str]) -> list[dict]:
    """One row per question: its context length, answer types and F1."""
    return [
        {
            "id": ex["id"],
            "context_chars": len(ex["context"]),
            "answer_types": answer_types(ex["answers"]["text"]),
            "f1": question_f1(predictions.get(ex["id"]), ex["answers"]["text"]),
        }
        for ex in examples
    ]


def mean_by_group(
    rows: list[dict], groups_of: Callable[[dict], list[str]], order: Sequence[str], value: str = "f1"
) -> dict[str, dict]:
    """{group: {"mean": mean of `value`, "count": rows}} for every group in `order` that has rows."""
    members: dict[str, list[float]] = {name: [] for name in order}
    for row in rows:
        for name in groups_of(row):
            members[name].append(row[value])
    return {name: {"mean": sum(v) / len(v), "count": len(v)} for name, v in members.items() if v}


def error_analysis(examples, predictions: dict[str, str]) -> dict:
    rows = {
        "questions": 0,
        "wrong": 0,
        "partial_overlap": 0,
        "no_overlap": 0,
        "unanswered": 0,
        "particle_attached_or_missing": 0,
        "long_answers": 0,
        "long_answers_wrong": 0,
        "numbers_or_dates": 0,
        "numbers_or_dates_wrong": 0,
    }
    for ex in examples:
        golds = ex["answers"]["text"]
        prediction = predictions.get(ex["id"])
        rows["questions"] += 1
        is_long = is_long_answer(golds)
        has_number = is_number_or_date(golds)
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
        rows["partial_overlap" if question_f1(prediction, golds) > 0 else "no_overlap"] += 1
        rows["particle_attached_or_missing"] += _particle_error(prediction, golds)
    return rows


def answer_start_positions(examples, tokenizer, config: FeatureConfig) -> tuple[list[int], int]:
    """Token position of the first gold answer's start in every window that holds it, with the
    evaluation's own windows; and how many answers no window holds."""
    features, report = prepare_eval_features(
        examples, tokenizer, config, with_labels=True, cache=False, desc="Locating gold answers"
    )
    table = features.select_columns(["start_positions", "cls_index"])
    positions = [start for start, cls in zip(table["start_positions"], table["cls_index"]) if start != cls]
    return positions, report.num_lost_answers


# ---- figures: plain data in, the drawn series out ------------------------------------------------------


def _set_colour(index: int) -> str:
    """Validation set `index` keeps one colour in every figure; C0 is the training loss."""
    return f"C{(index + 1) % 10}"


def _save(figure: Figure, path: Path, series: Series, title: str) -> Series:
    FigureCanvasAgg(figure)  # Agg without pyplot: no display and no global figure state
    figure.tight_layout()
    counts = json.dumps({label: len(points) for label, points in series.items()}, ensure_ascii=False)
    figure.savefig(path, format="png", dpi=100, metadata={"Title": title, "series": counts})
    return series


def plot_learning_curves(records: list[dict], sets: Sequence[str], path: Path) -> Series:
    """Loss (training and dev), dev EM and dev F1 against optimizer steps, from metrics.jsonl records."""
    figure = Figure(figsize=(15, 4.5))
    loss_ax, em_ax, f1_ax = figure.subplots(1, 3)
    series: Series = {}
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if train:
        series["train loss"] = train
        loss_ax.plot(*zip(*train), color="C0", linewidth=1.5, label="train loss")
    panels = ((loss_ax, "loss", "dev loss"), (em_ax, "exact_match", "EM"), (f1_ax, "f1", "F1"))
    for i, name in enumerate(sets):
        for ax, metric, label in panels:
            key = f"eval/{name}/{metric}"
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                series[f"{name} {label}"] = points
                ax.plot(*zip(*points), color=_set_colour(i), marker="o", linewidth=2, label=f"{name} {label}")
    for ax, title in ((loss_ax, "loss"), (em_ax, "dev exact match"), (f1_ax, "dev F1")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(figure, path, series, "learning curves")


def plot_grouped_means(
    by_set: dict[str, dict[str, dict]], categories: Sequence[str], path: Path, *, title: str, xlabel: str
) -> Series:
    """Bars of each set's mean F1 per category, labelled with their question counts; a category a set
    has no questions in gets no bar."""
    figure = Figure(figsize=(10, 4.5))
    ax = figure.subplots()
    width = 0.8 / max(len(by_set), 1)
    series: Series = {}
    for i, (name, groups) in enumerate(by_set.items()):
        points = [(c, groups[c]["mean"], groups[c]["count"]) for c in categories if c in groups]
        series[name] = [(c, mean) for c, mean, _ in points]
        xs = [categories.index(c) + (i - (len(by_set) - 1) / 2) * width for c, _, _ in points]
        bars = ax.bar(xs, [mean for _, mean, _ in points], width, color=_set_colour(i), label=name)
        ax.bar_label(bars, labels=[f"n={n}" for _, _, n in points], fontsize=7)
    ax.set_xticks(range(len(categories)), list(categories))
    ax.set_ylim(0, 110)  # room for the count labels above a bar at 100
    ax.set_ylabel("mean F1 (best checkpoint)")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path, series, title)


def plot_answer_positions(
    positions: dict[str, list[int]], lost: dict[str, int], max_seq_length: int, path: Path
) -> Series:
    """Histogram per set of the answer-start token positions, with the window length marked."""
    figure = Figure(figsize=(10, 4.5))
    ax = figure.subplots()
    bins = range(0, max_seq_length + 1, max(1, max_seq_length // 48))
    for i, (name, values) in enumerate(positions.items()):
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=2,
            color=_set_colour(i),
            label=f"{name} ({len(values)} windows)",
        )
    ax.axvline(max_seq_length, color="black", linestyle="--", linewidth=1, label=f"max_seq_length = {max_seq_length}")
    missing = {name: n for name, n in lost.items() if n}
    title = "Gold answer start: token position in the windows that hold it"
    title += (
        ("\nanswers in no window: " + ", ".join(f"{n} ({name})" for name, n in missing.items()))
        if missing
        else "\nevery answer is in some window"
    )
    ax.set_title(title)
    ax.set_xlabel("token position in the window")
    ax.set_ylabel("windows")
    ax.set_xlim(0, max_seq_length * 1.05)
    ax.legend(fontsize=8)
    return _save(figure, path, dict(positions), title)


def write_figures(run: Path, config: TrainConfig, records: list[dict], examples: dict, predictions: dict) -> dict:
    """Draw every figure into `run`; returns {file: series drawn}."""
    from transformers import AutoTokenizer

    names = list(examples)
    scores = {n: question_scores(examples[n], predictions[n]) for n in names}
    buckets = context_bucket_labels()
    drawn = {"learning_curves.png": plot_learning_curves(records, names, run / "learning_curves.png")}
    drawn["f1_by_context_length.png"] = plot_grouped_means(
        {n: mean_by_group(scores[n], lambda row: [context_bucket(row["context_chars"])], buckets) for n in names},
        buckets,
        run / "f1_by_context_length.png",
        title="F1 by context length",
        xlabel="context length (characters)",
    )
    drawn["f1_by_answer_type.png"] = plot_grouped_means(
        {n: mean_by_group(scores[n], lambda row: row["answer_types"], ANSWER_TYPES) for n in names},
        ANSWER_TYPES,
        run / "f1_by_answer_type.png",
        title="F1 by answer type",
        xlabel="gold answer type",
    )
    tokenizer = AutoTokenizer.from_pretrained(str(run / "best"))
    located = {n: answer_start_positions(examples[n], tokenizer, config.features) for n in names}
    drawn["gold_answer_positions.png"] = plot_answer_positions(
        {n: p for n, (p, _) in located.items()},
        {n: lost for n, (_, lost) in located.items()},
        config.features.max_seq_length,
        run / "gold_answer_positions.png",
    )
    return drawn


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

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    lines = [
        "| model | " + " | ".join(f"{name} EM | {name} F1" for name, _ in sets) + " |",
        "|---|" + "---|---|" * len(sets),
    ]

    def row(label: str, metrics: dict, prefix: str) -> str:
        cells = [f"{metrics[f'{prefix}{n}/exact_match']:.2f} | {metrics[f'{prefix}{n}/f1']:.2f}" for n, _ in sets]
        return f"| {label} | " + " | ".join(cells) + " |"

    if baseline:
        lines.append(row("(a) backbone + untrained head (step 0)", baseline, "eval/"))
    lines.append(row(f"(b) fine-tuned, best checkpoint (step {best_metrics['step']})", best_metrics, ""))
    history = [
        "| step | " + " | ".join(f"{n} EM | {n} F1 | {n} loss" for n, _ in sets) + " |",
        "|---|" + "---|---|---|" * len(sets),
    ]
    for r in evals:
        history.append(
            f"| {r['step']} | "
            + " | ".join(
                f"{r[f'eval/{n}/exact_match']:.2f} | {r[f'eval/{n}/f1']:.2f} | "
                f"{r.get(f'eval/{n}/loss', float('nan')):.3f}"
                for n, _ in sets
            )
            + " |"
        )

    examples = {name: load_squad_json(path)[0] for name, path in sets}
    predictions = {name: _read_json(run / "best" / "predictions" / name / "predictions.json") for name, _ in sets}
    analysis = {name: error_analysis(examples[name], predictions[name]) for name, _ in sets}
    keys = list(next(iter(analysis.values())))
    err = ["| | " + " | ".join(n for n, _ in sets) + " |", "|---|" + "---|" * len(sets)]
    for key in keys:
        err.append(f"| {key.replace('_', ' ')} | " + " | ".join(str(analysis[n][key]) for n, _ in sets) + " |")

    drawn = write_figures(run, config, records, examples, predictions)
    figures = [
        f"![{file.removesuffix('.png').replace('_', ' ')}]({file})\n\n`{file}`: {FIGURES[file]}\n" for file in drawn
    ]
    train_steps = max(r["step"] for r in records)
    text = "\n".join(
        [
            f"Run: `{run}` — {train_steps} optimizer steps; machine: {machine}"
            + (
                f"; wall time {args.wall_seconds / 60:.1f} min (training, evaluations, checkpoints)"
                if args.wall_seconds
                else ""
            ),
            "",
            f"Settings: model `{config.model_name_or_path}`, train files {config.train_files}, "
            f"max_seq_length {config.features.max_seq_length}, doc_stride {config.features.doc_stride}, "
            f"epochs {config.num_train_epochs}, "
            f"batch {config.per_device_train_batch_size}×{config.gradient_accumulation_steps}, "
            f"lr {config.learning_rate}, "
            f"n-best: n_best_size {config.postprocess.n_best_size}, "
            f"max_answer_length {config.postprocess.max_answer_length} tokens; "
            f"best checkpoint by `{config.metric_for_best_model}`.",
            "",
            *lines,
            "",
            "Every evaluation of the run:",
            "",
            *history,
            "",
            "Error analysis of the best checkpoint (a question is wrong when not an exact match; long answers: "
            f">= {LONG_ANSWER_CHARS} characters; numbers/dates: the gold answer holds a digit; "
            "particle: the prediction is a gold answer with a particle added or removed):",
            "",
            *err,
            "",
            "Figures (beside this file):",
            "",
            *figures,
        ]
    )
    (run / "results.md").write_text(text, encoding="utf-8")
    (run / "results.json").write_text(
        json.dumps(
            {
                "baseline": baseline,
                "best": best_metrics,
                "evaluations": evals,
                "error_analysis": analysis,
                "machine": machine,
                "figures": [
                    {"file": file, "shows": FIGURES[file], "series": {k: len(v) for k, v in series.items()}}
                    for file, series in drawn.items()
                ],
                "wall_seconds": args.wall_seconds,
            },
            indent=2,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
