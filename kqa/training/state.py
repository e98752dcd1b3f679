"""What the loop keeps: `TrainingState` (saved with every checkpoint), `TrainResult`, and what one call of
`train()` tracks (`Run`: where it stops, the throughput window, the device-side finite check)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or gradient norm stops being finite (fp16 overflow, a bad batch, lr too high)."""


@dataclass
class TrainingState:
    """The loop counters a checkpoint keeps (as JSON, in its marker: kqa.training.checkpoints)."""

    global_step: int = 0
    epoch: int = 0
    batches_seen_in_epoch: int = 0  # micro-batches consumed in `epoch`, to resume mid-epoch
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def record_evaluation(self, value: float, greater_is_better: bool) -> bool:
        """Count an evaluation of the selection metric at this step; True when it is the best so far."""
        if is_improvement(value, self.best_metric, greater_is_better):
            self.best_metric, self.best_step, self.evals_without_improvement = value, self.global_step, 0
            return True
        self.evals_without_improvement += 1
        return False

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(set(state) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown training state field(s) {unknown}")
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    global_step: int
    best_metric: Optional[float]
    best_step: Optional[int]
    final_metrics: dict[str, float]
    stopped_early: bool
    interrupted: bool  # stopped by max_steps_this_run before the schedule ended


def is_improvement(value: float, best: Optional[float], greater_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better else value < best


class StepWindow:
    """What happened since the last logging step, kept on the device so that a step needs no sync."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.real_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.real_tokens.zero_()
        self.micro_batches = self.samples = self.padded_tokens = self.steps = 0
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of the window (evaluation, checkpoints)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - begun

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.loss_sum += loss.detach().float()
        self.real_tokens += batch["attention_mask"].sum()
        self.micro_batches += 1
        self.samples += batch["input_ids"].shape[0]  # shapes are host metadata: no sync
        self.padded_tokens += batch["input_ids"].numel()

    def reduce(self, accelerator) -> dict[str, float]:
        """Mean loss and throughput since the last reset, summed over processes (the host waits here)."""
        host_counts = torch.tensor([self.micro_batches, self.samples, self.padded_tokens], dtype=torch.float32)
        totals = torch.stack([self.loss_sum, self.real_tokens.float(), *host_counts.to(self.device)])
        loss_sum, real_tokens, micro_batches, samples, padded_tokens = accelerator.reduce(totals, "sum").tolist()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            "loss": loss_sum / max(micro_batches, 1),
            "samples_per_second": samples / elapsed,
            "tokens_per_second": real_tokens / elapsed,  # non-padding tokens
            "padded_tokens_per_second": padded_tokens / elapsed,
        }


@dataclass
class Run:
    """What one call of `train()` tracks, built at its start (`TrainingState` is what checkpoints keep)."""

    stop_at: int  # the optimizer step this call ends at
    window: StepWindow
    progress: Any  # the tqdm bar
    # The first step whose loss or gradient norm was not finite, -1 while all were: on the device, read
    # at logging steps, evaluations and checkpoints.
    first_bad_step: torch.Tensor
    device_step: torch.Tensor
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_grad_norm: Optional[torch.Tensor] = None
    stopped_early: bool = False

    @classmethod
    def start(cls, state: TrainingState, total_steps: int, max_steps: Optional[int], device, show_progress) -> Run:
        """A call of `train()` from `state`: at most `max_steps` more optimizer steps (all when None)."""
        from tqdm.auto import tqdm

        return cls(
            stop_at=min(total_steps, state.global_step + (max_steps or total_steps)),
            window=StepWindow(device),
            progress=tqdm(
                total=total_steps,
                initial=state.global_step,
                desc="train",
                disable=not show_progress,
                dynamic_ncols=True,
            ),
            first_bad_step=torch.full((), -1, dtype=torch.long, device=device),
            device_step=torch.full((), state.global_step, dtype=torch.long, device=device),
        )

    def done(self, state: TrainingState) -> bool:
        return state.global_step >= self.stop_at or self.stopped_early

    def track_finite(self, grad_norm, check_grad_norm: bool) -> None:
        """Record the first step with a non-finite loss or gradient norm, on the device (no sync)."""
        self.device_step += 1
        bad = ~torch.isfinite(self.window.loss_sum)
        if grad_norm is not None and check_grad_norm:
            bad |= ~torch.isfinite(torch.as_tensor(grad_norm, device=bad.device))
        self.first_bad_step = torch.where((self.first_bad_step < 0) & bad, self.device_step, self.first_bad_step)

    def raise_if_not_finite(self, accelerator, checkpoint_root) -> None:
        """`NonFiniteLossError` naming the first bad step of any process (the host waits here)."""
        bad_steps = [s for s in accelerator.gather(self.first_bad_step.reshape(1)).tolist() if s >= 0]
        if bad_steps:
            raise NonFiniteLossError(
                f"non-finite loss or gradient norm at optimizer step {min(bad_steps)}; lower the learning "
                f"rate, use bf16 instead of fp16, or check the data. The last good checkpoint is in "
                f"{checkpoint_root}"
            )
