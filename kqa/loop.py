"""The training and evaluation loop, driven by Hugging Face Accelerate (no `transformers.Trainer`).

`QATrainingRecipe` reads top to bottom: `setup()` builds every stage (data → features → dataloaders →
model → optimizer), `train()` runs the optimisation loop with evaluation and checkpointing, and
`evaluate()` / `save_checkpoint()` / `save_best()` are plain methods a research script can call on
its own. The same code runs on CPU, one GPU or many through `accelerate launch`.

The pieces that are useful outside the recipe are module-level functions: `build_optimizer`,
`build_scheduler`, `predict_logits`, `evaluate_predictions_for_set`, `find_latest_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from tqdm.auto import tqdm

from kqa.config import TrainConfig
from kqa.data import load_hf_dataset, load_squad_json
from kqa.dataloaders import QACollator, make_eval_dataloader, make_train_dataloader
from kqa.features import FeatureConfig, prepare_eval_features, prepare_train_features
from kqa.metric import evaluate_predictions
from kqa.modeling import QuestionAnsweringModel
from kqa.postprocess import PostprocessConfig, postprocess_predictions, write_predictions

logger = logging.getLogger("kqa.loop")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_MARKER = "kqa_trainer_state.json"  # written last: a checkpoint without it is incomplete
LOGIT_PAD_VALUE = -1e4  # padding for logits past a feature's length (never chosen by the post-processor)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or gradient norm stops being finite (fp16 overflow, a bad batch, lr too high)."""


# --------------------------------------------------------------------------------------------------
# State that travels with every checkpoint
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainerState:
    """Loop counters saved with `accelerator.save_state` (registered for checkpointing)."""

    global_step: int = 0
    epoch: int = 0
    batches_seen_in_epoch: int = 0  # micro-batches consumed in `epoch`, to resume mid-epoch
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    log_history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class EvalSet:
    """One validation set: its examples, eval features (with labels for the eval loss) and loader."""

    name: str
    examples: Any
    features: Any
    dataloader: Any = None


@dataclass
class TrainResult:
    global_step: int
    best_metric: Optional[float]
    best_step: Optional[int]
    final_metrics: dict[str, float]
    stopped_early: bool
    interrupted: bool  # stopped by max_steps_this_run before the schedule ended


# --------------------------------------------------------------------------------------------------
# Stage helpers
# --------------------------------------------------------------------------------------------------

def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "layernorm" in name.lower() or "layer_norm" in name.lower() or ".ln" in name.lower()
        (no_decay if name.endswith(".bias") or is_norm else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if config.optim == "adamw_torch_fused":
        # One fused kernel instead of a chain of for-each ops: on 2 CPU cores the optimizer step of a
        # 7M-parameter model drops from ~30 ms to ~10 ms (docs/benchmarks.md, training throughput).
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as err:  # older torch: no fused AdamW on this device
            logger.warning("fused AdamW is not available here (%s); using the for-each AdamW", err)
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, num_training_steps: int):
    """Linear warmup, then linear / cosine decay to 0 (or constant)."""
    warmup = config.warmup_steps if config.warmup_steps > 0 else math.ceil(config.warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # never exactly 0: the first step already learns a little
        if config.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - warmup) / max(1, num_training_steps - warmup)
        progress = min(progress, 1.0)
        if config.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _pad_logits(logits: torch.Tensor, length: int) -> torch.Tensor:
    if logits.shape[1] == length:
        return logits
    return torch.nn.functional.pad(logits, (0, length - logits.shape[1]), value=LOGIT_PAD_VALUE)


