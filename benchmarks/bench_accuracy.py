"""Benchmark accuracy, not only speed: the common KorQuAD recipe (transformers.Trainer) against kqa.

`transformers.Trainer` with the common recipe and `kqa.training.recipe.QATrainingRecipe` are trained from the same
initial weights on the same examples and scored with the official KorQuAD 1.0 EM / character F1
(`kqa.metric`) on two dev sets.

What is compared (one process, one backbone, in this order):

- the common recipe: `AutoModelForQuestionAnswering` + `transformers.Trainer`; features from
  `common.seed_recipe_features` (context first, question second, one row per example padded to
  `--reference-max-length` 512, truncation without stride: an answer past the cut is labelled (0, 0));
  fp32; evaluation and a checkpoint every epoch, `load_best_model_at_end` with `metric_for_best_model="loss"`
  (the validation loss over both dev sets concatenated, labelled the same truncated way); then, with the
  chosen checkpoint, argmax start / argmax end per example (end < start, or a token outside the context:
  empty answer). Two rows share this one model and differ only in how the span becomes text: the
  context sliced by the token offsets, or `tokenizer.decode(input_ids[start:end + 1],
  skip_special_tokens=True)` as the original notebook did.
- kqa: windows of `--max-seq-length` 384 with `--doc-stride` 128 (no answer lost to truncation), n-best
  post-processing, evaluation every epoch on both dev sets and the best model kept by overall F1
  (`metric_for_best_model="f1"`); its scores are those saved with `output_dir/best` (metrics.json).

What is the same: the initial weights (the backbone with a fresh span head, seeded with `--seed`, saved
once; both runs load that directory and every tensor is checked equal), the training examples, the
number of epochs, the seed, the peak learning rate, batch size, linear schedule with warmup over the
first 10% of the optimizer steps, weight decay 0.01 (not on biases / LayerNorm), gradient clipping 1.0,
AdamW, fp32, the dev questions and the metric. What differs is the recipe itself: features (one
truncated 512-token row per example vs. strided windows, so kqa takes more optimizer steps per epoch),
padding (to 512 vs. the longest in the batch, kqa groups batches by length as the main job does),
checkpoint selection (eval loss vs. F1) and decoding (argmax vs. n-best). Train time is the wall clock of
`Trainer.train()` / `QATrainingRecipe.train()`, per-epoch evaluation and checkpoint writing included;
the common recipe's final prediction pass is timed apart (kqa needs none: the best model's metrics
were computed when it was chosen).

What is shortened relative to the main job (configs/offline-e5-small.yaml: all 1,767 training examples,
2 epochs, batch 16, lr 1e-4): by default only the first `--max-train-examples` 800 training examples,
KorQuAD's 142 first, then TyDi QA's (file order korquad, tydi, so the long KorQuAD contexts, where
truncation bites, are all in the subset; the main job lists TyDi first). The dev sets are whole
(133 KorQuAD + 276 TyDi questions). No evaluation before training.

Time: on the 2-core CPU this was written on, multilingual-e5-small (60.8M parameters, hidden 384, 12
layers) takes about 5 s per kqa step of 16 windows (mean window ~210 tokens). The 800 examples make 954
kqa windows (60 steps/epoch, 120 steps) and 800 common-recipe rows of 512 tokens (50 steps/epoch, 100
steps at ~2.5x the tokens per step, ~13-16 s each). Estimate: kqa ~10 min train + ~2 min of evaluation;
common recipe ~25 min train + ~4.5 min of evaluation (twice in training, once to predict: 409 x 512
tokens each); about 42 min in all, under an hour (all 1,767 examples would take about 70 min).

    python benchmarks/bench_accuracy.py --out results.json                        # models/e5-small, ~45 min CPU
    python benchmarks/bench_accuracy.py --max-train-examples 0 --out results.json # every training example
    python benchmarks/bench_accuracy.py --tiny-random-backbone --max-train-examples 16 --max-eval-examples 4 \\
        --epochs 2 --batch-size 4 --max-seq-length 128 --doc-stride 32 --reference-max-length 128   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

# KorQuAD first: `--max-train-examples N` keeps the first N, and KorQuAD's long contexts are where the
# common recipe's truncation loses answers.
TRAIN_FILES = ("korquad-1.0-sample/KorQuAD_v1.0_train.json", "tydiqa-goldp-ko/korean_tydiqa_train.json")
DEV_SETS = {
    "korquad_dev": "korquad-1.0-sample/KorQuAD_v1.0_dev.json",
    "tydi_dev": "tydiqa-goldp-ko/korean_tydiqa_dev.json",
}
ROW_COMMON_OFFSETS = "common recipe (argmax, offsets)"
ROW_COMMON_DECODE = "common recipe (argmax, tokenizer.decode)"
ROW_KQA = "kqa (windows, n-best)"
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01


# --------------------------------------------------------------------------------------------------
# The shared initial model
# --------------------------------------------------------------------------------------------------


def build_initial_model(args, train_examples, work: Path) -> tuple[Path, object, str]:
    """The backbone with a fresh span head (or, with --tiny-random-backbone, a random-init BERT and a
    WordPiece tokenizer trained on the training examples), seeded and saved once for both recipes."""
    import torch
    from transformers import AutoTokenizer

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    model_dir = work / "initial-model"
    torch.manual_seed(args.seed)
    if args.tiny_random_backbone:
        tokenizer = build_wordpiece_tokenizer(common.corpus_texts(train_examples), vocab_size=args.vocab_size)
        config = tiny_bert_config(
            **common.bert_shape(args, max(args.vocab_size, len(tokenizer))),
            max_position_embeddings=512,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )
        torch.manual_seed(args.seed)
        model = QuestionAnsweringModel.from_config(config)
        description = (
            f"random-init BERT (hidden {args.hidden_size}, {args.layers} layers, "
            f"WordPiece {len(tokenizer)} pieces trained on the training examples)"
        )
    else:
        if not (args.backbone / "config.json").is_file():
            raise SystemExit(
                f"{args.backbone}: no config.json; build it with `python -m kqa.offline build-backbone` "
                f"or pass --backbone DIR (or --tiny-random-backbone)"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(args.backbone))
        model = QuestionAnsweringModel.from_backbone(args.backbone)  # fresh head, seeded above
        description = f"{args.backbone} + fresh span head"
    n_params = model.num_parameters()
    model.save_pretrained(
        model_dir,
        tokenizer=tokenizer,
        kqa_config={"max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride},
    )
    del model
    return model_dir, tokenizer, f"{description}, {n_params / 1e6:.2f}M parameters"


def check_initial_weights(model, model_dir: Path, what: str) -> int:
    """Every tensor of `model` equals the saved initial model's; returns how many were compared."""
    from safetensors.torch import load_file

    return common.assert_same_weights(load_file(str(model_dir / "model.safetensors")), model, what)


