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
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--disable_tqdm", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kqa.evaluation import evaluate_model, score_predictions_file

    if args.predictions:
        result = score_predictions_file(args.data_file, args.predictions)
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    evaluation = evaluate_model(
        args.model, args.data_file, output_dir=args.output_dir, batch_size=args.batch_size,
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
        n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
        mixed_precision=args.mixed_precision, disable_tqdm=args.disable_tqdm,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(evaluation.result.to_dict(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