@torch.no_grad()
def predict_logits(model, dataloader, accelerator: Accelerator, seq_length: int, *, desc: str = "eval",
                   disable_tqdm: bool = False) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """Run `model` over an eval loader; return start/end logits `[num_features, seq_length]` (float32,
    in dataset order, gathered over processes without duplicates) and the mean loss when the batches
    carry labels."""
    model.eval()
    starts, ends, losses = [], [], []
    for batch in tqdm(dataloader, desc=desc, disable=disable_tqdm or not accelerator.is_local_main_process,
                      leave=False):
        out = model(**batch)
        # Every process pads to the same width so gather can concatenate; padded positions are masked
        # out by the post-processor through the features' offsets.
        start = _pad_logits(out.start_logits.float(), seq_length)
        end = _pad_logits(out.end_logits.float(), seq_length)
        start, end = accelerator.gather_for_metrics((start, end))
        starts.append(start.cpu().numpy())
        ends.append(end.cpu().numpy())
        if out.loss is not None:
            batch_size = batch["input_ids"].shape[0]
            losses.append(accelerator.gather_for_metrics(out.loss.detach().float().repeat(batch_size)).cpu())
    mean_loss = float(torch.cat(losses).mean()) if losses else None
    return np.concatenate(starts), np.concatenate(ends), mean_loss


