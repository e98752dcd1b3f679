"""Evaluate a saved kqa model on a data file (`evaluate.py`): SQuAD-layout JSON, or flat rows in .json,
.jsonl, .csv, .parquet (`kqa.data.load_data_file`).

The prediction path is the training loop's (`kqa.prediction.predict_and_score`), with the settings
saved beside the model, so the numbers match the evaluation that chose the checkpoint. It runs under
`accelerate launch` too: features are sharded over processes and logits gathered with
`gather_for_metrics`. Scoring an existing predictions file is `kqa.metric.score_files`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kqa.metric import EvalResult
from kqa.metric_v2 import SquadV2Result
from kqa.prediction import EVAL_BATCH_SIZE, PredictionSettings

logger = logging.getLogger(__name__)


@dataclass
class ModelEvaluation:
    result: EvalResult
    loss: Optional[float]
    predictions_file: Optional[Path]
    nbest_file: Optional[Path]
    num_features: int
    v2: Optional[SquadV2Result] = None
    """SQuAD 2.0-style scores when the set has unanswerable questions (`kqa.prediction.SetEvaluation.v2`)."""
    settings: Optional[PredictionSettings] = None
    """The settings the model predicted with (saved ones plus overrides)."""
    null_odds_file: Optional[Path] = None

    def to_dict(self) -> dict:
        """The KorQuAD scores, with the SQuAD 2.0-style block under "squad_v2" when there is one."""
        return {**self.result.to_dict(), **({"squad_v2": self.v2.to_dict()} if self.v2 is not None else {})}


def evaluate_model(
    name_or_path: str | Path,
    data_file: str | Path,
    *,
    output_dir: str | Path | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    mixed_precision: Optional[str] = None,
    trust_remote_code: bool = False,
    disable_tqdm: bool = False,
    decode: Optional[Callable] = None,
    columns: Optional[dict[str, str]] = None,
    allow_bin_weights: bool = False,
    revision: Optional[str] = None,
    token: Optional[str | bool] = None,
    cache_dir: Optional[str | Path] = None,
    local_files_only: bool = False,
    **overrides,
) -> ModelEvaluation:
    """Predict every question of `data_file` with the model `name_or_path` (a directory, or a hub id that
    `kqa.hub.resolve_model_dir` fetches with `revision`, `token`, `cache_dir`, `local_files_only`) and score
    it. `allow_bin_weights` as in `QuestionAnsweringModel.from_pretrained`.

    `overrides` are flat feature / post-processing settings (`max_seq_length=512`, `n_best_size=5`)
    replacing those saved with the model. `mixed_precision` unset means Accelerate's own setting (as in
    training); `auto`, `no`, `fp16`, `bf16` as in `TrainConfig`. `decode` replaces the n-best
    post-processor (same signature as `kqa.postprocess.decode_answers`). `columns` maps fields to the
    columns of a flat file (`kqa.columns`); a carried `question_type` column breaks the scores down.
    """
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from kqa.data import load_data_file
    from kqa.dataloaders import QACollator, make_eval_dataloader, pad_multiple_for, sort_by_length
    from kqa.features import prepare_eval_features
    from kqa.hub import resolve_model_dir
    from kqa.modeling import QuestionAnsweringModel
    from kqa.postprocess import decode_answers
    from kqa.prediction import PredictionSet, load_settings, predict_and_score
    from kqa.training.config import resolve_mixed_precision

    model_dir = resolve_model_dir(
        name_or_path,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_bin=allow_bin_weights,
    )
    settings = load_settings(model_dir, **overrides)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = QuestionAnsweringModel.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, allow_bin_weights=allow_bin_weights
    )
    with accelerator.main_process_first():
        examples, report = load_data_file(data_file, columns=columns)
        features, _ = prepare_eval_features(examples, tokenizer, settings.features, with_labels=True)
    features = sort_by_length(features)  # batches of similar lengths pad less; answers do not depend on order
    logger.info("%s", report.summary())

    collator = QACollator.from_tokenizer(tokenizer, pad_to_multiple_of=pad_multiple_for(accelerator.mixed_precision))
    loader = make_eval_dataloader(features, collator, batch_size)
    model, loader = accelerator.prepare(model, loader)
    prediction_set = PredictionSet(name=Path(data_file).stem, examples=examples, features=features, dataloader=loader)
    evaluation = predict_and_score(
        model,
        prediction_set,
        settings,
        accelerator=accelerator,
        decode=decode or decode_answers,
        disable_tqdm=disable_tqdm,
    )

    model_evaluation = ModelEvaluation(
        result=evaluation.result,
        loss=evaluation.loss,
        predictions_file=None,
        nbest_file=None,
        num_features=len(features),
        v2=evaluation.v2,
        settings=settings,
    )
    if output_dir is not None and accelerator.is_main_process:
        _write_outputs(evaluation.predictions, model_evaluation, Path(output_dir))
    return model_evaluation


def _write_outputs(predictions: dict, evaluation: ModelEvaluation, output_dir: Path) -> None:
    """predictions.json, nbest_predictions.json, null_odds.json in SQuAD 2.0 mode
    (`kqa.postprocess.write_predictions`) and eval_results.json; their paths are set on `evaluation`."""
    from kqa.postprocess import write_predictions

    paths = write_predictions(predictions, output_dir)
    (output_dir / "eval_results.json").write_text(
        json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    evaluation.predictions_file, evaluation.nbest_file = paths.get("predictions"), paths.get("nbest")
    evaluation.null_odds_file = paths.get("null_odds")


def store_training_threshold(accelerator, config, model_dir: Path, v2_scores: dict) -> None:
    """`TrainConfig.store_null_threshold`: the best-F1 null threshold of the chosen validation set's
    SQuAD 2.0-style scores (`v2_scores`: set name → `SquadV2Result` or None) into `model_dir`'s
    kqa_config.json (`kqa.prediction.store_best_threshold`; main process)."""
    from kqa.prediction import store_best_threshold

    wanted = config.store_null_threshold
    candidates = [n for n, v2 in v2_scores.items() if v2 is not None] if wanted == "first" else [wanted]
    if not candidates or candidates[0] not in v2_scores:
        raise ValueError(
            f"store_null_threshold={wanted!r}: no validation set "
            f"{'with unanswerable questions' if wanted == 'first' else 'of that name'} among {sorted(v2_scores)}"
        )
    name = candidates[0]
    if accelerator.is_main_process:
        data_file = config.named_validation_files().get(name, name)
        path = store_best_threshold(model_dir, v2_scores[name], data_file)
        logger.info("null threshold of validation set %s stored in %s", name, path)
    accelerator.wait_for_everyone()
