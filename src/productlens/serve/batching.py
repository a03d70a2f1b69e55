"""Cross-request batching: images from concurrent callers in, one model call per batch, each caller's results out.

In: `await batcher.submit(images)` from many requests at once. Out: that caller's results, in order, with
how long they queued and ran. Used by `productlens serve`; `max_batch=1` switches batching off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741  (an item: an image, for the server)


@dataclass(frozen=True)
class Batched(Generic[T]):
    """One item's result and how it got there: seconds queued, seconds in the model call, the call's size."""

    result: T
    queued_seconds: float
    model_seconds: float
    batch_size: int


@dataclass
class _Job(Generic[I, T]):
    item: I
    future: asyncio.Future[Batched[T]]
    enqueued: float


class Batcher(Generic[I, T]):
    """Collects items from concurrent `submit` calls and runs `run_batch` on up to `max_batch` at a time.

    The worker takes the first waiting item, then gathers more until it holds `max_batch` items or
    `max_wait_ms` have passed, and runs `run_batch(items) -> results` in a worker thread, one call at a time
    (the model is not thread-safe). A failing batch is retried item by item, so one bad item fails alone.
    """

    def __init__(
        self, run_batch: Callable[[list[I]], Sequence[T]], max_batch: int, max_wait_ms: float
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batch_sizes: list[int] = []  # every model call's size, for tests and benchmarks
        self._queue: asyncio.Queue[_Job[I, T]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_model: list[_Job[I, T]] = []  # the batch the model is reading now

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker on the running event loop (call from inside it, e.g. in the app's lifespan)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="productlens-batcher")

    async def stop(self) -> None:
        """Stop the worker; callers still waiting get a RuntimeError."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        waiting = list(self._in_model)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down; send the request again"))

    async def submit(self, items: Sequence[I]) -> list[Batched[T]]:
        """Queue `items` and wait for their results (in order). Cancelling the wait drops the queued items."""
        if not self.running or self._queue is None:
            raise RuntimeError("the batcher is not running; call start() inside the event loop first")
        loop = asyncio.get_running_loop()
        jobs = [_Job(item, loop.create_future(), time.perf_counter()) for item in items]
        for job in jobs:
            self._queue.put_nowait(job)
        try:
            outcomes = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        finally:
            for job in jobs:  # on timeout or error: the worker skips jobs whose future is done
                job.future.cancel()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)

    async def _collect(self) -> list[_Job[I, T]]:
        """Wait for one job, then gather up to max_batch jobs within max_wait_s; skip abandoned ones."""
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]

    async def _work(self) -> None:
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            started = time.perf_counter()
            self._in_model = jobs
            outcomes = await asyncio.to_thread(self._run, [job.item for job in jobs])
            self._in_model = []
            model_seconds = time.perf_counter() - started
            self.batch_sizes.append(len(jobs))
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(Batched(outcome, started - job.enqueued, model_seconds, len(jobs)))

    def _run(self, items: list[I]) -> list[T | BaseException]:
        """Run one batch in the worker thread; on failure, run item by item so a bad item fails alone."""
        try:
            results = list(self.run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return results
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            return [outcome for item in items for outcome in self._run([item])]
