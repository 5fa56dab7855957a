"""Dynamic batching: decoded images from any number of read batches share one model call.

A call takes up to `max_batch` images, waiting at most `max_wait_ms` after the first one for
others to join. Calls run one at a time on one thread of their own (onnxruntime uses its
intra-op threads inside a call and releases the GIL), so decoding the next images overlaps the
current call.

That thread takes its next call straight from the queue: the model never waits for the event
loop between two calls. With a pool thread fed by the loop, each call's end had to be seen by
the loop before the next could start, and a loop busy parsing a read batch (tens of images:
unpacking, hashing) left the model idle (docs/performance.md, the miss path).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque

from facestream.common.contract.schema import Face
from facestream.detector import metrics
from facestream.detector.model.face_model import FaceModel, Prepared

# An image's faces and when its model call ended (`time.perf_counter()`).
Timed = tuple[list[Face], float]
# An image, its waiter, the waiter's loop, and when it was ready for the model (perf_counter).
Pending = tuple[Prepared, asyncio.Future[Timed], asyncio.AbstractEventLoop, float]
Settled = tuple[asyncio.Future[Timed], list[Face] | None]


class DynamicBatcher:
    def __init__(self, model: FaceModel, max_batch: int, max_wait_ms: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._queue: deque[Pending] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Written by the inference thread only; read for the detector's summary.
        self.batch_sizes: Counter[int] = Counter()
        # Running totals (seconds in model calls, images run) for the load the detector
        # advertises to the gateways (common/streams/serving.py); same writer.
        self.model_s = 0.0
        self.images_run = 0

    async def detect(self, images: list[Prepared]) -> list[list[Face]]:
        ready = [time.perf_counter()] * len(images)
        return [faces for faces, _ in await self.detect_timed(images, ready)]

    async def detect_timed(self, images: list[Prepared], ready: list[float]) -> list[Timed]:
        """Each image's faces and when its model call ended; `ready`: when each image was
        ready for the model (decoded), where its `model_queue` stage starts."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Timed]] = [loop.create_future() for _ in images]
        with self._changed:
            self._queue.extend(
                (image, fut, loop, since)
                for image, fut, since in zip(images, futures, ready, strict=True)
            )
            self._changed.notify()
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        """The inference thread's lifetime; cancel it to stop (the call in hand finishes,
        `close` waits for it; what is still queued is left, as its entries stay pending).
        A thread that ends by itself (an error outside a model call) ends this with its
        error, so the supervisor logs it and runs a new thread on the same queue."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()
        with self._changed:
            self._stopping = False  # a restart after a failure

        def work() -> None:
            error: BaseException | None = None
            try:
                self._work()
            except BaseException as exc:
                error = exc
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed: no one to tell
                    loop.call_soon_threadsafe(_ended, ended, error)

        self._thread = threading.Thread(target=work, name="infer", daemon=True)
        self._thread.start()
        try:
            error = await ended
        finally:
            self._stop()
        raise RuntimeError("the inference thread ended") from error

    def _stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _take(self) -> list[Pending] | None:
        """The next call's images (None once stopping): waits for a first one, then up to
        max_wait for company."""
        with self._changed:
            while not self._queue and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            started = time.perf_counter()
            for *_, ready in batch:
                metrics.STAGE_MODEL_QUEUE.observe(started - ready)
            try:
                found = self.model.detect_prepared([item for item, *_ in batch])
            except Exception as exc:
                self._answer(batch, None, exc, started)
                continue
            finally:
                elapsed = time.perf_counter() - started
                self.batch_sizes[len(batch)] += 1
                self.model_s += elapsed
                self.images_run += len(batch)
                metrics.INFERENCE.observe(elapsed)
                metrics.BATCH.observe(len(batch))
            metrics.observe_each(metrics.STAGE_MODEL, elapsed, len(batch))
            self._answer(batch, found, None, started + elapsed)

    @staticmethod
    def _answer(
        batch: list[Pending],
        found: list[list[Face]] | None,
        error: Exception | None,
        ended: float,
    ) -> None:
        """Hand the call's answers, and when the call ended, to the loop(s) waiting for them:
        one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
        for i, (_, fut, loop, _) in enumerate(batch):
            by_loop.setdefault(loop, []).append((fut, found[i] if found is not None else None))
        for loop, settled in by_loop.items():
            # A loop already closed (the process stopping) has no one left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_answer_waiters, settled, error, ended)

    def close(self) -> None:
        self._stop()
        if self._thread is not None:
            self._thread.join()


def _answer_waiters(settled: list[Settled], error: Exception | None, ended: float) -> None:
    for fut, faces in settled:
        if fut.done():  # its waiter gave up (cancelled)
            continue
        if faces is None:
            fut.set_exception(error or RuntimeError("no answer"))
        else:
            fut.set_result((faces, ended))


def _ended(ended: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not ended.done():
        ended.set_result(error)
