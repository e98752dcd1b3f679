"""`kqa calibrate`: fit a calibrator (`kqa.calibration`) on a dev set's answers and save it with the model.

    kqa calibrate --model outputs/kqa/best --data_file dev.json [--output_dir calibrated/] [--method platt]
    kqa calibrate --model outputs/kqa/best --data_file dev.json --open [--embedding_model models/e5-small]

The model reads every question of the data file in its own context; each best answer is correct when it
matches a gold answer exactly after KorQuAD normalisation. The calibrator is written into the model's
`kqa_config.json` (`calibration` section) — into a copy of the model under `--output_dir` when given — and
the command prints ECE before and after as JSON and draws a reliability diagram (`reliability.png`).

With `--open` it fits an answer ranker instead (`kqa.answer_ranking`, `answer_ranking` section): the
questions are read over an index of the data file's contexts, with their own document in it and removed
(kqa.retrieval.open_calibration); retrieve-then-read then ranks answers and abstains by its confidence.
The diagram shows the best answers' confidence in both settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from kqa.calibration import (
    CALIBRATION_BINS,
    DEFAULT_SCORE_THRESHOLD,
    METHODS,
    ContextScores,
    check_threshold,
    fit_calibrator,
    reliability_table,
    save_calibrator,
)

RELIABILITY_FIGURE = "reliability.png"


def context_scores(prediction) -> ContextScores:
    """An `ExamplePrediction`'s n-best scores, probabilities and null score."""
    return ContextScores(
        scores=[float(s.score) for s in prediction.nbest],
        probabilities=[float(s.probability) for s in prediction.nbest],
        null_score=prediction.null_score,
    )


def read_dev_set(qa, examples) -> tuple[list[ContextScores], list[float], list[float], dict]:
    """Every question read in its own context: the n-best scores, EM and F1 of the best span (KorQuAD
    normalisation, best over the gold answers), and the predictions by id."""
    from kqa.metric import score_question

    rows = [{"id": e["id"], "question": e["question"], "context": e["context"]} for e in examples]
    predictions = qa.predict_rows(rows)
    contexts, em, f1 = [], [], []
    for example in examples:
        prediction = predictions[example["id"]]
        best = prediction.nbest[0].text if prediction.nbest else ""
        contexts.append(context_scores(prediction))
        question_em, question_f1 = score_question(best, example["answers"]["text"])
        em.append(question_em)
        f1.append(question_f1)
    return contexts, em, f1, predictions


