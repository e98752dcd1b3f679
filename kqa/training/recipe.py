"""The training loop, driven by Hugging Face Accelerate (no `transformers.Trainer`).

`QATrainingRecipe` reads top to bottom: `setup()` assigns what each `_setup_*` builds (data →
features → dataloaders → model → optimizer), `train()` shows one optimizer step inline (forward,
backward, clip, step, zero, then log / evaluate / checkpoint), and `evaluate()` /
`save_checkpoint()` / `save_best()` are plain methods a research script can call on its own. The same
code runs on CPU, one GPU or many through `accelerate launch`. Evaluation is `kqa.prediction`'s, the
same path `evaluate.py` and `QuestionAnswerer` take.

The host waits for the device only where a number must be read: at logging steps (loss, throughput,
the non-finite guard), evaluation and checkpoints. Between them a step only queues work.

The pieces that are useful outside the recipe live beside it: `kqa.training.optim` (`build_optimizer`,
`build_scheduler`), `kqa.training.checkpoints` (`find_latest_checkpoint`), `kqa.training.tracking`
(`default_wandb_to_offline`), `kqa.training.state` (`TrainingState`, `Run`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from tqdm.auto import tqdm

from kqa.data import load_hf_dataset, load_squad_json
from kqa.dataloaders import (
    QACollator,
    make_eval_dataloader,
    make_train_dataloader,
    pad_multiple_for,
    sort_by_length,
)
from kqa.features import prepare_eval_features, prepare_train_features
from kqa.metric import score_predictions
from kqa.modeling import KQA_CONFIG_FILE, NoAttentionDropoutError, QuestionAnsweringModel, attention_dropout_of
from kqa.postprocess import decode_answers, write_predictions
from kqa.prediction import PredictionSet, predict_and_score
from kqa.training.checkpoints import (
    CHECKPOINT_PREFIX,
    Checkpointed,
    load_checkpoint,
    replace_directory,
    resolve_checkpoint,
    write_checkpoint,
)
from kqa.training.config import TrainConfig, resolve_mixed_precision
from kqa.training.optim import build_optimizer, build_scheduler
from kqa.training.state import NonFiniteLossError, Run, StepWindow, TrainingState, TrainResult, is_improvement
from kqa.training.tracking import METRICS_FILE, _read_records, default_wandb_to_offline, peak_memory_mb

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
        self.last_checkpoint_step: Optional[int] = None
        self.run: Optional[Run] = None  # set by train()

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
        # Logging is the application's to configure (train.py does); only silence other processes.
        if not accelerator.is_local_main_process:
            logging.getLogger("kqa").setLevel(logging.WARNING)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output_dir / "train_config.yaml")
        accelerator.wait_for_everyone()
        return accelerator

    def _setup_model_and_tokenizer(self):
        from transformers import AutoTokenizer

        cfg = self.config
        tokenizer_source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=cfg.trust_remote_code)
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
        logger.info("model %s: %.1fM parameters", cfg.model_name_or_path, model.num_parameters() / 1e6)
        return tokenizer, model

    def _load_model(self, attention_dropout: Optional[float]):
        cfg = self.config
        if (Path(cfg.model_name_or_path) / KQA_CONFIG_FILE).is_file():  # continue training a kqa model
            return self.model_class.from_pretrained(
                cfg.model_name_or_path, attention_dropout=attention_dropout, trust_remote_code=cfg.trust_remote_code
            )
        return self.model_class.from_backbone(
            cfg.model_name_or_path, attention_dropout=attention_dropout, trust_remote_code=cfg.trust_remote_code
        )

    def _load_train_examples(self):
        import datasets

        cfg = self.config
        if cfg.train_files:
            parts = [load_squad_json(cfg.resolve_data_path(path))[0] for path in cfg.train_files]
            examples = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        else:
            examples, _ = load_hf_dataset(cfg.dataset_name, cfg.train_split, config_name=cfg.dataset_config_name)
        if cfg.max_train_samples is not None:
            examples = examples.select(range(min(cfg.max_train_samples, len(examples))))
        return examples

    def _load_validation_examples(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.validation_files:
            sets = {name: load_squad_json(path)[0] for name, path in cfg.named_validation_files().items()}
        elif cfg.dataset_name:
            sets = {
                "validation": load_hf_dataset(
                    cfg.dataset_name, cfg.validation_split, config_name=cfg.dataset_config_name
                )[0]
            }
        else:
            sets = {}
        if cfg.max_eval_samples is not None:
            sets = {k: v.select(range(min(cfg.max_eval_samples, len(v)))) for k, v in sets.items()}
        return sets

    def _setup_features(self):
        """Train features, their report, and the validation sets (features with offsets and labels)."""
        cfg, features_config = self.config, self.settings.features
        with self.accelerator.main_process_first():  # the main process fills the datasets cache first
            train_examples = self._load_train_examples()
            train_features, train_report = self.build_train_features(
                train_examples, self.tokenizer, features_config, num_proc=cfg.preprocessing_num_workers
            )
            eval_sets: list[PredictionSet] = []
            if cfg.eval_strategy != "no":
                for name, examples in self._load_validation_examples().items():
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
        # Optimizer steps per epoch as each process will see them after sharding.
        batches_per_epoch = math.ceil(len(self.train_dataloader) / self.accelerator.num_processes)
        steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
        if cfg.max_train_steps is not None:
            total_steps = cfg.max_train_steps
        else:
            total_steps = math.ceil(cfg.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(total_steps / steps_per_epoch)
        # A prepared scheduler steps once per process per optimizer step, so it counts in those units.
        scheduler = build_scheduler(optimizer, cfg, total_steps * self.accelerator.num_processes)
        return optimizer, scheduler, steps_per_epoch, total_steps, num_epochs

    def _prepare(self):
        """`accelerator.prepare` of the model, optimizer, dataloaders and schedule (the validation loaders
        are replaced in their sets); trackers started."""
        acc = self.accelerator
        eval_loaders = [s.dataloader for s in self.eval_sets]
        prepared = acc.prepare(self.model, self.optimizer, self.train_dataloader, self.scheduler, *eval_loaders)
        for eval_set, loader in zip(self.eval_sets, prepared[4:]):
            eval_set.dataloader = loader
        if self.config.report_to != "none":
            acc.init_trackers(
                self.config.project_name,
                config={k: v for k, v in self.config.to_flat_dict().items() if isinstance(v, (int, float, str, bool))},
                init_kwargs={"wandb": {"name": self.config.run_name, "dir": str(self.output_dir)}},
            )
        return prepared[:4]

    def _maybe_resume(self) -> bool:
        path = resolve_checkpoint(self.config.resume_from_checkpoint, self.checkpoint_root)
        if path is None:
            return False
        load_checkpoint(self._checkpointed(), path, allow_pickle=self.config.allow_pickled_checkpoint)
        state = self.state
        logger.info(
            "resumed from %s at step %d (epoch %d, %d batches into it)",
            path,
            state.global_step,
            state.epoch,
            state.batches_seen_in_epoch,
        )
        return True

    def _checkpointed(self) -> Checkpointed:
        return Checkpointed(self.accelerator, self.model, self.optimizer, self.scheduler, self.state)

    def _start_metrics_log(self, resumed: bool) -> None:
        """metrics.jsonl holds each step of this run once. A resumed run keeps the records up to its
        checkpoint's step (those after it are logged again); a new run moves an older log aside."""
        if self.accelerator.is_main_process and self.metrics_file.exists():
            if resumed:
                kept = [r for r in _read_records(self.metrics_file) if r.get("step", 0) <= self.state.global_step]
                tmp = self.metrics_file.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
                tmp.replace(self.metrics_file)
            else:
                number = 1
                while (old := self.output_dir / f"metrics.previous-{number}.jsonl").exists():
                    number += 1
                self.metrics_file.rename(old)
                logger.warning("%s held the log of an earlier run; moved it to %s", self.metrics_file, old)
        self.accelerator.wait_for_everyone()

    # ---- training ---------------------------------------------------------------------------------
    def train(self, max_steps_this_run: Optional[int] = None) -> TrainResult:
        """Run the schedule to its end (or `max_steps_this_run` more optimizer steps, for time-sliced jobs)."""
        cfg, acc, state, model = self.config, self.accelerator, self.state, self.model
        run = self.run = self._start_run(max_steps_this_run)
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
                    if self._evaluation_due(epoch_ended):
                        self._evaluate_and_select()
                    if self._checkpoint_due(epoch_ended):
                        self.save_checkpoint()
                if run.done(state):
                    break

        run.progress.close()
        return self._finish()

    def _start_run(self, max_steps_this_run: Optional[int]) -> Run:
        acc, state = self.accelerator, self.state
        return Run(
            stop_at=min(self.total_steps, state.global_step + (max_steps_this_run or self.total_steps)),
            window=StepWindow(acc.device),
            progress=tqdm(
                total=self.total_steps,
                initial=state.global_step,
                desc="train",
                disable=self.config.disable_tqdm or not acc.is_local_main_process,
                dynamic_ncols=True,
            ),
            first_bad_step=torch.full((), -1, dtype=torch.long, device=acc.device),
            device_step=torch.full((), state.global_step, dtype=torch.long, device=acc.device),
        )

    def _raise_if_not_finite(self) -> None:
        if self.run is None:
            return  # nothing trained yet
        bad_steps = [s for s in self.accelerator.gather(self.run.first_bad_step.reshape(1)).tolist() if s >= 0]
        if bad_steps:
            raise NonFiniteLossError(
                f"non-finite loss or gradient norm at optimizer step {min(bad_steps)}; lower the learning "
                f"rate, use bf16 instead of fp16, or check the data. The last good checkpoint is in "
                f"{self.checkpoint_root}"
            )

    def _evaluation_due(self, epoch_ended: bool) -> bool:
        cfg = self.config
        if cfg.eval_strategy == "steps":
            return self.state.global_step % cfg.eval_steps == 0
        return cfg.eval_strategy == "epoch" and epoch_ended

    def _checkpoint_due(self, epoch_ended: bool) -> bool:
        cfg = self.config
        if cfg.save_strategy == "steps":
            return self.state.global_step % cfg.save_steps == 0
        return cfg.save_strategy == "epoch" and epoch_ended

    def _log_training(self) -> None:
        """Loss and throughput since the last logging step, summed over processes."""
        acc, window, state = self.accelerator, self.run.window, self.state
        self._raise_if_not_finite()
        host_counts = [window.micro_batches, window.samples, window.padded_tokens]
        totals = torch.stack(
            [
                window.loss_sum,
                window.real_tokens.float(),
                *torch.tensor(host_counts, dtype=torch.float32, device=acc.device),
            ]
        )
        loss_sum, real_tokens, micro_batches, samples, padded_tokens = acc.reduce(totals, "sum").tolist()  # sync
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        logs = {
            "loss": loss_sum / max(micro_batches, 1),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "grad_norm": float(self.run.last_grad_norm) if self.run.last_grad_norm is not None else float("nan"),
            "samples_per_second": samples / elapsed,
            "tokens_per_second": real_tokens / elapsed,  # non-padding tokens
            "padded_tokens_per_second": padded_tokens / elapsed,
            "peak_memory_mb": peak_memory_mb(acc.device),
            "epoch": state.epoch + state.batches_seen_in_epoch / max(1, len(self.train_dataloader)),
        }
        self._log(logs)
        self.run.progress.set_postfix(
            loss=f"{logs['loss']:.4f}", lr=f"{logs['learning_rate']:.2e}", sps=f"{logs['samples_per_second']:.1f}"
        )
        window.reset()

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
        metrics: dict[str, float] = {}
        total_questions, em_sum, f1_sum = 0, 0.0, 0.0
        self.last_predictions = {}
        for eval_set in self.eval_sets:
            evaluation = predict_and_score(
                self.model,
                eval_set,
                self.settings,
                accelerator=self.accelerator,
                decode=self.decode_answers,
                metric=self.score_predictions,
                disable_tqdm=self.config.disable_tqdm,
            )
            result = evaluation.result
            self.last_predictions[eval_set.name] = evaluation.predictions
            metrics[f"{eval_set.name}/exact_match"] = result.exact_match
            metrics[f"{eval_set.name}/f1"] = result.f1
            metrics[f"{eval_set.name}/unanswered"] = result.unanswered
            if evaluation.loss is not None:
                metrics[f"{eval_set.name}/loss"] = evaluation.loss
            total_questions += result.total
            em_sum += result.exact_match * result.total
            f1_sum += result.f1 * result.total
        if total_questions:
            metrics["exact_match"] = em_sum / total_questions
            metrics["f1"] = f1_sum / total_questions
        metrics["step"] = self.state.global_step
        self.model.train(was_training)
        self._log({f"eval/{k}" if k != "step" else k: v for k, v in metrics.items()})
        if self.accelerator.is_main_process:
            summary = " | ".join(
                f"{s.name}: EM {metrics[f'{s.name}/exact_match']:.2f} F1 {metrics[f'{s.name}/f1']:.2f}"
                for s in self.eval_sets
            )
            tqdm.write(f"[eval step {self.state.global_step}] {summary}")
            for name, predictions in self.last_predictions.items():
                write_predictions(predictions, self.output_dir / "predictions" / name)
        return metrics

    def _select_best(self, metrics: dict[str, float]) -> bool:
        """Keep the best model by the configured metric; return True when early stopping triggers."""
        cfg, state = self.config, self.state
        key = cfg.metric_for_best_model
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={key!r} is not among the evaluation metrics: {sorted(metrics)}")
        value = metrics[key]
        if is_improvement(value, state.best_metric, cfg.greater_is_better):
            state.best_metric, state.best_step = value, state.global_step
            state.evals_without_improvement = 0
            self.save_best(metrics)
            return False
        state.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        if patience is not None and state.evals_without_improvement >= patience:
            logger.info(
                "early stopping: %s did not improve for %d evaluations (best %.4f at step %d)",
                key,
                patience,
                state.best_metric,
                state.best_step,
            )
            return True
        return False

    # ---- checkpoints ------------------------------------------------------------------------------
    def save_best(self, metrics: dict[str, float]) -> None:
        """The current model → output_dir/best, with its metrics and predictions."""
        self._save_model(self.best_dir, metrics, self.last_predictions)
        if self.accelerator.is_main_process:
            logger.info(
                "new best %s=%.4f at step %d → %s",
                self.config.metric_for_best_model,
                metrics[self.config.metric_for_best_model],
                self.state.global_step,
                self.best_dir,
            )

    def save_final(self) -> None:
        """The model at the end of training → output_dir/final, loadable like best/ (also when the run
        never evaluated, eval_strategy=no)."""
        last_metrics = self.run.last_metrics if self.run else {}
        evaluated_now = last_metrics.get("step") == self.state.global_step
        self._save_model(
            self.final_dir, last_metrics if evaluated_now else None, self.last_predictions if evaluated_now else {}
        )

    def _save_model(self, directory: Path, metrics: Optional[dict[str, float]], predictions: dict) -> None:
        """The save_pretrained layout that `QuestionAnswerer` and `evaluate.py` load, replaced atomically
        (`CheckpointWriteError` when it cannot be written, the previous one intact).

        Every process takes part in gathering the state dict: under FSDP or DeepSpeed ZeRO-3 each holds
        only a shard, and `get_state_dict` assembles the full weights; the main process writes them."""
        acc = self.accelerator
        self._raise_if_not_finite()
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)

        def write(tmp: Path) -> None:
            acc.unwrap_model(self.model).save_pretrained(
                tmp, tokenizer=self.tokenizer, kqa_config=self.settings.to_dict(), state_dict=state_dict
            )
            if metrics is not None:
                (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
            for name, set_predictions in predictions.items():
                write_predictions(set_predictions, tmp / "predictions" / name)

        replace_directory(acc, directory, write)
        acc.wait_for_everyone()

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
