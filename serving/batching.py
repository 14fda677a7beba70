"""Micro-batching of concurrent requests: one model call for the requests of a few ms.

Requests are queued; a single worker takes the first, waits up to `max_wait_s` for
others until `max_size` stays are gathered, then runs one predict call in a worker thread
(the model's forward releases the GIL, the event loop keeps serving). A failing batch is
retried request by request, so one bad request never fails its neighbours.

The window is kept even when requests were already queued behind a scoring batch: skipping it
there was measured slower (benchmarks/bench_serving.py, TF-IDF run, 8 clients: 0.78-0.87 of
the predictor against 0.91-1.05 with it), since in those few ms the event loop sends the last
batch's answers without contending for the GIL with the scorer, and the answered clients'
next requests still make the batch (5 reports per call instead of 4).

Waiting requests are taken in turn per key (round robin): a client posting many batches
waits behind its own batches, not the others' one-report requests.

The queue is bounded: a request that would make more than `max_queued` stays wait, or wait
longer than `max_queue_wait_s` by the recent batch times, is refused at once with
`QueueFull` (the API answers 429 with Retry-After) instead of timing out in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(Exception):
    """The scoring queue is full: come back in `retry_after_s` seconds."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} stays are waiting to be scored")
        self.queued = queued
        self.retry_after_s = retry_after_s


@dataclass
class _Job(Generic[In, Out]):
    items: list[In]
    future: asyncio.Future[list[Out]]
    key: str = ""
    queued_at: float = field(default_factory=time.perf_counter)


class _FairQueue(Generic[In, Out]):
    """Jobs in one FIFO per key; `get` takes the next key's oldest job, round robin."""

    def __init__(self) -> None:
        self._by_key: OrderedDict[str, deque[_Job[In, Out]]] = OrderedDict()
        self._ready = asyncio.Event()

    def empty(self) -> bool:
        return not self._by_key

    def next_size(self) -> int | None:
        """How many items the job `get_nowait` would return has; None when empty."""
        if not self._by_key:
            return None
        return len(next(iter(self._by_key.values()))[0].items)

    def put_nowait(self, job: _Job[In, Out]) -> None:
        self._by_key.setdefault(job.key, deque()).append(job)
        self._ready.set()

    def get_nowait(self) -> _Job[In, Out]:
        if not self._by_key:
            raise asyncio.QueueEmpty
        key, jobs = next(iter(self._by_key.items()))
        job = jobs.popleft()
        del self._by_key[key]
        if jobs:  # this key's next job goes after every other key's
            self._by_key[key] = jobs
        return job

    async def get(self) -> _Job[In, Out]:
        while not self._by_key:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()


class MicroBatcher(Generic[In, Out]):
    """Collects `submit` calls into batches for `predict_fn(items) -> outputs` (same order).

    `on_batch(stays, seconds)` is called after each model call (metrics)."""

    def __init__(
        self,
        predict_fn: Callable[[list[In]], Sequence[Out]],
        *,
        max_size: int = 16,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        max_queued: int | None = None,
        max_queue_wait_s: float | None = None,
    ) -> None:
        self._predict = predict_fn
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.max_queue_wait_s = max_queue_wait_s
        self._on_batch = on_batch
        self._queue: _FairQueue[In, Out] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._queued = 0  # stays submitted and not yet taken into a batch
        self._batch_s = 0.0  # moving average of a batch's scoring time

    @property
    def queued(self) -> int:
        """Stays waiting for a batch."""
        return self._queued

    def expected_wait_s(self, extra: int = 0) -> float:
        """How long `extra` more stays would wait for their turn, by recent batch times."""
        return math.ceil((self._queued + extra) / self.max_size) * self._batch_s

    def _admit(self, n: int) -> None:
        if self._queued == 0:
            return  # an idle scorer takes any request (its size is capped by the API)
        over_count = self.max_queued is not None and self._queued + n > self.max_queued
        over_time = (
            self.max_queue_wait_s is not None and self.expected_wait_s(n) > self.max_queue_wait_s
        )
        if over_count or over_time:
            raise QueueFull(self._queued, max(1, math.ceil(self.expected_wait_s())))

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = _FairQueue()
        self._worker = asyncio.create_task(self._run(), name="cimcoder-microbatcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None
        self._queued = 0
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, items: Sequence[In], key: str = "") -> list[Out]:
        """Score `items` with whatever else is queued; returns their outputs in order.

        `key` names the client: waiting requests are served in turn per key."""
        if self._queue is None or not self.running:
            raise RuntimeError("the micro-batcher is not running")
        self._admit(len(items))
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._queued += len(items)
        self._queue.put_nowait(_Job(list(items), future, key))
        return await future

    async def _gather(self, first: _Job[In, Out]) -> list[_Job[In, Out]]:
        assert self._queue is not None
        jobs = [first]
        size = len(first.items)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_size:
            # Polling rather than wait_for(queue.get()): cancelling a get() that had just
            # received an item could lose that request on Python 3.11.
            waiting = self._queue.next_size()
            if waiting is None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.001))
                continue
            if size + waiting > self.max_size:
                break  # a big batch waits for its own call: a short request is not held by it
            job = self._queue.get_nowait()
            self._queued -= len(job.items)
            jobs.append(job)
            size += len(job.items)
        return jobs

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            self._queued -= len(first.items)
            jobs = [job for job in await self._gather(first) if not job.future.done()]
            if not jobs:
                continue  # every caller already timed out
            await self._process(jobs)

    async def _process(self, jobs: list[_Job[In, Out]]) -> None:
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            outputs = await asyncio.to_thread(self._predict, items)
        except Exception as exc:
            if len(jobs) > 1:
                for job in jobs:
                    if not job.future.done():
                        await self._process([job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(exc)
            return
        took = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(len(items), took)
        self._batch_s = took if self._batch_s == 0.0 else 0.8 * self._batch_s + 0.2 * took
        if len(outputs) != len(items):  # a broken predictor must not mix answers up
            error = RuntimeError(f"predictor returned {len(outputs)} answers for {len(items)}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            part = list(outputs[start : start + len(job.items)])
            start += len(job.items)
            if not job.future.done():
                job.future.set_result(part)