def evaluate_predictions_for_set(eval_set: EvalSet, start_logits: np.ndarray, end_logits: np.ndarray,
                                 post_config: PostprocessConfig, *, postprocess=postprocess_predictions,
                                 metric=evaluate_predictions):
    """Post-process logits into answers and score them (by default the n-best post-processor and the
    official KorQuAD metric; `postprocess` / `metric` take the same arguments as those)."""
    if len(start_logits) != len(eval_set.features):
        raise RuntimeError(
            f"{eval_set.name}: got logits for {len(start_logits)} features, expected {len(eval_set.features)}"
        )
    predictions = postprocess(eval_set.examples, eval_set.features, start_logits, end_logits, post_config)
    result = metric(eval_set.examples, {k: p.text for k, p in predictions.items()})
    return predictions, result


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints (their state marker exists), oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = []
    for path in checkpoint_root.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / STATE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(checkpoint_root: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(checkpoint_root)
    return checkpoints[-1] if checkpoints else None


def _is_improvement(value: float, best: Optional[float], greater_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better else value < best


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------

class QATrainingRecipe:
    """Fine-tune a span-extraction QA model: setup → train (evaluate, checkpoint) → best model.

    The stages are class attributes: a subclass swaps one by overriding it with anything of the same
    signature (see docs/architecture.md, "Swapping a stage").
    """

    model_class = QuestionAnsweringModel  # from_backbone(name, trust_remote_code=) / from_pretrained(dir)
    build_train_features = staticmethod(prepare_train_features)  # (examples, tokenizer, FeatureConfig, num_proc=)
    build_eval_features = staticmethod(prepare_eval_features)
    collator_class = QACollator  # from_tokenizer(tokenizer, pad_to_multiple_of=)
    postprocess = staticmethod(postprocess_predictions)  # (examples, features, start, end, PostprocessConfig)
    metric = staticmethod(evaluate_predictions)  # (examples, {id: text}) -> EvalResult

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.best_dir = self.output_dir / "best"
        self.state = TrainerState()
        self.post_config = PostprocessConfig(
            n_best_size=config.n_best_size,
            max_answer_length=config.max_answer_length,
            version_2_with_negative=config.version_2_with_negative,
            null_score_diff_threshold=config.null_score_diff_threshold,
        )
        self.feature_config = FeatureConfig(
            max_seq_length=config.max_seq_length,
            doc_stride=config.doc_stride,
            max_query_length=config.max_query_length,
        )

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self) -> "QATrainingRecipe":
        self._setup_accelerator()
        self._setup_model_and_tokenizer()
        self._setup_data()
        self._setup_optimization()
        self._prepare()
        self._maybe_resume()
        return self

    def _setup_accelerator(self) -> None:
        cfg = self.config
        log_with = None if cfg.report_to == "none" else cfg.report_to
        if log_with in ("wandb", "all") and not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            # Never require a login to train: without credentials, log locally (sync later with `wandb sync`).
            os.environ["WANDB_MODE"] = "offline"
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=True
            ),
            log_with=log_with,
            project_dir=str(self.output_dir),
        )
        set_seed(cfg.seed)
        # Logging is the application's to configure (train.py does); only silence other processes.
        if not self.accelerator.is_local_main_process:
            logging.getLogger("kqa").setLevel(logging.WARNING)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output_dir / "train_config.yaml")
        self.accelerator.wait_for_everyone()

    def _setup_model_and_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.config
        tokenizer_source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=cfg.trust_remote_code)
        if (Path(cfg.model_name_or_path) / "kqa_config.json").is_file():
            self.model = self.model_class.from_pretrained(cfg.model_name_or_path)  # continue a kqa model
        else:
            self.model = self.model_class.from_backbone(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        logger.info("model %s: %.1fM parameters", cfg.model_name_or_path, self.model.num_parameters() / 1e6)

    def _load_train_examples(self):
        import datasets

        cfg = self.config
        if cfg.train_files:
            parts = []
            for path in cfg.train_files:
                examples, report = load_squad_json(cfg.resolve_data_path(path))
                parts.append(examples)
            examples = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        else:
            examples, report = load_hf_dataset(cfg.dataset_name, cfg.train_split, config_name=cfg.dataset_config_name)
        if cfg.max_train_samples is not None:
            examples = examples.select(range(min(cfg.max_train_samples, len(examples))))
        return examples

    def _load_validation_examples(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.validation_files:
            sets = {name: load_squad_json(path)[0] for name, path in cfg.named_validation_files().items()}
        elif cfg.dataset_name:
            sets = {"validation": load_hf_dataset(cfg.dataset_name, cfg.validation_split,
                                                  config_name=cfg.dataset_config_name)[0]}
        else:
            sets = {}
        if cfg.max_eval_samples is not None:
            sets = {k: v.select(range(min(cfg.max_eval_samples, len(v)))) for k, v in sets.items()}
        return sets

    def _setup_data(self) -> None:
        cfg = self.config
        with self.accelerator.main_process_first():  # the main process fills the datasets cache first
            train_examples = self._load_train_examples()
            self.train_features, self.train_feature_report = self.build_train_features(
                train_examples, self.tokenizer, self.feature_config, num_proc=cfg.preprocessing_num_workers
            )
            self.eval_sets: list[EvalSet] = []
            if cfg.eval_strategy != "no":
                for name, examples in self._load_validation_examples().items():
                    self.eval_sets.append(self._build_eval_set(name, examples))
        if cfg.eval_strategy != "no" and not self.eval_sets:
            raise ValueError("eval_strategy is not 'no' but no validation data was given")

        pad_multiple = 8 if resolve_mixed_precision(cfg.mixed_precision) != "no" else None
        self.collator = self.collator_class.from_tokenizer(self.tokenizer, pad_to_multiple_of=pad_multiple)
        self.train_dataloader = make_train_dataloader(
            self.train_features, self.collator, cfg.per_device_train_batch_size, seed=cfg.seed,
            group_by_length=cfg.group_by_length, num_workers=cfg.dataloader_num_workers,
        )
        for eval_set in self.eval_sets:
            eval_set.dataloader = make_eval_dataloader(
                eval_set.features, self.collator, cfg.per_device_eval_batch_size, num_workers=cfg.dataloader_num_workers
            )

    def _build_eval_set(self, name: str, examples) -> EvalSet:
        features, report = self.build_eval_features(examples, self.tokenizer, self.feature_config,
                                                 num_proc=self.config.preprocessing_num_workers)
        # Labels for the evaluation loss: the train-style features of the same examples are the same
        # windows in the same order, so their labels can be attached column-wise.
        labelled, _ = self.build_train_features(examples, self.tokenizer, self.feature_config,
                                             num_proc=self.config.preprocessing_num_workers)
        if labelled["example_id"] != features["example_id"]:
            raise RuntimeError(f"{name}: train- and eval-style features disagree; cannot attach labels")
        features = features.add_column("start_positions", labelled["start_positions"])
        features = features.add_column("end_positions", labelled["end_positions"])
        return EvalSet(name=name, examples=examples, features=features)

    def _setup_optimization(self) -> None:
        cfg = self.config
        self.optimizer = build_optimizer(self.model, cfg)
        # Optimizer steps per epoch as each process will see them after sharding.
        batches_per_epoch = math.ceil(len(self.train_dataloader) / self.accelerator.num_processes)
        self.steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
        if cfg.max_train_steps is not None:
            self.total_steps = cfg.max_train_steps
        else:
            self.total_steps = math.ceil(cfg.num_train_epochs * self.steps_per_epoch)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # A prepared scheduler steps once per process per optimizer step, so it counts in those units.
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps * self.accelerator.num_processes)

    def _prepare(self) -> None:
        acc = self.accelerator
        eval_loaders = [s.dataloader for s in self.eval_sets]
        prepared = acc.prepare(self.model, self.optimizer, self.train_dataloader, self.scheduler, *eval_loaders)
        self.model, self.optimizer, self.train_dataloader, self.scheduler = prepared[:4]
        for eval_set, loader in zip(self.eval_sets, prepared[4:]):
            eval_set.dataloader = loader
        acc.register_for_checkpointing(self.state)
        if self.config.report_to != "none":
            acc.init_trackers(
                self.config.project_name,
                config={k: v for k, v in self.config.to_dict().items() if isinstance(v, (int, float, str, bool))},
                init_kwargs={"wandb": {"name": self.config.run_name, "dir": str(self.output_dir)}},
            )

    def _maybe_resume(self) -> None:
        source = self.config.resume_from_checkpoint
        if not source:
            return
        if source == "latest":
            path = find_latest_checkpoint(self.checkpoint_root)
            if path is None:
                logger.warning("resume_from_checkpoint=latest: no complete checkpoint in %s; starting fresh",
                               self.checkpoint_root)
                return
        else:
            path = Path(source)
            if not (path / STATE_MARKER).is_file():
                raise FileNotFoundError(f"{path}: not a complete kqa checkpoint (missing {STATE_MARKER})")
        self.accelerator.load_state(str(path))
        logger.info("resumed from %s at step %d (epoch %d, %d batches into it)", path, self.state.global_step,
                    self.state.epoch, self.state.batches_seen_in_epoch)

    # ---- training ---------------------------------------------------------------------------------
    def train(self, max_steps_this_run: Optional[int] = None) -> TrainResult:
        """Run the schedule to its end (or `max_steps_this_run` more optimizer steps, for time-sliced jobs)."""
        cfg, acc, state = self.config, self.accelerator, self.state
        stop_at = self.total_steps if max_steps_this_run is None else min(self.total_steps,
                                                                           state.global_step + max_steps_this_run)
        progress = tqdm(total=self.total_steps, initial=state.global_step, desc="train",
                        disable=cfg.disable_tqdm or not acc.is_local_main_process, dynamic_ncols=True)
        samples_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        running_loss, running_count = torch.zeros((), device=acc.device), 0
        window_start, window_steps = time.perf_counter(), 0
        stopped_early = False
        last_metrics: dict[str, float] = {}
        if cfg.eval_before_training and state.global_step == 0 and self.eval_sets:
            self.evaluate()  # a baseline only: the untrained head never becomes the best model

        while state.global_step < stop_at and state.epoch < self.num_epochs and not stopped_early:
            self.model.train()
            self.train_dataloader.set_epoch(state.epoch)
            loader = self.train_dataloader
            if state.batches_seen_in_epoch:  # resuming mid-epoch: same order, skip what was done
                loader = acc.skip_first_batches(self.train_dataloader, state.batches_seen_in_epoch)
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self.model(**batch).loss
                    acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                state.batches_seen_in_epoch += 1
                running_loss += loss.detach().float()
                running_count += 1
                if not acc.sync_gradients:
                    continue

                state.global_step += 1
                window_steps += 1
                progress.update(1)
                self._check_finite(running_loss / running_count, grad_norm)

                if state.global_step % cfg.logging_steps == 0 or state.global_step == stop_at:
                    elapsed = time.perf_counter() - window_start
                    logs = {
                        "loss": float(acc.reduce(running_loss / running_count, "mean")),
                        "learning_rate": self.scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                        "samples_per_second": window_steps * samples_per_step / max(elapsed, 1e-9),
                        "epoch": state.epoch + state.batches_seen_in_epoch / max(1, len(self.train_dataloader)),
                    }
                    self._log(logs)
                    progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['learning_rate']:.2e}",
                                         sps=f"{logs['samples_per_second']:.1f}")
                    running_loss.zero_()
                    running_count, window_start, window_steps = 0, time.perf_counter(), 0

                if cfg.eval_strategy == "steps" and state.global_step % cfg.eval_steps == 0:
                    last_metrics = self.evaluate()
                    stopped_early = self._update_best(last_metrics)
                    self.model.train()
                if cfg.save_strategy == "steps" and state.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if state.global_step >= stop_at or stopped_early:
                    break
            else:  # the epoch ran to its end
                state.epoch += 1
                state.batches_seen_in_epoch = 0
                if cfg.eval_strategy == "epoch":
                    last_metrics = self.evaluate()
                    stopped_early = self._update_best(last_metrics)
                if cfg.save_strategy == "epoch":
                    self.save_checkpoint()
                continue
            break

        # A schedule that ends mid-epoch (max_train_steps) still gets its final evaluation.
        finished = state.global_step >= self.total_steps or stopped_early
        if finished and cfg.eval_strategy != "no" and (not last_metrics or last_metrics.get("step") != state.global_step):
            last_metrics = self.evaluate()
            stopped_early = self._update_best(last_metrics) or stopped_early
        if not finished and cfg.save_strategy != "no":
            self.save_checkpoint()  # a time-sliced run always leaves a checkpoint to resume from
        progress.close()
        if finished:
            acc.end_training()
        return TrainResult(
            global_step=state.global_step, best_metric=state.best_metric, best_step=state.best_step,
            final_metrics=last_metrics, stopped_early=stopped_early, interrupted=not finished,
        )

    def _check_finite(self, mean_loss: torch.Tensor, grad_norm) -> None:
        acc = self.accelerator
        bad_loss = acc.reduce((~torch.isfinite(mean_loss)).float().reshape(1), "sum").item() > 0
        bad_grad = grad_norm is not None and not math.isfinite(float(grad_norm))
        if bad_grad and acc.mixed_precision == "fp16":
            bad_grad = False  # fp16 overflow: the grad scaler skips this step and lowers its scale
        if bad_loss or bad_grad:
            what = "loss" if bad_loss else "gradient norm"
            raise NonFiniteLossError(
                f"non-finite {what} at optimizer step {self.state.global_step} (epoch {self.state.epoch}, "
                f"batch {self.state.batches_seen_in_epoch}); lower the learning rate, use bf16 instead of "
                f"fp16, or check the data. The last good checkpoint is in {self.checkpoint_root}"
            )

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Evaluate on every validation set; returns `<set>/exact_match`, `<set>/f1`, `<set>/loss`
        and question-weighted overall `exact_match` / `f1`."""
        acc = self.accelerator
        metrics: dict[str, float] = {}
        total_questions, em_sum, f1_sum = 0, 0.0, 0.0
        self.last_predictions = {}
        for eval_set in self.eval_sets:
            start, end, loss = predict_logits(self.model, eval_set.dataloader, acc, self.config.max_seq_length,
                                              desc=f"eval {eval_set.name}", disable_tqdm=self.config.disable_tqdm)
            predictions, result = evaluate_predictions_for_set(eval_set, start, end, self.post_config,
                                                               postprocess=self.postprocess, metric=self.metric)
            self.last_predictions[eval_set.name] = predictions
            metrics[f"{eval_set.name}/exact_match"] = result.exact_match
            metrics[f"{eval_set.name}/f1"] = result.f1
            metrics[f"{eval_set.name}/unanswered"] = result.unanswered
            if loss is not None:
                metrics[f"{eval_set.name}/loss"] = loss
            total_questions += result.total
            em_sum += result.exact_match * result.total
            f1_sum += result.f1 * result.total
        if total_questions:
            metrics["exact_match"] = em_sum / total_questions
            metrics["f1"] = f1_sum / total_questions
        metrics["step"] = self.state.global_step
        self._log({f"eval/{k}" if k != "step" else k: v for k, v in metrics.items()})
        if acc.is_main_process:
            summary = " | ".join(
                f"{s.name}: EM {metrics[f'{s.name}/exact_match']:.2f} F1 {metrics[f'{s.name}/f1']:.2f}"
                for s in self.eval_sets
            )
            tqdm.write(f"[eval step {self.state.global_step}] {summary}")
            for name, predictions in self.last_predictions.items():
                write_predictions(predictions, self.output_dir / "predictions" / name)
        return metrics

    def _update_best(self, metrics: dict[str, float]) -> bool:
        """Keep the best model by the configured metric; return True when early stopping triggers."""
        cfg, state = self.config, self.state
        key = cfg.metric_for_best_model
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={key!r} is not among the evaluation metrics: {sorted(metrics)}")
        value = metrics[key]
        if _is_improvement(value, state.best_metric, cfg.greater_is_better):
            state.best_metric, state.best_step = value, state.global_step
            state.evals_without_improvement = 0
            self.save_best(metrics)
            return False
        state.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        if patience is not None and state.evals_without_improvement >= patience:
            logger.info("early stopping: %s did not improve for %d evaluations (best %.4f at step %d)",
                        key, patience, state.best_metric, state.best_step)
            return True
        return False

    # ---- checkpoints ------------------------------------------------------------------------------
    def kqa_config(self) -> dict[str, Any]:
        """What a saved model needs to predict like it was evaluated."""
        cfg = self.config
        return {
            "max_seq_length": cfg.max_seq_length,
            "doc_stride": cfg.doc_stride,
            "max_query_length": cfg.max_query_length,
            "max_answer_length": cfg.max_answer_length,
            "n_best_size": cfg.n_best_size,
            "version_2_with_negative": cfg.version_2_with_negative,
            "null_score_diff_threshold": cfg.null_score_diff_threshold,
        }

    def save_best(self, metrics: dict[str, float]) -> None:
        """Write the current model to output_dir/best (save_pretrained layout), replacing it atomically."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = self.output_dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            acc.unwrap_model(self.model).save_pretrained(tmp, tokenizer=self.tokenizer, kqa_config=self.kqa_config())
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
            for name, predictions in getattr(self, "last_predictions", {}).items():
                write_predictions(predictions, tmp / "predictions" / name)
            old = self.output_dir / ".best.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.best_dir.exists():
                self.best_dir.rename(old)
            tmp.rename(self.best_dir)
            shutil.rmtree(old, ignore_errors=True)
            logger.info("new best %s=%.4f at step %d → %s", self.config.metric_for_best_model,
                        metrics[self.config.metric_for_best_model], self.state.global_step, self.best_dir)
        acc.wait_for_everyone()

    def save_checkpoint(self) -> Path:
        """`accelerator.save_state` into a temporary directory, then rename: a crash mid-write never
        leaves a directory that `latest` would pick."""
        acc = self.accelerator
        final = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        tmp = self.checkpoint_root / f".tmp-{CHECKPOINT_PREFIX}{self.state.global_step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_MARKER).write_text(json.dumps(self.state.state_dict(), indent=2), encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._rotate_checkpoints()
        acc.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        for old in list_checkpoints(self.checkpoint_root)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- logging ----------------------------------------------------------------------------------
    def _log(self, values: dict[str, Any]) -> None:
        acc = self.accelerator
        record = {"step": self.state.global_step, **values}
        self.state.log_history.append(record)
        if self.config.report_to != "none":
            acc.log({k: v for k, v in values.items() if k != "step"}, step=self.state.global_step)
        if acc.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
