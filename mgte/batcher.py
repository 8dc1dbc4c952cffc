"""Batching by token budget across every connection, on one model thread.

Each request becomes a job of tokenised sequences. The model thread takes a round of
queued sequences (oldest first, one model at a time, a few batch budgets' worth), sorts
it by length, cuts it into batches of at most `max_batch_tokens` tokens (counted with their
padding for models that run padded batches), and runs them. A short query that arrives
during a long round waits at most for that round; the queue is bounded, and a job that does
not fit is refused at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from mgte.runtime import Model
from mgte_udf.errors import ModelFailed, Overloaded, ShuttingDown

log = logging.getLogger("mgte.batcher")

# A round holds this many batch budgets: enough to sort a large request usefully,
# small enough that a query arriving meanwhile does not wait long.
ROUND_BUDGETS = 4
# Padding is wasted work: in a padded model's batches, sequences shorter than this share of the
# batch's widest start a new batch. On a 2-core CPU (full-size model, 48 passages of 25-400
# tokens) this took the padding overhead from 13% to 4% and throughput from 877 to 1002 tokens/s.
MIN_FILL = 0.9


@dataclass
class Job:
    model: Model
    sequences: list[list[int]]
    future: Future[list[Any]] = field(default_factory=Future)
    results: list[Any] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.sequences)
        self.remaining = len(self.sequences)


@dataclass
class _Item:
    job: Job
    index: int

    @property
    def length(self) -> int:
        return len(self.job.sequences[self.index])


@dataclass
class Counters:
    jobs: int = 0
    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    largest_batch: int = 0
    multi_request_batches: int = 0
    rejected_overloaded: int = 0
    failed_batches: int = 0
    busy_seconds: float = 0.0


class Batcher:
    def __init__(self, max_batch_tokens: int, max_queued: int) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_queued = max_queued
        self.counters = Counters()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mgte-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finishes every queued job, then ends the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, model: Model, sequences: Sequence[list[int]]) -> Future[list[Any]]:
        job = Job(model, list(sequences))
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the mgte server is shutting down", hint="retry when it is back")
            if len(self._queue) + len(sequences) > self.max_queued:
                self.counters.rejected_overloaded += 1
                raise Overloaded(
                    f"mgte server overloaded: {len(self._queue)} texts queued, the limit is {self.max_queued}",
                    hint="retry later, send fewer texts per call, or raise the server's --max-queue-texts")
            self._queue.extend(_Item(job, i) for i in range(len(sequences)))
            self.counters.jobs += 1
            self._cond.notify()
        return job.future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                round_ = self._take_round()
            for batch in self._cut(round_):
                self._run_batch(batch)

    def _take_round(self) -> list[_Item]:
        """Oldest queued items of the oldest item's model, up to ROUND_BUDGETS budgets of tokens."""
        model = self._queue[0].job.model
        taken: list[_Item] = []
        left: deque[_Item] = deque()
        tokens = 0
        while self._queue:
            item = self._queue.popleft()
            if item.job.model is model and tokens < ROUND_BUDGETS * self.max_batch_tokens:
                taken.append(item)
                tokens += item.length
            else:
                left.append(item)
        self._queue = left
        return taken

    def _cut(self, round_: list[_Item]) -> list[list[_Item]]:
        """Longest first. A padded model's batch takes a sequence only if the padded batch stays within
        the budget and the sequence is at least MIN_FILL as long as the batch's widest; an unpadded
        model's batch takes sequences while their tokens fit the budget (neighbours in length still
        share a batch, which keeps its attention and any CUDA-graph bucket tight)."""
        round_.sort(key=lambda item: item.length, reverse=True)
        unpadded = round_[0].job.model.unpadded  # a round holds one model's sequences
        batches: list[list[_Item]] = []
        tokens = 0
        for item in round_:
            if batches and (tokens + item.length <= self.max_batch_tokens if unpadded else
                            (len(batches[-1]) + 1) * batches[-1][0].length <= self.max_batch_tokens
                            and item.length >= MIN_FILL * batches[-1][0].length):
                batches[-1].append(item)
                tokens += item.length
            else:
                batches.append([item])
                tokens = item.length
        return batches

    def _run_batch(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.job.future.done()]  # failed or cancelled jobs
        if not batch:
            return
        model = batch[0].job.model
        started = time.perf_counter()
        try:
            outputs = model.forward([item.job.sequences[item.index] for item in batch])
        except Exception as exc:  # the model thread must survive whatever one batch does
            log.exception("batch of %d sequences failed", len(batch))
            self.counters.failed_batches += 1
            error = _model_failed(exc)
            for item in batch:
                if not item.job.future.done():
                    item.job.future.set_exception(error)
            return
        busy = time.perf_counter() - started
        lengths = [item.length for item in batch]
        c = self.counters
        c.batches += 1
        c.sequences += len(batch)
        c.tokens += sum(lengths)
        c.padded_tokens += model.computed_tokens(lengths)
        c.largest_batch = max(c.largest_batch, len(batch))
        c.multi_request_batches += len({id(item.job) for item in batch}) > 1
        c.busy_seconds += busy
        for item, output in zip(batch, outputs, strict=True):
            job = item.job
            job.results[item.index] = output
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.results)


def _model_failed(exc: Exception) -> ModelFailed:
    """A server fault, never the input's: the same texts may well pass in another batch."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ModelFailed(f"the model ran out of device memory on this request: {exc}",
                           hint="retry later; lower the server's --max-batch-tokens if it happens often; "
                                "other requests are unaffected")
    return ModelFailed(f"the model failed on this request: {type(exc).__name__}: {exc}",
                       hint="the server log has the traceback; other requests are unaffected")
