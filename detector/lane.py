"""One partition's reader inside a detector: its own cursor, blocking read and reclaimer.

A detector runs one lane per partition over one shared BatchProcessor (one model, one
batcher, one lock keeper). Each lane blocks on its own stream, so a busy partition never
starves a quiet one, and misses from every partition share the model's batches. Inference
capacity is shared: when the processor is saturated every lane waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from facestream.common.contract.keys import Partition
from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.common.streams.outage import Outage
from facestream.common.streams.recovery import Reclaimer
from facestream.detector.jobs import Counters
from facestream.detector.pipeline import BatchProcessor
from facestream.detector.writer import OUTAGE_ERRORS

log = get_logger(__name__)


class Lane:
    def __init__(
        self,
        settings: Settings,
        client: Any,
        part: Partition,
        counters: Counters,
        stop: asyncio.Event,
        first: bool = True,
    ) -> None:
        self.s = settings
        self.client = client
        self.part = part
        self.counters = counters
        self.stop = stop
        # The first lane of a partition owns its pending list: it re-reads it ("0") at start
        # and whenever entries in hand were dropped, and claims stuck work; the others (more
        # readers of the same partition) only read new entries (">").
        self.first = first
        self.cursor: str | None = "0" if first else None
        self._lost_seen = 0
        self.reclaimer = Reclaimer(
            client,
            part.images,
            settings.detector_group,
            settings.consumer,
            settings.claim_idle_ms,
            settings.claim_every_ms,
            settings.read_count,
        )

    async def run(self, p: BatchProcessor) -> None:
        if self.s.partitions > 1:
            structlog.contextvars.bind_contextvars(partition=self.part.index)
        outage = Outage(log)
        while not self.stop.is_set():
            try:
                await self.step(p)
                outage.ok()
            except OUTAGE_ERRORS as exc:
                # Whatever was in hand stays pending in our list: the partition's first lane
                # re-reads it once Redis is back.
                p.lost_writes += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), outage.failed(exc))

    async def _read(self, start: str, block_ms: int | None) -> list[tuple[bytes, Any]]:
        reply = await self.client.xreadgroup(
            self.s.detector_group,
            self.s.consumer,
            {self.part.images: start},
            count=self.s.read_count,
            block=block_ms,
        )
        if not reply:
            return []
        entries: list[tuple[bytes, Any]] = reply[0][1]
        return entries

    async def step(self, p: BatchProcessor) -> None:
        s = self.s
        await p.recheck_deferred()
        if p.lost_writes != self._lost_seen:
            # A write failed, or a lane lost what it held: those entries are pending, unanswered.
            self._lost_seen = p.lost_writes
            self.cursor = "0" if self.first else None
        if self.cursor is not None:
            entries = await self._read(self.cursor, None)
            if not entries:
                self.cursor = None
                return
            self.cursor = entries[-1][0].decode()
            await self._redelivered(p, entries)
            return
        if len(p.tasks) >= s.max_inflight_batches or p.deferred_jobs() >= s.max_deferred:
            # Saturated: let inference finish (or deferrals come due) before reading more.
            await self._wait_for_work(p)
            return
        if self.first and self.reclaimer.due():
            # Work stuck on members that died or hang: take it over.
            entries, deleted = await self.reclaimer.claim()
            self.counters.deleted_entries += len(deleted)
            self.counters.claimed += len(entries)
            if entries:
                await self._redelivered(p, entries)
                return
        block = s.block_ms
        due = p.next_due()
        if due is not None:
            block = max(1, min(block, int((due - time.monotonic()) * 1000)))
        entries = await self._read(">", block)
        if entries:
            await p.handle(self.part, entries)

    async def _redelivered(self, p: BatchProcessor, entries: list[tuple[bytes, Any]]) -> None:
        # Entries still deferred or being inferred here are in our pending list too.
        active = p.active_entries(self.part)
        fresh = [e for e in entries if e[0].decode() not in active]
        counts = await self.reclaimer.deliveries([e[0].decode() for e in fresh])
        await p.handle(self.part, fresh, counts)

    async def _wait_for_work(self, p: BatchProcessor) -> None:
        due = p.next_due()
        timeout = s_block = self.s.block_ms / 1000
        if due is not None:
            timeout = max(0.001, min(s_block, due - time.monotonic()))
        waiters: set[asyncio.Future[Any]] = set(p.tasks)
        stop_wait = asyncio.ensure_future(self.stop.wait())
        waiters.add(stop_wait)
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
