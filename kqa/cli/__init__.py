"""`python -m kqa …` / `kqa …`: train, evaluate, predict with a saved model, serve, retrieve.

kqa train --config configs/tiny-cpu-smoke.yaml --output_dir outputs/smoke          # kqa.cli.train
kqa evaluate --model outputs/kqa/best --data_file dev.json --output_dir outputs/eval  # kqa.cli.evaluate
kqa predict --model outputs/kqa/best --question "대한민국의 수도는 어디인가?" --context "대한민국의 수도는 서울이며, …"
kqa predict --model outputs/kqa/best --input questions.jsonl --output answers.json --top_k 3
kqa predict --model outputs/kqa/best --input dev.json --output predictions.json   # SQuAD file
kqa make-tiny-model --out models/tiny-bert --text_from ../shared/data/korquad-1.0-sample/KorQuAD_v1.0_train.json
kqa make-negatives --data_file dev.json --output_file dev-neg.json --negative_ratio 1  # see kqa.negatives
kqa export --model outputs/kqa/best --format onnx --quantize int8 --out outputs/kqa/onnx-int8  # kqa.inference.export
kqa build-backbone --out models/e5-small                                            # see kqa.offline
kqa serve --model outputs/kqa/best --port 8000                                      # see kqa.serving
kqa index --corpus my_docs/ --out my_index --embedding_model models/e5-small       # see kqa.retrieval
kqa ask --index my_index --model outputs/kqa/best "훈민정음은 언제 반포되었는가?"
kqa push --model outputs/kqa/best --repo user/kqa-model                             # see kqa.publish
"""

from __future__ import annotations

import sys

from kqa.cli.parser import OWN_PARSER_COMMANDS, build_parser
from kqa.cli.questions import read_questions
from kqa.extras import MissingExtraError

__all__ = ["build_parser", "main", "read_questions"]


def _run_own_parser_command(command: str, argv: list[str]) -> int:
    """The commands whose parser is their own (one home with `train.py`, `evaluate.py`, `python -m kqa.offline`)."""
    if command == "build-backbone":
        from kqa.offline.__main__ import main as offline_main

        return offline_main([command, *argv])
    if command == "train":
        from kqa.cli.train import main as train_main

        return train_main(argv, prog="kqa train")
    from kqa.cli.evaluate import run as evaluate_run

    return evaluate_run(argv, prog="kqa evaluate")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in OWN_PARSER_COMMANDS:
        return _run_own_parser_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, MissingExtraError) as err:  # bad input names the file, record and problem
        print(f"kqa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
