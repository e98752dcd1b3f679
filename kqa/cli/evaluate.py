"""Evaluate with the official KorQuAD 1.0 metric (EM, character F1): `kqa evaluate` or `python evaluate.py`.

Score a saved model (writes predictions.json and nbest_predictions.json):
    kqa evaluate --model outputs/kqa/best --data_file dev.json --output_dir outputs/eval
    accelerate launch -m kqa evaluate --model outputs/kqa/best --data_file dev.json
    accelerate launch evaluate.py --model outputs/kqa/best --data_file dev.json

Score an existing predictions file (the official scorer):
    kqa evaluate --predictions predictions.json --data_file dev.json
"""

from __future__ import annotations

import argparse
import json
import sys

from kqa.flags import (
    add_bool_flag,
    add_hub_flags,
    add_prediction_override_flags,
    add_renamed_flag,
    hub_options,
    parse_column_mapping_flag,
)
from kqa.prediction import EVAL_BATCH_SIZE, OVERRIDABLE_SETTINGS
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
    parser.add_argument("--output_dir", help="where to write predictions.json / nbest_predictions.json")
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
        result = score_predictions_file(args.data_file, args.predictions, args.column_mapping)
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
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
        print(json.dumps(evaluation.result.to_dict(), indent=2, ensure_ascii=False))
    return 0


def score_predictions_file(data_file: str, predictions_file: str, column_mapping: dict[str, str] | None = None):
    """`--predictions`: a SQuAD-layout JSON gold file through the official scorer (`kqa.metric.score_files`);
    any other data file (flat rows, a column mapping) through the loader, as `--model` reads it, then
    `score_predictions` (with the per-`question_type` breakdown when the rows carry it)."""
    from pathlib import Path

    from kqa.metric import read_predictions, score_files, score_predictions
    from kqa.tables import is_squad_document, read_json_document

    path = Path(data_file)
    if not column_mapping and path.suffix.lower() == ".json" and path.is_file():
        if is_squad_document(read_json_document(path)):
            return score_files(path, predictions_file)
    from kqa.data import load_data_file

    examples, _ = load_data_file(path, columns=column_mapping)
    return score_predictions(examples, read_predictions(predictions_file))


def run(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    """`main` with bad input (a file that is not UTF-8, a malformed record, a missing file, a refused hub
    repository) or a missing extra reported in one line."""
    from kqa.extras import MissingExtraError

    try:
        return main(argv, prog)
    except (ValueError, OSError, MissingExtraError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
