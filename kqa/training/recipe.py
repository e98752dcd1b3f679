"""The training loop, driven by Hugging Face Accelerate (no `transformers.Trainer`).

`QATrainingRecipe` reads top to bottom: `setup()` assigns what each `_setup_*` builds (data →
features → dataloaders → model → optimizer), `train()` shows one optimizer step inline (forward,
backward, clip, step, zero, then log / evaluate / checkpoint), and `evaluate()` /
`save_checkpoint()` / `save_best()` are plain methods a research script can call on its own. The same
code runs on CPU, one GPU or many through `accelerate launch`. Evaluation is `kqa.prediction`'s, the
same path `evaluate.py` and `QuestionAnswerer` take.

The host waits for the device only where a number must be read: at logging steps (loss, throughput,
the non-finite guard), evaluation and checkpoints. Between them a step only queues work.

The pieces that are useful outside the recipe live beside it: `kqa.training.optim` (the optimizer, the
schedule and its length), `kqa.training.checkpoints` (writing, verifying and loading checkpoints, best/
and final/), `kqa.training.inputs` (the examples a config names), `kqa.training.tracking` (wandb,
metrics.jsonl, evaluation metrics), `kqa.training.state` (`TrainingState`, `Run`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from tqdm.auto import tqdm

from kqa.dataloaders import (
    QACollator,
    make_eval_dataloader,
    make_train_dataloader,
    pad_multiple_for,
    sort_by_length,
)
from kqa.extras import require
from kqa.features import prepare_eval_features, prepare_train_features
from kqa.hub import describe_model_dir, is_hub_id, resolve_model_dir
from kqa.metric import score_predictions
from kqa.modeling import (
    NoAttentionDropoutError,
    QuestionAnsweringModel,
    attention_dropout_of,
    is_question_answering_checkpoint,
)
from kqa.postprocess import decode_answers, write_predictions
from kqa.prediction import PredictionSet, predict_and_score
from kqa.training.checkpoints import (
    CHECKPOINT_PREFIX,
    Checkpointed,
    recover_interrupted_writes,
    resume_from_checkpoint,
    save_model_directory,
    write_checkpoint,
)
from kqa.training.config import TrainConfig, emulated_bf16_warning, resolve_mixed_precision
from kqa.training.evaluation import store_training_threshold
from kqa.training.inputs import load_train_examples, load_validation_examples
from kqa.training.optim import build_optimizer, build_scheduler, schedule_length
from kqa.training.publishing import push_saved_model, run_card_info
from kqa.training.state import NonFiniteLossError, Run, TrainingState, TrainResult  # noqa: F401 (NonFiniteLossError: imported from here too)
from kqa.training.tracking import (
    METRICS_FILE,
    default_wandb_to_offline,
    evaluation_metrics,
    peak_memory_mb,
    start_metrics_log,
    start_trackers,
)

logger = logging.getLogger(__name__)


class QATrainingRecipe:
    """Fine-tune a span-extraction QA model: setup → train (evaluate, checkpoint) → best model.

    The stages are class attributes: a subclass swaps one by overriding it with anything of the same
    signature (see docs/architecture.md, "Swapping a stage").
    """

    model_class = QuestionAnsweringModel  # from_backbone(name, trust_remote_code=) / from_pretrained(dir, ...)
    build_train_features = staticmethod(prepare_train_features)  # (examples, tokenizer, FeatureConfig, num_proc=)
    build_eval_features = staticmethod(prepare_eval_features)  # (..., with_labels=True, num_proc=)
    collator_class = QACollator  # from_tokenizer(tokenizer, pad_to_multiple_of=)
    decode_answers = staticmethod(decode_answers)  # (examples, features, start, end, PostprocessConfig)
    score_predictions = staticmethod(score_predictions)  # (examples, {id: text}) -> EvalResult

    def __init__(self, config: TrainConfig):
        self.config = config
        self.settings = config.prediction_settings
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.best_dir = self.output_dir / "best"
        self.final_dir = self.output_dir / "final"
        self.metrics_file = self.output_dir / METRICS_FILE
        self.state = TrainingState()
        self.log_history: list[dict] = []  # this process's records of the run, in memory only
        self.last_predictions: dict[str, Any] = {}
        self.last_v2_scores: dict[str, Any] = {}
        self.last_checkpoint_step: Optional[int] = None
        self.run: Optional[Run] = None  # set by train()
        self.model_dir: Optional[Path] = None  # model_name_or_path as a local directory, set by setup()

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self) -> QATrainingRecipe:
        """Build every stage; each `_setup_*` returns what it builds and this assigns it."""
        self.accelerator = self._setup_accelerator()
        self.tokenizer, self.model = self._setup_model_and_tokenizer()
        self.train_features, self.train_feature_report, self.eval_sets = self._setup_features()
        self.collator, self.train_dataloader = self._setup_dataloaders()  # and each eval set's loader
        self.optimizer, self.scheduler, self.steps_per_epoch, self.total_steps, self.num_epochs = (
            self._setup_optimization()
        )
        self.model, self.optimizer, self.train_dataloader, self.scheduler = self._prepare()
        resumed = self._maybe_resume()
        self._start_metrics_log(resumed)
        return self

    def _setup_accelerator(self) -> Accelerator:
        cfg = self.config
        log_with = None if cfg.report_to == "none" else cfg.report_to
        if log_with == "wandb":
            require("wandb")
        if log_with in ("wandb", "all"):
            default_wandb_to_offline()
        accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=True
            ),
            log_with=log_with,
            project_dir=str(self.output_dir),
        )
        set_seed(cfg.seed)
        warning = emulated_bf16_warning(accelerator.mixed_precision, accelerator.device.type)
        if warning and accelerator.is_main_process:
            logger.warning(warning)
        # Logging is the application's to configure (train.py does); only silence other processes.
        if not accelerator.is_local_main_process:
            logging.getLogger("kqa").setLevel(logging.WARNING)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output_dir / "train_config.yaml")
            recover_interrupted_writes(self.checkpoint_root, (self.best_dir, self.final_dir))
        accelerator.wait_for_everyone()
        return accelerator

    def _setup_model_and_tokenizer(self):
        from transformers import AutoTokenizer

        cfg = self.config
        with self.accelerator.main_process_first():  # the main process fills the hub cache first
            # The one place model_name_or_path becomes a directory. `.bin` weights are fetched for a repository
            # without safetensors: an encoder's go to transformers' own loader (weights_only), as before; a
            # question-answering model's still need allow_bin_weights to be read.
            self.model_dir = resolve_model_dir(cfg.model_name_or_path, allow_bin=True, **cfg.hub_options())
        tokenizer = AutoTokenizer.from_pretrained(
            str(cfg.tokenizer_name_or_path or self.model_dir),
            trust_remote_code=cfg.trust_remote_code,
            **self._tokenizer_hub_options(),
        )
        attention_dropout = cfg.resolved_attention_dropout(self.accelerator.device.type)
        try:
            model = self._load_model(attention_dropout)
        except NoAttentionDropoutError:
            if cfg.attention_dropout != "auto":
                raise
            model = self._load_model(None)  # auto on an encoder without the setting: keep it as it is
        logger.info(
            "attention dropout %s (attention_dropout: %s, on %s)",
            attention_dropout_of(model.config),
            cfg.attention_dropout,
            self.accelerator.device.type,
        )
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.freeze_word_embeddings:  # before the optimizer is built: it takes only what requires grad
            model.backbone.get_input_embeddings().weight.requires_grad_(False)
        logger.info(
            "model %s: %.1fM parameters, %.1fM trained",
            cfg.model_name_or_path,
            model.num_parameters() / 1e6,
            model.num_parameters(only_trainable=True) / 1e6,
        )
        return tokenizer, model

    def _tokenizer_hub_options(self) -> dict:
        """A tokenizer named by another hub id is fetched with the model's token, cache and offline setting
        (not its revision, which names a commit of the model's repository)."""
        if not is_hub_id(self.config.tokenizer_name_or_path) or Path(self.config.tokenizer_name_or_path).is_dir():
            return {}
        options = self.config.hub_options()
        return {key: options[key] for key in ("token", "cache_dir", "local_files_only")}

    def _load_model(self, attention_dropout: Optional[float]):
        """Continue training a question-answering model (kqa's or a transformers `*ForQuestionAnswering`
        checkpoint, local or by hub id); start from an encoder with a new span head otherwise."""
        cfg, model_dir = self.config, self.model_dir
        if is_question_answering_checkpoint(model_dir):
            logger.info("continuing from the question-answering model %s", describe_model_dir(model_dir))
            return self.model_class.from_pretrained(
                model_dir,
                attention_dropout=attention_dropout,
                trust_remote_code=cfg.trust_remote_code,
                allow_bin_weights=cfg.allow_bin_weights,
            )
        return self.model_class.from_backbone(
            model_dir, attention_dropout=attention_dropout, trust_remote_code=cfg.trust_remote_code
        )

    def _setup_features(self):
        """Train features, their report, and the validation sets (features with offsets and labels)."""
        cfg, features_config = self.config, self.settings.features
        with self.accelerator.main_process_first():  # the main process fills the datasets cache first
            train_examples = load_train_examples(cfg)
            train_features, train_report = self.build_train_features(
                train_examples, self.tokenizer, features_config, num_proc=cfg.preprocessing_num_workers
            )
            eval_sets: list[PredictionSet] = []
            if cfg.eval_strategy != "no":
                for name, examples in load_validation_examples(cfg).items():
                    # Offsets (to decode answers) and labels (for the evaluation loss) in one pass.
                    features, _ = self.build_eval_features(
                        examples,
                        self.tokenizer,
                        features_config,
                        with_labels=True,
                        num_proc=cfg.preprocessing_num_workers,
                    )
                    features = sort_by_length(features)  # batches of similar lengths: about half the padding
                    eval_sets.append(PredictionSet(name=name, examples=examples, features=features))
        if cfg.eval_strategy != "no" and not eval_sets:
            raise ValueError("eval_strategy is not 'no' but no validation data was given")
        return train_features, train_report, eval_sets

    def _setup_dataloaders(self):
        """The collator and the train dataloader; each validation set gets its own loader."""
        cfg = self.config
        pad_multiple = pad_multiple_for(self.accelerator.mixed_precision)
        collator = self.collator_class.from_tokenizer(self.tokenizer, pad_to_multiple_of=pad_multiple)
        train_dataloader = make_train_dataloader(
            self.train_features,
            collator,
            cfg.per_device_train_batch_size,
            seed=cfg.seed,
            group_by_length=cfg.group_by_length,
            num_workers=cfg.dataloader_num_workers,
        )
        for eval_set in self.eval_sets:
            eval_set.dataloader = make_eval_dataloader(
                eval_set.features, collator, cfg.per_device_eval_batch_size, num_workers=cfg.dataloader_num_workers
            )
        return collator, train_dataloader

    def _setup_optimization(self):
        """The optimizer, the schedule and its length: steps per epoch, total steps, epochs."""
        cfg = self.config
        optimizer = build_optimizer(self.model, cfg)
        num_processes = self.accelerator.num_processes
        steps_per_epoch, total_steps, num_epochs = schedule_length(len(self.train_dataloader), num_processes, cfg)
        # A prepared scheduler steps once per process per optimizer step, so it counts in those units.
        scheduler = build_scheduler(optimizer, cfg, total_steps * num_processes)
        return optimizer, scheduler, steps_per_epoch, total_steps, num_epochs

    def _prepare(self):
        """`accelerator.prepare` of the model, optimizer, dataloaders and schedule (the validation loaders
        are replaced in their sets); trackers started."""
        acc = self.accelerator
        eval_loaders = [s.dataloader for s in self.eval_sets]
        prepared = acc.prepare(self.model, self.optimizer, self.train_dataloader, self.scheduler, *eval_loaders)
        for eval_set, loader in zip(self.eval_sets, prepared[4:]):
            eval_set.dataloader = loader
        if self.config.compile:
            # After prepare, so the graph holds Accelerate's autocast and the DDP wrapper (dynamo splits at gradient
            # buckets: all-reduce overlaps the backward); in place, as torch.compile(model) and Accelerate's
            # dynamo_backend return a wrapper whose `_orig_mod.` keys unwrap_model keeps and checkpoints would save.
            prepared[0].compile()
        if self.config.report_to != "none":
            start_trackers(acc, self.config)
        return prepared[:4]

    def _maybe_resume(self) -> bool:
        cfg = self.config
        return resume_from_checkpoint(
            self._checkpointed(), cfg.resume_from_checkpoint, self.checkpoint_root, cfg.allow_pickled_checkpoint
        )

    def _checkpointed(self) -> Checkpointed:
        return Checkpointed(self.accelerator, self.model, self.optimizer, self.scheduler, self.state)

    def _start_metrics_log(self, resumed: bool) -> None:
        if self.accelerator.is_main_process:
            start_metrics_log(self.metrics_file, self.state.global_step if resumed else None)
        self.accelerator.wait_for_everyone()

    # ---- training ---------------------------------------------------------------------------------
    def train(self, max_steps_this_run: Optional[int] = None) -> TrainResult:
        """Run the schedule to its end (or `max_steps_this_run` more optimizer steps, for time-sliced jobs)."""
        cfg, acc, state, model = self.config, self.accelerator, self.state, self.model
        show_progress = not cfg.disable_tqdm and acc.is_local_main_process
        run = self.run = Run.start(state, self.total_steps, max_steps_this_run, acc.device, show_progress)
        if cfg.eval_before_training and state.global_step == 0 and self.eval_sets:
            self.evaluate()  # a baseline only: the untrained head never becomes the best model

        while state.epoch < self.num_epochs and not run.done(state):
            model.train()
            self.train_dataloader.set_epoch(state.epoch)
            batches = self.train_dataloader
            if state.batches_seen_in_epoch:  # resuming mid-epoch: the same order, without what was done
                batches = acc.skip_first_batches(self.train_dataloader, state.batches_seen_in_epoch)
            for batch in batches:
                # forward, backward, clip, step, zero: under accumulate() the optimizer and scheduler
                # act only on the last micro-batch of an accumulation (acc.sync_gradients)
                with acc.accumulate(model):
                    loss = model(**batch).loss
                    acc.backward(loss)
                    grad_norm = (
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if acc.sync_gradients else None
                    )
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                run.window.add(loss, batch)  # summed on the device: no sync
                state.batches_seen_in_epoch += 1
                if not acc.sync_gradients:
                    continue  # still accumulating: no optimizer step yet
                run.track_finite(grad_norm, check_grad_norm=acc.mixed_precision != "fp16")  # fp16: the scaler skips
                run.last_grad_norm, run.window.steps = grad_norm, run.window.steps + 1
                state.global_step += 1
                epoch_ended = state.batches_seen_in_epoch == len(self.train_dataloader)
                if epoch_ended:
                    state.epoch, state.batches_seen_in_epoch = state.epoch + 1, 0
                run.progress.update(1)

                # log (the host waits here: loss and counts are reduced over processes), evaluate, checkpoint
                if state.global_step % cfg.logging_steps == 0 or state.global_step == run.stop_at:
                    self._log_training()
                with run.window.paused():  # throughput counts training time only
                    if self._due(cfg.eval_strategy, cfg.eval_steps, epoch_ended):
                        self._evaluate_and_select()
                    if self._due(cfg.save_strategy, cfg.save_steps, epoch_ended):
                        self.save_checkpoint()
                if run.done(state):
                    break

        run.progress.close()
        return self._finish()

    def _raise_if_not_finite(self) -> None:
        if self.run is not None:  # else nothing was trained yet
            self.run.raise_if_not_finite(self.accelerator, self.checkpoint_root)

    def _due(self, strategy: str, every: Optional[int], epoch_ended: bool) -> bool:
        """Whether an evaluation or checkpoint under `strategy` falls on the optimizer step just taken."""
        if strategy == "steps":
            return self.state.global_step % every == 0
        return strategy == "epoch" and epoch_ended

    def _log_training(self) -> None:
        """Loss and throughput since the last logging step, summed over processes."""
        run, state = self.run, self.state
        self._raise_if_not_finite()
        logs = {
            **run.window.reduce(self.accelerator),  # loss, samples / tokens / padded tokens per second
            "learning_rate": self.scheduler.get_last_lr()[0],
            "grad_norm": float(run.last_grad_norm) if run.last_grad_norm is not None else float("nan"),
            "peak_memory_mb": peak_memory_mb(self.accelerator.device),
            "epoch": state.epoch + state.batches_seen_in_epoch / max(1, len(self.train_dataloader)),
        }
        self._log(logs)
        run.progress.set_postfix(
            loss=f"{logs['loss']:.4f}", lr=f"{logs['learning_rate']:.2e}", sps=f"{logs['samples_per_second']:.1f}"
        )
        run.window.reset()

    def _evaluate_and_select(self) -> None:
        self.run.last_metrics = self.evaluate()
        self.run.stopped_early = self._select_best(self.run.last_metrics)

    def _finish(self) -> TrainResult:
        cfg, state, run = self.config, self.state, self.run
        finished = state.global_step >= self.total_steps or run.stopped_early
        if finished:
            # A schedule that ends mid-epoch (max_train_steps) still gets its final evaluation.
            if cfg.eval_strategy != "no" and run.last_metrics.get("step") != state.global_step:
                self._evaluate_and_select()
            self.save_final()
            self.accelerator.end_training()
        elif cfg.save_strategy != "no" and self.last_checkpoint_step != state.global_step:
            self.save_checkpoint()  # a time-sliced run always leaves a checkpoint to resume from
        return TrainResult(
            global_step=state.global_step,
            best_metric=state.best_metric,
            best_step=state.best_step,
            final_metrics=run.last_metrics,
            stopped_early=run.stopped_early,
            interrupted=not finished,
        )

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Evaluate on every validation set; returns `<set>/exact_match`, `<set>/f1`, `<set>/loss`
        and question-weighted overall `exact_match` / `f1`."""
        self._raise_if_not_finite()
        was_training = self.model.training
        evaluations = {
            eval_set.name: predict_and_score(
                self.model,
                eval_set,
                self.settings,
                accelerator=self.accelerator,
                decode=self.decode_answers,
                metric=self.score_predictions,
                disable_tqdm=self.config.disable_tqdm,
            )
            for eval_set in self.eval_sets
        }
        self.last_predictions = {name: evaluation.predictions for name, evaluation in evaluations.items()}
        self.last_v2_scores = {name: evaluation.v2 for name, evaluation in evaluations.items()}
        metrics = {**evaluation_metrics(evaluations), "step": self.state.global_step}
        self.model.train(was_training)
        self._log({f"eval/{k}" if k != "step" else k: v for k, v in metrics.items()})
        if self.accelerator.is_main_process:
            summary = " | ".join(
                f"{name}: EM {metrics[f'{name}/exact_match']:.2f} F1 {metrics[f'{name}/f1']:.2f}"
                for name in evaluations
            )
            tqdm.write(f"[eval step {self.state.global_step}] {summary}")
            for name, predictions in self.last_predictions.items():
                write_predictions(predictions, self.output_dir / "predictions" / name)
        return metrics

    def _select_best(self, metrics: dict[str, float]) -> bool:
        """Keep the best model by the configured metric; return True when early stopping triggers."""
        cfg, state = self.config, self.state
        key, patience = cfg.metric_for_best_model, cfg.early_stopping_patience
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={key!r} is not among the evaluation metrics: {sorted(metrics)}")
        if state.record_evaluation(metrics[key], cfg.greater_is_better):
            self.save_best(metrics)
            return False
        stop = patience is not None and state.evals_without_improvement >= patience
        if stop:
            logger.info(
                "early stopping: %s did not improve for %d evaluations (best %.4f at step %d)",
                key,
                patience,
                state.best_metric,
                state.best_step,
            )
        return stop

    # ---- checkpoints ------------------------------------------------------------------------------
    def save_best(self, metrics: dict[str, float]) -> None:
        """The current model → output_dir/best, with its metrics and predictions."""
        self._save_model(self.best_dir, metrics, self.last_predictions)
        if self.accelerator.is_main_process:
            key = self.config.metric_for_best_model
            logger.info("new best %s=%.4f at step %d → %s", key, metrics[key], self.state.global_step, self.best_dir)

    def save_final(self) -> None:
        """The model at the end of training → output_dir/final, loadable like best/ (also when the run
        never evaluated, eval_strategy=no)."""
        last_metrics = self.run.last_metrics if self.run else {}
        evaluated_now = last_metrics.get("step") == self.state.global_step
        self._save_model(
            self.final_dir, last_metrics if evaluated_now else None, self.last_predictions if evaluated_now else {}
        )

    def _save_model(self, directory: Path, metrics: Optional[dict[str, float]], predictions: dict) -> None:
        self._raise_if_not_finite()
        acc = self.accelerator
        card = run_card_info(self.config, directory, metrics, acc.num_processes)  # README.md, written inside
        save_model_directory(
            acc, self.model, directory, self.tokenizer, self.settings.to_dict(), metrics, predictions, card
        )
        if directory == self.best_dir and self.config.store_null_threshold:
            store_training_threshold(acc, self.config, directory, self.last_v2_scores)
        push_saved_model(acc, self.config, directory, self.best_dir if self.state.best_step is not None else None)

    def save_checkpoint(self) -> Path:
        """The training state → checkpoints/checkpoint-<step> (kqa.training.checkpoints: written into a
        temporary directory, verified on resume)."""
        self._raise_if_not_finite()
        final = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        write_checkpoint(self._checkpointed(), final, keep=self.config.save_total_limit)
        self.last_checkpoint_step = self.state.global_step
        return final

    # ---- logging ----------------------------------------------------------------------------------
    def _log(self, values: dict[str, Any]) -> None:
        acc = self.accelerator
        record = {"step": self.state.global_step, **values}
        self.log_history.append(record)
        if self.config.report_to != "none":
            acc.log({k: v for k, v in values.items() if k != "step"}, step=self.state.global_step)
        if acc.is_main_process:
            with open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
