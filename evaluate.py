"""Evaluate with the official KorQuAD 1.0 metric: the same command as `kqa evaluate` (kqa/cli/evaluate.py).

python evaluate.py --model outputs/kqa/best --data_file dev.json --output_dir outputs/eval
accelerate launch evaluate.py --model outputs/kqa/best --data_file dev.json
"""

import sys

from kqa.cli.evaluate import build_parser, main, run

__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":
    sys.exit(run())
