"""Micro-batching for the server: questions from concurrent requests gathered into one model call."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from kqa.serving.schemas import ApiError, QuestionIn, _answer_dict
from kqa.serving.settings import BatchingSettings

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    question: str
    context: str
    top_k: int
    handle_impossible_answer: Optional[bool]
    null_score_diff_threshold: Optional[float]
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    requests: int = 0
    questions: int = 0
    batches: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    errors: int = 0


class MicroBatcher:
    """Gathers questions from concurrent requests into `predict_rows` calls on one worker thread."""

    def __init__(self, qa, settings: BatchingSettings):
        self.qa = qa
        self.settings = settings
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kqa-model")
        self.in_flight = 0  # questions inside the running model call

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="kqa-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def answer(self, questions: list[QuestionIn]) -> list[list[dict]]:
        """Queue the questions of one request and wait for their answers (in order)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        if self.waiting + len(questions) > self.settings.max_queue:
            raise ApiError(
                503,
                "overloaded",
                f"{self.waiting} questions are waiting (limit {self.settings.max_queue}); try again shortly",
            )
        loop = asyncio.get_running_loop()
        items = [
            _Item(
                q.question,
                q.context,
                q.top_k,
                q.handle_impossible_answer,
                q.null_score_diff_threshold,
                loop.create_future(),
            )
            for q in questions
        ]
        self.stats.requests += 1
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.settings.max_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait_s
            while len(batch) < self.settings.batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as err:  # noqa: BLE001 - reported to each waiting request
                outcomes = [err] * len(batch)
            finally:
                self.in_flight = 0
            self.stats.batches += 1
            self.stats.questions += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for item, outcome in zip(batch, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _group_key(self, item: _Item) -> tuple:
        """Questions that may share a predict_rows call: same null-answer settings, and the same n-best
        size (a top_k above the model's n_best_size raises it for the call)."""
        n_best = self.qa.settings.postprocess.n_best_size
        return (
            item.top_k if item.top_k > n_best else None,
            item.handle_impossible_answer,
            item.null_score_diff_threshold,
        )

    def _run_batch(self, batch: list[_Item]) -> list[Any]:
        """On the worker thread: answers (lists of dicts) or exceptions, one per item."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(self._group_key(item), []).append(i)
        outcomes: list[Any] = [None] * len(batch)
        for indexes in groups.values():
            try:
                self._predict(batch, indexes, outcomes)
            except Exception:  # noqa: BLE001
                if len(indexes) == 1:
                    raise
                # One question broke the call: answer each alone so that only it gets the error.
                for i in indexes:
                    try:
                        self._predict(batch, [i], outcomes)
                    except Exception as err:  # noqa: BLE001
                        outcomes[i] = err
        return outcomes

    def _predict(self, batch: list[_Item], indexes: list[int], outcomes: list[Any]) -> None:
        first = batch[indexes[0]]
        rows = [{"id": str(i), "question": batch[i].question, "context": batch[i].context} for i in indexes]
        predictions = self.qa.predict_rows(
            rows,
            top_k=max(batch[i].top_k for i in indexes),
            handle_impossible_answer=first.handle_impossible_answer,
            null_score_diff_threshold=first.null_score_diff_threshold,
        )
        self.stats.model_calls += 1
        for i in indexes:
            answers = self.qa.answers_of(predictions[str(i)], batch[i].top_k, getattr(self.qa, "calibrator", None))
            answers = [answers] if batch[i].top_k == 1 else answers
            outcomes[i] = [_answer_dict(a) for a in answers]
