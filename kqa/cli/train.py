"""`kqa train` (and `python train.py`): fine-tune an encoder for Korean extractive QA.

    kqa train --config configs/klue-bert-base.yaml
    accelerate launch -m kqa train --config configs/klue-bert-base.yaml --per_device_train_batch_size 16
    accelerate launch train.py --config configs/klue-bert-base.yaml --per_device_train_batch_size 16
    python train.py --config configs/tiny-cpu-smoke.yaml --output_dir outputs/smoke

Every TrainConfig field is a flag (`kqa train --help`); flags override the YAML file. A bad configuration
(an unknown key, a value out of range, a missing file) or a missing extra is one line and exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys

from kqa.extras import MissingExtraError
from kqa.training.config import parse_config
from kqa.training.recipe import QATrainingRecipe


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        config = parse_config(argv, prog=prog)
        recipe = QATrainingRecipe(config).setup()
    except (ValueError, OSError, MissingExtraError) as err:  # OSError: a missing file, a refused hub repository
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    result = recipe.train()
    if recipe.accelerator.is_main_process:
        summary = {
            "global_step": result.global_step,
            "best_step": result.best_step,
            f"best_{config.metric_for_best_model}": result.best_metric,
            "final_metrics": result.final_metrics,
            "best_model_dir": str(recipe.best_dir) if result.best_step is not None else None,
            "stopped_early": result.stopped_early,
        }
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