# --------------------------------------------------------------------------------------------------
# (A) the common recipe with transformers.Trainer
# --------------------------------------------------------------------------------------------------


def argmax_answers(start_logits, end_logits, features, examples, tokenizer) -> tuple[dict, dict, dict]:
    """Argmax start / argmax end per row (one row per example); returns the answers sliced from the
    context by offsets, the answers `tokenizer.decode`d, and counts of the empty ones by reason."""
    import numpy as np

    starts = np.asarray(start_logits).argmax(-1)
    ends = np.asarray(end_logits).argmax(-1)
    ids, contexts = examples["id"], examples["context"]
    if list(features["example_id"]) != list(ids):
        raise RuntimeError("the common recipe's eval rows are not one per example, in example order")
    by_offsets, by_decode = {}, {}
    empty = {"end_before_start": 0, "outside_context": 0}
    for i, (offsets, input_ids) in enumerate(zip(features["offset_mapping"], features["input_ids"])):
        s, e = int(starts[i]), int(ends[i])
        if e < s:
            empty["end_before_start"] += 1
            by_offsets[ids[i]] = by_decode[ids[i]] = ""
        elif offsets[s][0] < 0 or offsets[e][0] < 0:  # [-1, -1]: question, special or padding token
            empty["outside_context"] += 1
            by_offsets[ids[i]] = by_decode[ids[i]] = ""
        else:
            by_offsets[ids[i]] = contexts[i][offsets[s][0] : offsets[e][1]]
            by_decode[ids[i]] = tokenizer.decode(input_ids[s : e + 1], skip_special_tokens=True)
    return by_offsets, by_decode, empty


