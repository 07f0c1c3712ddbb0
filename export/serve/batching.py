"""Cross-user micro-batching: concurrent requests share one forward pass of the frozen model.

Requests wait in one queue. A single worker takes the first, then keeps taking more
until it holds ``max_batch`` of them or ``max_wait_ms`` have passed since the first
arrived, and runs them as one batch on one model thread (the model is never run by
two threads at once). Each request gets its own row's answer, or the batch's error.
Nothing is kept once a batch is answered: the host holds no per-user state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchStats", "MicroBatcher"]


@dataclass
class BatchStats:
    """Counters a client can read at ``GET /v1/stats`` (they grow with requests, never with users)."""

    requests: int = 0
    forward_passes: int = 0
    rows: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int, seconds: float) -> None:
        """Count one forward pass of ``size`` rows."""
        self.forward_passes += 1
        self.rows += size
        self.largest_batch = max(self.largest_batch, size)
        self.busy_seconds += seconds
        self.sizes[size] = self.sizes.get(size, 0) + 1


class MicroBatcher:
    """Collect concurrent jobs into batches for ``run_batch(jobs) -> results`` (one result per job).

    Parameters
    ----------
    run_batch : callable
        Runs a list of jobs on the model and returns their results in order. It runs on one
        dedicated thread, so it may block.
    max_batch : int
        Most rows per forward pass.
    max_wait_ms : float
        How long the first job of a batch waits for company.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], list[Any]], max_batch: int = 32, max_wait_ms: float = 5.0):
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lopa-model")

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        """Stop the worker and the model thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=True)

    async def submit(self, job: Any) -> Any:
        """Queue ``job`` and wait for its result (or its batch's exception)."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        fut = asyncio.get_running_loop().create_future()
        self.stats.requests += 1
        await self._queue.put((job, fut))
        return await fut

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            jobs = [job for job, _ in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self.run_batch, jobs)
            except Exception as exc:  # answer every request of a failed batch, keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.stats.record(len(batch), time.perf_counter() - t0)
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
