"""Evaluate with the official KorQuAD 1.0 metric (EM, character F1): `kqa evaluate` or `python evaluate.py`.

Score a saved model (writes predictions.json and nbest_predictions.json):
    kqa evaluate --model outputs/kqa/best --data_file dev.json --output_dir outputs/eval
    accelerate launch -m kqa evaluate --model outputs/kqa/best --data_file dev.json
    accelerate launch evaluate.py --model outputs/kqa/best --data_file dev.json

Score an existing predictions file (the official scorer):
    kqa evaluate --predictions predictions.json --data_file dev.json

A set with unanswerable questions also gets the SQuAD 2.0-style block ("squad_v2": HasAns / NoAns,
best_f1 and its null threshold; `kqa.metric_v2`). Store that threshold with the model:
    kqa evaluate --model outputs/kqa/best --data_file dev_v2.json --store_null_threshold
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kqa.flags import (
    add_bool_flag,
    add_hub_flags,
    add_prediction_override_flags,
    add_renamed_flag,
    hub_options,
    parse_column_mapping_flag,
)
from kqa.prediction import EVAL_BATCH_SIZE, OVERRIDABLE_SETTINGS, store_best_threshold
from kqa.training.config import MIXED_PRECISIONS


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_file",
        required=True,
        help="gold answers: SQuAD/KorQuAD-layout JSON, or flat rows in .json, .jsonl, .csv, .parquet",
    )
    parser.add_argument(
        "--column_mapping",
        type=parse_column_mapping_flag,
        help="field=column pairs for a flat file whose columns fit no known schema (id=qid,context=passage)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved kqa model directory (e.g. outputs/kqa/best) or hub id (org/name)")
    source.add_argument("--predictions", help="an existing predictions.json (id → answer text) to score")
    parser.add_argument(
        "--output_dir", help="where to write predictions.json / nbest_predictions.json / null_odds.json"
    )
    parser.add_argument(
        "--null_odds_file",
        help="with --predictions: null_odds.json (id → null score − best span score) or any na-prob file "
        "of the official SQuAD 2.0 script; adds best_exact / best_f1 and their thresholds",
    )
    add_bool_flag(
        parser,
        "store_null_threshold",
        help="with --model (a local directory trained with version_2_with_negative) and a set with "
        "unanswerable questions: write the best-F1 null threshold into the model's kqa_config.json",
    )
    add_renamed_flag(
        parser,
        "--per_device_eval_batch_size",
        "--batch_size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help="windows per batch",
    )
    add_prediction_override_flags(parser)
    parser.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISIONS,
        help="default: Accelerate's setting (accelerate config / launch --mixed_precision)",
    )
    add_bool_flag(
        parser, "trust_remote_code", help="allow an encoder whose code lives beside its weights (as for training it)"
    )
    add_bool_flag(parser, "disable_tqdm", help="no progress bars")
    add_hub_flags(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.predictions:
        scores = _score_predictions_file(args)
        print(json.dumps(scores, indent=2, ensure_ascii=False))
        return 0
    if args.null_odds_file:
        raise ValueError("--null_odds_file goes with --predictions; with --model the null odds come from the model")
    if args.store_null_threshold:
        _check_can_store(args.model)
    from kqa.training.evaluation import evaluate_model

    overrides = {k: getattr(args, k) for k in OVERRIDABLE_SETTINGS}
    evaluation = evaluate_model(
        args.model,
        args.data_file,
        output_dir=args.output_dir,
        batch_size=args.per_device_eval_batch_size,
        mixed_precision=args.mixed_precision,
        trust_remote_code=args.trust_remote_code,
        disable_tqdm=args.disable_tqdm,
        columns=args.column_mapping,
        **hub_options(args),
        **overrides,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False))
        if args.store_null_threshold:
            path = store_best_threshold(args.model, evaluation.v2, args.data_file)
            print(f"stored null_score_diff_threshold={evaluation.v2.best_f1_thresh} in {path}", file=sys.stderr)
    return 0


def _score_predictions_file(args) -> dict:
    """`--predictions`: the KorQuAD scores of a predictions file, with the SQuAD 2.0-style block when the gold
    set has unanswerable questions (best_* only with --null_odds_file). A SQuAD-layout JSON gold file goes
    through the official scorer (`kqa.metric.score_files`); any other data file (flat rows, a column mapping)
    through the loader, as `--model` reads it, then `score_predictions` (with the per-`question_type`
    breakdown when the rows carry it)."""
    from kqa.metric import read_predictions, score_files, score_predictions
    from kqa.metric_v2 import read_na_probs, score_files_v2, score_predictions_v2
    from kqa.tables import is_squad_document, read_json_document

    if args.store_null_threshold:
        raise ValueError("--store_null_threshold needs --model: the threshold is stored in a model's kqa_config.json")
    path = Path(args.data_file)
    if (
        not args.column_mapping
        and path.suffix.lower() == ".json"
        and path.is_file()
        and (is_squad_document(read_json_document(path)))
    ):
        result = score_files(path, args.predictions).to_dict()
        score_v2 = lambda: score_files_v2(path, args.predictions, args.null_odds_file)
    else:
        from kqa.data import load_data_file

        examples, _ = load_data_file(path, columns=args.column_mapping)
        predictions = read_predictions(args.predictions)
        result = score_predictions(examples, predictions).to_dict()
        na_probs = None if args.null_odds_file is None else read_na_probs(Path(args.null_odds_file))
        score_v2 = lambda: score_predictions_v2(examples, predictions, na_probs)
    if result["impossible"]:
        result["squad_v2"] = score_v2().to_dict()
    elif args.null_odds_file:
        print(f"{args.data_file}: no unanswerable question, so --null_odds_file is not used", file=sys.stderr)
    return result


def _check_can_store(model: str) -> None:
    """Before predicting: the model is a local directory whose saved settings are SQuAD 2.0 mode."""
    from kqa.prediction import load_settings

    if not Path(model).is_dir():
        raise ValueError(f"--store_null_threshold: {model} is not a local model directory to write into")
    if not load_settings(model).postprocess.version_2_with_negative:
        raise ValueError(
            f"--store_null_threshold: {model} was not trained with version_2_with_negative "
            "(kqa_config.json), so it has no null answer whose threshold could be stored"
        )


def run(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    """`main` with bad input (a file that is not UTF-8, a malformed record, a missing file, a refused hub
    repository) or a missing extra reported in one line."""
    from kqa.extras import MissingExtraError

    try:
        return main(argv, prog)
    except (ValueError, OSError, MissingExtraError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