def run_common_recipe(args, model_dir: Path, tokenizer, train_examples, dev_examples: dict, work: Path) -> dict:
    import datasets
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from kqa.metric import score_predictions

    t0 = time.perf_counter()
    train_features, train_lost = common.seed_recipe_features(
        train_examples, tokenizer, args.reference_max_length, with_labels=True
    )
    labelled, predict_features, dev_lost = [], {}, {}
    for name, examples in dev_examples.items():
        features, lost = common.seed_recipe_features(examples, tokenizer, args.reference_max_length, with_labels=True)
        labelled.append(features)
        predict_features[name], dev_lost[name] = common.seed_recipe_features(
            examples, tokenizer, args.reference_max_length, with_labels=False
        )
        assert lost == dev_lost[name]
    eval_dataset = datasets.concatenate_datasets(labelled)

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    check_initial_weights(model, model_dir, "common recipe")
    steps_per_epoch = math.ceil(len(train_features) / args.batch_size)
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP_RATIO,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=args.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_features,
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
    )
    trainer.remove_callback(PrinterCallback)  # no metrics dicts in the middle of the output
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0

    state = trainer.state
    history = [
        {"epoch": h["epoch"], "step": h["step"], "eval_loss": h["eval_loss"]}
        for h in state.log_history
        if "eval_loss" in h
    ]
    best = state.best_model_checkpoint
    best_step = int(Path(best).name.rsplit("-", 1)[1]) if best else None
    best_entry = next((h for h in history if h["step"] == best_step), None)
    for h in history:
        print(
            f"[common recipe] epoch {h['epoch']:.0f} step {h['step']}: eval_loss {h['eval_loss']:.4f}"
            f"{'  <- selected' if h['step'] == best_step else ''}"
        )

    t0 = time.perf_counter()
    scores: dict[str, dict] = {ROW_COMMON_OFFSETS: {}, ROW_COMMON_DECODE: {}}
    empty = {}
    for name, features in predict_features.items():
        output = trainer.predict(features.remove_columns(["example_id", "offset_mapping"]))
        start_logits, end_logits = output.predictions
        by_offsets, by_decode, empty[name] = argmax_answers(
            start_logits, end_logits, features, dev_examples[name], tokenizer
        )
        scores[ROW_COMMON_OFFSETS][name] = score_predictions(dev_examples[name], by_offsets).to_dict()
        scores[ROW_COMMON_DECODE][name] = score_predictions(dev_examples[name], by_decode).to_dict()
    predict_s = time.perf_counter() - t0

    selected = {
        "selected_step": best_step,
        "selected_epoch": round(best_entry["epoch"]) if best_entry else None,
        "selected_by": "eval_loss",
        "selected_value": state.best_metric,
        "total_steps": state.max_steps,
    }
    result = {
        "scores": scores,
        "selected": selected,
        "history": history,
        "empty_predictions": empty,
        "setup_s": setup_s,
        "train_s": train_s,
        "predict_s": predict_s,
        "steps_per_epoch": steps_per_epoch,
        "train_features": len(train_features),
        "lost_train_answers": train_lost,
        "lost_dev_answers": dev_lost,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
    }
    del trainer, model
    gc.collect()
    return result


# --------------------------------------------------------------------------------------------------
# (B) kqa
# --------------------------------------------------------------------------------------------------


