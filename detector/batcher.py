"""Dynamic batching: decoded images from any number of read batches share one model call.

A call takes up to `max_batch` images, waiting at most `max_wait_ms` after the first one for
others to join. Calls run one at a time on one thread (onnxruntime uses its intra-op threads
inside a call and releases the GIL), so decoding the next images overlaps the current call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from facestream.common import metrics
from facestream.common.contract.schema import Face
from facestream.detector.model.face_model import FaceModel, Prepared

Pending = tuple[Prepared, asyncio.Future[list[Face]]]


class DynamicBatcher:
    def __init__(self, model: FaceModel, max_batch: int, max_wait_ms: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._queue: list[Pending] = []
        self._arrived = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, "infer")
        self.batch_sizes: Counter[int] = Counter()
        self.busy_s = 0.0

    async def detect(self, images: list[Prepared]) -> list[list[Face]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self._queue.extend(zip(images, futures, strict=True))
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _gather_batch(self) -> list[Pending]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.max_wait_s
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        return batch

    async def run(self) -> None:
        """The inference loop; cancel it to stop (after the work in hand is answered)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather_batch()
            started = time.perf_counter()
            try:
                found = await loop.run_in_executor(
                    self._pool, self.model.detect_prepared, [item for item, _ in batch]
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                elapsed = time.perf_counter() - started
                self.busy_s += elapsed
                self.batch_sizes[len(batch)] += 1
                metrics.INFERENCE.observe(elapsed)
                metrics.BATCH.observe(len(batch))
            for (_, fut), faces in zip(batch, found, strict=True):
                if not fut.done():
                    fut.set_result(faces)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
