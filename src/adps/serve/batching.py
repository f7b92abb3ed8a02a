"""Micro-batching: concurrent requests share one model batch, in one model thread.

Requests wait in a bounded queue. The collector takes the first one, then whatever else
arrives within ``max_wait_ms`` up to ``max_batch`` images, and runs them as one batch on a
single worker thread (the model is never entered twice at once, and the event loop never
blocks on it). A full queue refuses at once (:class:`Busy`) rather than growing without
limit, so an overloaded server answers 503 instead of timing every client out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Busy(Exception):
    """The queue is full; the client should retry later."""


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        queue_size: int = 64,
    ):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="adps-model")
        self.task: asyncio.Task | None = None
        self.batches = 0  # how many model batches ran (for tests and /v1/model)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Finishes what is queued, then stops the collector and the model thread."""
        await self.queue.join()
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` on the model thread (e.g. the warm-up), after what is running now."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results of ``items``, computed in some batch; :class:`Busy` when full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((items, future))
        except asyncio.QueueFull:
            raise Busy() from None
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            count = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                batch.append(item)
                count += len(item[0])
            items = [x for request, _ in batch for x in request]
            try:
                results = await loop.run_in_executor(self.executor, self.run, items)
                error = None
            except Exception as exc:  # the requests of this batch fail; the next may succeed
                results, error = None, exc
            self.batches += 1
            start = 0
            for request, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    if error is not None:
                        future.set_exception(error)
                    else:
                        assert results is not None
                        future.set_result(list(results[start : start + len(request)]))
                start += len(request)
                self.queue.task_done()


__all__ = ["Busy", "MicroBatcher"]