def run_kqa(
    args, model_dir: Path, tokenizer, train_files: list[Path], dev_files: dict[str, Path], train_examples, work: Path
) -> dict:
    import json

    from kqa.features import FeatureConfig, prepare_train_features
    from kqa.training.config import TrainConfig
    from kqa.training.recipe import QATrainingRecipe

    # kqa's own count of what its windows lose (the recipe does not expose its feature report).
    _, report = prepare_train_features(
        train_examples, tokenizer, FeatureConfig(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride)
    )
    output_dir = work / "kqa"
    config = TrainConfig.from_flat(
        model_name_or_path=str(model_dir),
        dataset_name=None,
        train_files=[str(f) for f in train_files],
        validation_files=[f"{name}={path}" for name, path in dev_files.items()],
        max_train_samples=args.max_train_examples,
        max_eval_samples=args.max_eval_examples,
        max_seq_length=args.max_seq_length,
        doc_stride=args.doc_stride,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=WEIGHT_DECAY,
        warmup_ratio=WARMUP_RATIO,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        num_train_epochs=args.epochs,
        mixed_precision="no",
        seed=args.seed,
        group_by_length=not args.no_group_by_length,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        metric_for_best_model="f1",
        greater_is_better=True,
        eval_before_training=False,
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        output_dir=str(output_dir),
    )
    t0 = time.perf_counter()
    recipe = QATrainingRecipe(config).setup()
    logging.getLogger("kqa").setLevel(logging.WARNING)  # the recipe's setup configures logging
    check_initial_weights(recipe.accelerator.unwrap_model(recipe.model), model_dir, "kqa")
    if len(recipe.train_features) != report.num_features:
        raise RuntimeError(
            f"kqa: the recipe built {len(recipe.train_features)} windows, the check "
            f"{report.num_features}: not the same training examples"
        )
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcome = recipe.train()
    train_s = time.perf_counter() - t0

    metrics = json.loads((output_dir / "best" / "metrics.json").read_text(encoding="utf-8"))
    if metrics["step"] != outcome.best_step:
        raise RuntimeError(
            f"kqa: best/metrics.json is from step {metrics['step']}, the best step was {outcome.best_step}"
        )
    scores = {
        name: {
            "exact_match": metrics[f"{name}/exact_match"],
            "f1": metrics[f"{name}/f1"],
            "unanswered": metrics.get(f"{name}/unanswered"),
            "eval_loss": metrics.get(f"{name}/loss"),
        }
        for name in dev_files
    }
    history = [{k.removeprefix("eval/"): v for k, v in h.items()} for h in recipe.log_history if "eval/f1" in h]
    for h in history:
        h["epoch"] = math.ceil(h["step"] / recipe.steps_per_epoch)
    selected = {
        "selected_step": outcome.best_step,
        "selected_epoch": math.ceil(outcome.best_step / recipe.steps_per_epoch),
        "selected_by": "f1",
        "selected_value": outcome.best_metric,
        "total_steps": recipe.total_steps,
    }
    result = {
        "scores": {ROW_KQA: scores},
        "overall": (metrics["exact_match"], metrics["f1"]),
        "selected": selected,
        "history": history,
        "setup_s": setup_s,
        "train_s": train_s,
        "predict_s": 0.0,
        "steps_per_epoch": recipe.steps_per_epoch,
        "train_features": len(recipe.train_features),
        "lost_train_answers": report.num_lost_answers,
        "inexact_train_answers": report.num_inexact_answers,
    }
    del recipe
    gc.collect()
    return result


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------


