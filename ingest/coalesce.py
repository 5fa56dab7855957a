"""Sharing Redis round trips between the concurrent requests of a gateway process.

`PerCycle`: calls made in one event-loop cycle go out as one batch (one pipelined round trip
for all of them) and each caller gets its own answer, or the batch's error. `SingleFlight`:
one run of a piece of shared work for every caller that arrives while it runs, so a burst of
requests does not open a connection each (a cluster client refuses past its pool's size).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PerCycle(Generic[T, R]):
    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._send = send  # one answer per item, in order
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after every call of this cycle has queued
        self._pending.append((item, fut))
        return await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._send([item for item, _ in batch])
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), answer in zip(batch, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)


class SingleFlight:
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[None]] = {}

    async def run(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        running = self._running.get(name)
        if running is None or running.done():
            running = self._running[name] = asyncio.ensure_future(work())
        await asyncio.shield(running)