def plot_reliability(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str) -> dict:
    """A reliability diagram: per equal-width bin, accuracy against mean confidence, one line per named
    (confidence, correct) pair, the diagonal for reference, and the bin counts below. Returns the tables."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5))
    curve_ax, count_ax = figure.subplots(1, 2)
    curve_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    tables = {}
    for i, (label, (confidence, correct)) in enumerate(curves.items()):
        table = tables[label] = reliability_table(confidence, correct, CALIBRATION_BINS)
        filled = [row for row in table if row["count"]]
        colour = f"C{i + 1}"
        curve_ax.plot(
            [r["confidence"] for r in filled], [r["accuracy"] for r in filled], marker="o", color=colour, label=label
        )
        centres = [(r["low"] + r["high"]) / 2 + (i - 0.5) * 0.02 for r in table]
        count_ax.bar(centres, [r["count"] for r in table], width=0.02, color=colour, label=label)
    curve_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", ylabel="accuracy (EM)", title=title)
    count_ax.set(
        xlim=(0, 1),
        xlabel=f"confidence ({CALIBRATION_BINS} equal-width bins)",
        ylabel="answers",
        title="answers per bin",
    )
    for ax in (curve_ax, count_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    FigureCanvasAgg(figure)  # Agg without pyplot: no display and no global figure state
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100, metadata={"Title": title})
    return tables


def _target_dir(model: str, output_dir: str | None) -> Path:
    """Where the calibrator is written: the model directory itself, or a copy of it under output_dir."""
    source = Path(model)
    if output_dir is None:
        if not source.is_dir():
            raise ValueError(
                f"--model {model!r} is not a local directory: give --output_dir to write a calibrated copy"
            )
        return source
    target = Path(output_dir)
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"--output_dir {target} exists and is not empty")
    from kqa.hub import resolve_model_dir

    shutil.copytree(resolve_model_dir(model), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("predictions"))
    return target


def run_calibrate(args: argparse.Namespace, load_answerer) -> int:
    from kqa.calibration import load_calibrator
    from kqa.data import load_data_file

    given = None if args.score_threshold is None else check_threshold(args.score_threshold, "--score_threshold")
    examples, _ = load_data_file(args.data_file)  # a bad file fails before the model loads
    if len(examples) == 0:
        raise ValueError(f"{args.data_file}: no questions")
    target = _target_dir(args.model, args.output_dir)
    qa = load_answerer(args)
    if args.open:
        return run_open_calibrate(args, qa, examples, target, given)
    threshold = DEFAULT_SCORE_THRESHOLD if given is None else given
    contexts, em, _, _ = read_dev_set(qa, examples)
    fit_on = {"data_file": str(args.data_file), "target": "exact match after KorQuAD normalisation"}
    calibrator = fit_calibrator(contexts, em, args.method, score_threshold=threshold, fit_on=fit_on)
    save_calibrator(target, calibrator)
    load_calibrator(target)  # what was written loads again
    kept = [(c, y) for c, y in zip(contexts, em) if c.scores]
    curves = {
        f"within-context probability (ECE {calibrator.ece_before:.3f})": (
            [c.probabilities[0] for c, _ in kept],
            [y for _, y in kept],
        ),
        f"calibrated, {args.method} (ECE {calibrator.ece_after:.3f})": (
            [float(calibrator.confidences(c)[0]) for c, _ in kept],
            [y for _, y in kept],
        ),
    }
    figure = Path(args.figure) if args.figure else target / RELIABILITY_FIGURE
    plot_reliability(curves, figure, f"reliability on {Path(args.data_file).name}")
    summary = {"model_dir": str(target), "figure": str(figure), "bins": CALIBRATION_BINS, **calibrator.to_dict()}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(
        f"ECE {calibrator.ece_before:.4f} → {calibrator.ece_after:.4f} ({len(kept)} answers); wrote {target}",
        file=sys.stderr,
    )
    return 0


def run_open_calibrate(args: argparse.Namespace, qa, examples, target: Path, threshold: float | None) -> int:
    """`kqa calibrate --open`: fit, save and report an answer ranker (module docstring)."""
    from kqa.answer_ranking import fit_answer_ranker, load_answer_ranker, save_answer_ranker
    from kqa.retrieval import Embedder, RetrieveAndRead
    from kqa.retrieval.open_calibration import SETTINGS, dev_documents, dev_index, question_candidates, read_open

    embedder = Embedder.from_pretrained(args.embedding_model, device=args.device)
    documents, doc_ids = dev_documents(examples)
    reader = qa.with_settings()
    reader.answer_ranker = None  # the features are read as the model has none: an earlier ranker is replaced
    pipeline = RetrieveAndRead(dev_index(documents, embedder), reader, passages=args.passages)
    readings = read_open(pipeline, examples, doc_ids, args.passages)
    fit_on = {
        "data_file": str(args.data_file),
        "target": "exact match after KorQuAD normalisation",
        "embedding_model": embedder.name,
        "embedder_fingerprint": embedder.fingerprint,
        "retrieval": "hybrid",
        "passages": args.passages,
        "documents": len(documents),
    }
    ranker = fit_answer_ranker(question_candidates(pipeline, readings), score_threshold=threshold, fit_on=fit_on)
    save_answer_ranker(target, ranker)
    load_answer_ranker(target)  # what was written loads again
    pipeline.answer_ranker = ranker
    curves = {}
    for setting in SETTINGS:
        mine = [r for r in readings if r.setting == setting]
        best = [
            pipeline.rank(r.example["question"], r.passages, pipeline.score_answers(r.passages, r.answers))
            for r in mine
        ]
        curves[setting] = (
            [b.best_confidence or 0.0 for b in best],
            [
                r.correct(b.answers[0] if b.answers else None)[0] if b.best_confidence is not None else 0.0
                for r, b in zip(mine, best)
            ],
        )
    figure = Path(args.figure) if args.figure else target / RELIABILITY_FIGURE
    plot_reliability(curves, figure, f"best answers' confidence on {Path(args.data_file).name}, retrieved passages")
    summary = {"model_dir": str(target), "figure": str(figure), "bins": CALIBRATION_BINS, **ranker.to_dict()}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(
        f"answer ranker: ECE {ranker.fit_on['ece']:.4f} on the fit set's best answers, score_threshold "
        f"{ranker.score_threshold:.4f}; wrote {target}",
        file=sys.stderr,
    )
    return 0


def add_calibrate_parser(sub, add_model_flags, func) -> None:
    from kqa.answer_ranking import TARGET_ANSWER_RATE
    from kqa.flags import add_bool_flag
    from kqa.retrieval.dense import DEFAULT_EMBEDDING_MODEL
    from kqa.retrieval.pipeline import DEFAULT_PASSAGES

    c = sub.add_parser("calibrate", help="fit an answer's P(correct) on a dev set and save it with the model")
    add_model_flags(c)
    c.add_argument("--data_file", required=True, help="dev set with gold answers (any format kqa evaluate reads)")
    c.add_argument("--output_dir", help="write a calibrated copy of the model here (default: into --model itself)")
    c.add_argument(
        "--method",
        choices=METHODS,
        default="platt",
        help="platt (default: logistic on span score and probability) or temperature",
    )
    c.add_argument(
        "--score_threshold",
        type=float,
        help="kqa ask / POST /v1/ask answer 'no answer' below this confidence unless asked otherwise "
        f"(default {DEFAULT_SCORE_THRESHOLD}; with --open: the highest that answers "
        f"{TARGET_ANSWER_RATE:.0%} of the questions whose document is in the index)",
    )
    add_bool_flag(c, "open", help="fit an answer ranker for retrieve-then-read (kqa ask) over the data file's contexts")
    c.add_argument(
        "--embedding_model",
        default=DEFAULT_EMBEDDING_MODEL,
        help="with --open: the embedding model of the indexes the model will read (the one kqa index was given)",
    )
    c.add_argument(
        "--passages",
        type=int,
        default=DEFAULT_PASSAGES,
        help=f"with --open: passages read (default {DEFAULT_PASSAGES})",
    )
    c.add_argument("--figure", help=f"the reliability diagram's path (default: MODEL_DIR/{RELIABILITY_FIGURE})")
    c.set_defaults(func=func)
