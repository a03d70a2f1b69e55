"""The cross-request batcher: concurrent submits share model calls, up to max_batch, within max_wait_ms;
a failing item fails alone; abandoned items are skipped; stopping fails the waiters."""

import asyncio
import threading
import time

import pytest

from productlens.serve.batching import Batcher


class Recorder:
    """A batch function that doubles numbers, records each call, and fails on negative numbers."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.seconds = seconds
        self.threads: set[str] = set()
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.calls.append(list(items))
            self.threads.add(threading.current_thread().name)
            time.sleep(self.seconds)
            if any(i < 0 for i in items):
                raise ValueError(f"negative item in {items}")
            return [2 * i for i in items]
        finally:
            with self.lock:
                self.active -= 1


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submits_share_calls_up_to_max_batch():
    fn = Recorder(seconds=0.02)

    async def main():
        batcher = Batcher(fn, max_batch=4, max_wait_ms=200)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        await batcher.stop()
        return batcher, results

    batcher, results = run(main())
    assert [[b.result for b in r] for r in results] == [[2 * i] for i in range(10)]
    assert sorted(i for call in fn.calls for i in call) == list(range(10))
    assert max(len(call) for call in fn.calls) == 4  # 10 waiting items: full batches of 4
    assert len(fn.calls) == 3 and batcher.batch_sizes == [4, 4, 2]
    assert fn.most_active == 1  # one model call at a time
    assert threading.main_thread().name not in fn.threads  # the model runs off the event loop


def test_results_keep_request_order_and_report_batch_size():
    fn = Recorder()

    async def main():
        batcher = Batcher(fn, max_batch=8, max_wait_ms=50)
        batcher.start()
        a, b = await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([10, 20]))
        await batcher.stop()
        return a, b

    a, b = run(main())
    assert [x.result for x in a] == [2, 4, 6] and [x.result for x in b] == [20, 40]
    assert {x.batch_size for x in a + b} == {5}
    assert all(x.queued_seconds >= 0 and x.model_seconds >= 0 for x in a + b)


def test_max_batch_one_runs_items_alone():
    fn = Recorder()

    async def main():
        batcher = Batcher(fn, max_batch=1, max_wait_ms=50)
        batcher.start()
        await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(3)))
        await batcher.stop()

    run(main())
    assert len(fn.calls) == 6 and all(len(call) == 1 for call in fn.calls)


def test_a_lone_item_waits_at_most_max_wait():
    fn = Recorder()

    async def main():
        batcher = Batcher(fn, max_batch=8, max_wait_ms=30)
        batcher.start()
        started = time.perf_counter()
        [one] = await batcher.submit([5])
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return one, elapsed

    one, elapsed = run(main())
    assert one.result == 10 and one.batch_size == 1
    assert 0.025 <= one.queued_seconds < 1.0 and elapsed < 1.0


def test_a_failing_item_fails_alone():
    fn = Recorder()

    async def main():
        batcher = Batcher(fn, max_batch=8, max_wait_ms=50)
        batcher.start()
        outcomes = await asyncio.gather(
            batcher.submit([1]), batcher.submit([-1]), batcher.submit([3]), return_exceptions=True
        )
        await batcher.stop()
        return outcomes

    good1, bad, good3 = run(main())
    assert good1[0].result == 2 and good3[0].result == 6
    assert isinstance(bad, ValueError) and "negative" in str(bad)
    assert fn.calls[0] == [1, -1, 3]  # tried together first, then one by one
    assert sorted(map(tuple, fn.calls[1:])) == [(-1,), (1,), (3,)]


def test_abandoned_items_are_not_run():
    fn = Recorder(seconds=0.1)

    async def main():
        batcher = Batcher(fn, max_batch=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1]))  # occupies the model for 0.1 s
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit([2]), 0.01)  # given up while queued
        assert (await first)[0].result == 2
        await batcher.submit([3])
        await batcher.stop()

    run(main())
    assert fn.calls == [[1], [3]]


def test_stop_fails_waiters_and_submit_needs_start():
    fn = Recorder(seconds=0.2)

    async def main():
        batcher = Batcher(fn, max_batch=1, max_wait_ms=0)
        with pytest.raises(RuntimeError, match="start"):
            await batcher.submit([1])
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([1]))
        waiting = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.05)
        await batcher.stop()
        assert not batcher.running
        for request in (running, waiting):
            with pytest.raises(RuntimeError, match="shutting down"):
                await request

    run(main())


@pytest.mark.parametrize(("max_batch", "max_wait_ms"), [(0, 10), (4, -1)])
def test_bad_settings_are_refused(max_batch, max_wait_ms):
    with pytest.raises(ValueError, match="max_"):
        Batcher(Recorder(), max_batch=max_batch, max_wait_ms=max_wait_ms)
