"""Evaluate a saved kqa model on a SQuAD-format file, or score an existing predictions file.

Both paths end in the same official KorQuAD 1.0 metric (`kqa.metric`), so `evaluate.py` doubles as
the official scorer. Model evaluation runs under `accelerate launch` too: features are sharded over
processes and logits gathered with `gather_for_metrics`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kqa.metric import EvalResult, evaluate_files

logger = logging.getLogger("kqa.evaluation")


@dataclass
class ModelEvaluation:
    result: EvalResult
    predictions_file: Optional[Path]
    nbest_file: Optional[Path]
    num_features: int


def evaluate_model(
    model_dir: str | Path,
    data_file: str | Path,
    *,
    output_dir: str | Path | None = None,
    batch_size: int = 64,
    max_seq_length: Optional[int] = None,
    doc_stride: Optional[int] = None,
    max_query_length: Optional[int] = None,
    n_best_size: Optional[int] = None,
    max_answer_length: Optional[int] = None,
    mixed_precision: str = "no",
    disable_tqdm: bool = False,
    postprocess: Optional[Callable] = None,
) -> ModelEvaluation:
    """Predict every question of `data_file` with the model in `model_dir` and score it.

    Feature and post-processing settings default to those saved with the model (kqa_config.json),
    so the numbers match the evaluation that chose the checkpoint. `postprocess` replaces the n-best
    post-processor (same signature as `kqa.postprocess.postprocess_predictions`).
    """
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from kqa.data import load_squad_json
    from kqa.dataloaders import QACollator, make_eval_dataloader
    from kqa.features import FeatureConfig, prepare_eval_features
    from kqa.loop import EvalSet, evaluate_predictions_for_set, predict_logits
    from kqa.modeling import QuestionAnsweringModel, load_kqa_config
    from kqa.postprocess import PostprocessConfig, postprocess_predictions, write_predictions

    saved = load_kqa_config(model_dir)

    def pick(value, key, default):
        return value if value is not None else saved.get(key, default)

    feature_config = FeatureConfig(
        max_seq_length=pick(max_seq_length, "max_seq_length", 384),
        doc_stride=pick(doc_stride, "doc_stride", 128),
        max_query_length=pick(max_query_length, "max_query_length", 64),
    )
    post_config = PostprocessConfig(
        n_best_size=pick(n_best_size, "n_best_size", 20),
        max_answer_length=pick(max_answer_length, "max_answer_length", 30),
        version_2_with_negative=saved.get("version_2_with_negative", False),
        null_score_diff_threshold=saved.get("null_score_diff_threshold", 0.0),
    )

    accelerator = Accelerator(mixed_precision=mixed_precision)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = QuestionAnsweringModel.from_pretrained(model_dir)
    with accelerator.main_process_first():
        examples, report = load_squad_json(data_file)
        features, feature_report = prepare_eval_features(examples, tokenizer, feature_config)
    logger.info("%s", report.summary())
    logger.info("%s", feature_report.summary())

    collator = QACollator.from_tokenizer(tokenizer, pad_to_multiple_of=8 if mixed_precision != "no" else None)
    loader = make_eval_dataloader(features, collator, batch_size)
    model, loader = accelerator.prepare(model, loader)
    start, end, _ = predict_logits(model, loader, accelerator, feature_config.max_seq_length,
                                   desc=f"eval {Path(data_file).name}", disable_tqdm=disable_tqdm)
    eval_set = EvalSet(name=Path(data_file).stem, examples=examples, features=features)
    predictions, result = evaluate_predictions_for_set(eval_set, start, end, post_config,
                                                       postprocess=postprocess or postprocess_predictions)

    predictions_file = nbest_file = None
    if output_dir is not None and accelerator.is_main_process:
        paths = write_predictions(predictions, Path(output_dir))
        predictions_file, nbest_file = paths.get("predictions"), paths.get("nbest")
        (Path(output_dir) / "eval_results.json").write_text(
            json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8"
        )
    return ModelEvaluation(result=result, predictions_file=predictions_file, nbest_file=nbest_file,
                           num_features=len(features))


def score_predictions_file(data_file: str | Path, predictions_file: str | Path) -> EvalResult:
    """The official scorer: a SQuAD/KorQuAD gold file and a `predictions.json` (id → text)."""
    return evaluate_files(data_file, predictions_file)