def make_row(name: str, scores: dict, run: dict, dev_names, same_run_as: str | None = None) -> dict:
    row = {"recipe": name, **run["selected"]}
    total = em = f1 = 0.0
    for dev in dev_names:
        s = scores[dev]
        row[f"{dev}_em"], row[f"{dev}_f1"] = s["exact_match"], s["f1"]
        n = s.get("total")
        if n is not None:
            total += n
            em += s["exact_match"] * n
            f1 += s["f1"] * n
    row["overall_em"] = em / total if total else None
    row["overall_f1"] = f1 / total if total else None
    row["selected"] = (
        f"epoch {row['selected_epoch']} (step {row['selected_step']}/{row['total_steps']}), "
        f"{row['selected_by']} {row['selected_value']:.4g}"
    )
    row.update(
        {
            k: run[k]
            for k in ("train_s", "predict_s", "setup_s", "train_features", "steps_per_epoch", "lost_train_answers")
        }
    )
    row["scores"] = scores
    row["history"] = run["history"]
    if same_run_as:
        row["same_run_as"] = same_run_as
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbone",
        type=Path,
        default=common.REPO_ROOT / "models" / "e5-small",
        help="encoder directory (save_pretrained layout, with its tokenizer); a fresh span head is added",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=common.default_data_dir(),
        help="the shared data folder (default $KQA_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--max-train-examples",
        type=int,
        default=800,
        help="first N training examples (KorQuAD's, then TyDi's); 0 = all 1,767",
    )
    parser.add_argument("--max-eval-examples", type=int, default=None, help="first N questions of each dev set")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-seq-length", type=int, default=384, help="kqa's window length")
    parser.add_argument("--doc-stride", type=int, default=128, help="kqa's window overlap")
    parser.add_argument("--reference-max-length", type=int, default=512, help="the common recipe's padded length")
    parser.add_argument(
        "--no-group-by-length",
        action="store_true",
        help="kqa: plain shuffled batches (the main job groups batches by length)",
    )
    parser.add_argument(
        "--tiny-random-backbone",
        action="store_true",
        help="a random-init BERT of the shape below instead of --backbone (smoke runs)",
    )
    common.add_bert_shape_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.max_train_examples is not None and args.max_train_examples <= 0:
        args.max_train_examples = None
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    os.environ["WANDB_MODE"] = "disabled"
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kqa").setLevel(logging.WARNING)

    train_files = [args.data_dir / f for f in TRAIN_FILES]
    dev_files = {name: args.data_dir / f for name, f in DEV_SETS.items()}
    missing = [str(p) for p in [*train_files, *dev_files.values()] if not p.is_file()]
    if missing:
        raise SystemExit(f"data files not found: {', '.join(missing)} (pass --data-dir or set KQA_DATA_DIR)")

    previous_cache_dir = os.environ.get("KQA_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="kqa-bench-accuracy-") as tmp:
        work = Path(tmp)
        os.environ["KQA_CACHE_DIR"] = str(work / "cache")
        try:
            train_examples, per_file = common.load_examples(train_files, args.max_train_examples)
            dev_examples = {
                name: common.load_examples([path], args.max_eval_examples)[0] for name, path in dev_files.items()
            }
            model_dir, tokenizer, model_description = build_initial_model(args, train_examples, work)
            print(
                f"model: {model_description}; {len(train_examples)} training examples, "
                + ", ".join(f"{n} {len(e)} questions" for n, e in dev_examples.items()),
                flush=True,
            )
            common_run = run_common_recipe(args, model_dir, tokenizer, train_examples, dev_examples, work)
            kqa_run = run_kqa(args, model_dir, tokenizer, train_files, dev_files, train_examples, work)
        finally:
            if previous_cache_dir is None:
                os.environ.pop("KQA_CACHE_DIR", None)
            else:
                os.environ["KQA_CACHE_DIR"] = previous_cache_dir

    names = list(DEV_SETS)
    rows = [
        make_row(ROW_COMMON_OFFSETS, common_run["scores"][ROW_COMMON_OFFSETS], common_run, names),
        make_row(
            ROW_COMMON_DECODE,
            common_run["scores"][ROW_COMMON_DECODE],
            common_run,
            names,
            same_run_as=ROW_COMMON_OFFSETS,
        ),
        make_row(ROW_KQA, kqa_run["scores"][ROW_KQA], kqa_run, names),
    ]
    rows[2]["overall_em"], rows[2]["overall_f1"] = kqa_run["overall"]  # question-weighted, as kqa computes it
    rows[0]["empty_predictions"] = rows[1]["empty_predictions"] = common_run["empty_predictions"]
    rows[2]["inexact_train_answers"] = kqa_run["inexact_train_answers"]

    machine = common.machine_info()
    settings = common.settings_from_args(args)
    settings.update(
        {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "model": model_description,
            "train_examples": len(train_examples),
            "files": per_file,
            "dev_questions": {n: len(e) for n, e in dev_examples.items()},
            "weight_decay": WEIGHT_DECAY,
            "warmup_ratio": WARMUP_RATIO,
            "trainer_optim": common_run["optim"],
            "common_train_rows": common_run["train_features"],
            "kqa_train_windows": kqa_run["train_features"],
            "common_lost_train_answers": common_run["lost_train_answers"],
            "common_lost_dev_answers": common_run["lost_dev_answers"],
            "kqa_lost_train_answers": kqa_run["lost_train_answers"],
        }
    )
    common.print_header(machine, {k: v for k, v in settings.items() if k != "files"})
    print(
        f"data: {len(train_examples)} training examples -> common recipe {common_run['train_features']} rows of "
        f"{args.reference_max_length} tokens ({common_run['lost_train_answers']} answers lost to truncation; "
        f"dev answers out of reach: {common_run['lost_dev_answers']}), kqa {kqa_run['train_features']} windows "
        f"({kqa_run['lost_train_answers']} lost); {args.epochs} epochs of batch {args.batch_size}, lr "
        f"{args.learning_rate:g}, seed {args.seed}"
    )
    columns = [("recipe", "recipe", "")]
    for n in names:
        columns += [(f"{n}_em", f"{n} EM", ".2f"), (f"{n}_f1", f"{n} F1", ".2f")]
    columns += [
        ("selected", "selected checkpoint", ""),
        ("lost_train_answers", "lost train answers", "d"),
        ("train_s", "train+eval s", ".1f"),
        ("predict_s", "predict s", ".1f"),
    ]
    common.print_table(rows, columns)
    print(
        "train+eval s: wall clock of Trainer.train() / QATrainingRecipe.train() (evaluation every epoch and "
        "checkpoints included); the two common-recipe rows are one model, decoded two ways"
    )
    common.write_json(args.out, machine=machine, settings=settings, results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
