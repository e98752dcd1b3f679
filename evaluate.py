"""Evaluate with the official KorQuAD 1.0 metric (EM, character F1).

Score a saved model (writes predictions.json and nbest_predictions.json):
    python evaluate.py --model outputs/kqa/best --data_file dev.json --output_dir outputs/eval
    accelerate launch evaluate.py --model outputs/kqa/best --data_file dev.json

Score an existing predictions file (the official scorer):
    python evaluate.py --predictions predictions.json --data_file dev.json
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_file", required=True, help="SQuAD/KorQuAD-format JSON with gold answers")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved kqa model directory (e.g. outputs/kqa/best)")
    source.add_argument("--predictions", help="an existing predictions.json (id → answer text) to score")
    parser.add_argument("--output_dir", help="where to write predictions.json / nbest_predictions.json")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_seq_length", type=int)
    parser.add_argument("--doc_stride", type=int)
    parser.add_argument("--max_query_length", type=int)
    parser.add_argument("--n_best_size", type=int)
    parser.add_argument("--max_answer_length", type=int)
    parser.add_argument("--mixed_precision", choices=["auto", "no", "fp16", "bf16"],
                        help="default: Accelerate's setting (accelerate config / launch --mixed_precision)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow an encoder whose code lives beside its weights (as for training it)")
    parser.add_argument("--disable_tqdm", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.predictions:
        from kqa.metric import score_files

        result = score_files(args.data_file, args.predictions)
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    from kqa.training.evaluation import evaluate_model

    overrides = {k: getattr(args, k) for k in ("max_seq_length", "doc_stride", "max_query_length", "n_best_size",
                                               "max_answer_length")}
    evaluation = evaluate_model(
        args.model, args.data_file, output_dir=args.output_dir, batch_size=args.batch_size,
        mixed_precision=args.mixed_precision, trust_remote_code=args.trust_remote_code,
        disable_tqdm=args.disable_tqdm, **overrides,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(evaluation.result.to_dict(), indent=2, ensure_ascii=False))
    return 0


def run(argv: list[str] | None = None) -> int:
    """`main` with bad input (a file that is not UTF-8, a malformed record) reported in one line."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
