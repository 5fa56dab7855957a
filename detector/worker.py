"""The detector: one consumer-group member on every partition's images stream.

Per partition a lane (detector/lane.py) first re-reads its own pending entries (a restart
after a crash answers what it had taken), then reads new ones with XREADGROUP `>`; cache hits
are served at once while inference runs in a thread pool, and deferred images (another worker
holds their lock) are re-checked on a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.exceptions
import structlog

from facestream.common import metrics
from facestream.common.contract.keys import Keys
from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.common.streams.bloom import BloomFilter, resolve_bloom_mode
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.groups import ensure_group
from facestream.common.streams.locks import LockKeeper, claim_consumer_name
from facestream.common.streams.outage import Outage, until_available
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.trim import trim_acked
from facestream.detector.jobs import Counters, ResultFactory
from facestream.detector.lane import Lane
from facestream.detector.model.face_model import FaceModel
from facestream.detector.pipeline import BatchProcessor
from facestream.detector.writer import OUTAGE_ERRORS, Writer

log = get_logger(__name__)


class Detector:
    def __init__(self, settings: Settings, client: Any, model: FaceModel) -> None:
        self.s = settings
        self.client = client
        self.model = model
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(client)
        self.counters = Counters()
        self.locks = LockKeeper(self.scripts, settings.lock_ttl_ms)
        self.stop = asyncio.Event()
        self.processor: BatchProcessor | None = None
        self.lanes = [
            Lane(settings, client, part, self.counters, self.stop, first=i == 0)
            for part in self.keys.parts
            for i in range(settings.read_lanes)
        ]

    async def _setup(self) -> BatchProcessor:
        s = self.s
        for part in self.keys.parts:
            await ensure_group(self.client, part.images, s.detector_group)
        mode = await resolve_bloom_mode(self.client, s.bloom, self.keys.bloom(self.model.tag))
        bloom = BloomFilter(
            self.keys,
            self.scripts,
            self.model.tag,
            mode,
            s.bloom_capacity,
            s.bloom_error_rate,
            s.cache_ttl_s * 1000,
        )
        writer = Writer(
            s, self.client, self.keys, self.scripts, bloom, self.model.tag, self.counters
        )
        results = ResultFactory(self.model.tag, s.consumer, self.counters)
        log.info(
            "detector_ready",
            model=self.model.tag,
            provider=self.model.backend.provider,
            bloom=mode,
            lock_owner=self.locks.owner,  # every lock this process takes starts with it
            group=s.detector_group,
            streams=[part.images for part in self.keys.parts],
        )
        return BatchProcessor(
            s, self.client, self.keys, self.model, bloom, self.locks, writer, results
        )

    async def run(self) -> Counters:
        s = self.s
        # Every log line of this task and the tasks it starts names the consumer.
        structlog.contextvars.bind_contextvars(consumer=s.consumer)
        claim_key = self.keys.consumer_claim(s.detector_group, s.consumer)
        # Started before Redis is up (or while it is down)? Wait for it, do not crash-loop.
        token = await until_available(
            lambda: claim_consumer_name(self.client, claim_key, s.consumer_claim_ttl_ms),
            self.stop,
            log,
        )
        processor = await until_available(self._setup, self.stop, log) if token else None
        if token is None or processor is None:
            return self.counters  # stopped before Redis came
        self.processor = processor
        # The claim is kept alive by a keeper like the one that extends image locks.
        keeper = LockKeeper(self.scripts, s.consumer_claim_ttl_ms)
        keeper.hold(claim_key, token)
        keeper_stop = asyncio.Event()
        tasks = [
            asyncio.create_task(keeper.run(self.client, keeper_stop)),
            asyncio.create_task(self.locks.run(self.client, keeper_stop)),
            asyncio.create_task(self._housekeeping(keeper_stop)),
        ]
        inference = asyncio.create_task(processor.batcher.run())
        started = time.monotonic()
        try:
            await asyncio.gather(*(lane.run(processor) for lane in self.lanes))
            await self._finish(processor)
        finally:
            keeper_stop.set()
            inference.cancel()
            await asyncio.gather(*tasks, inference, return_exceptions=True)
            processor.close()
            with contextlib.suppress(*REDIS_ERRORS):  # else it expires
                await self.scripts.lock_release(self.client, claim_key, token)
            log.info(
                "detector_stopped",
                seconds=round(time.monotonic() - started, 1),
                deferred_left_pending=processor.deferred_jobs(),
                batch_sizes=dict(sorted(processor.batcher.batch_sizes.items())),
                **self.counters.as_dict(),
            )
        return self.counters

    async def _finish(self, p: BatchProcessor) -> None:
        """On stop: finish inference in hand, and give images deferred on another worker's lock
        a grace period to be answered from the cache; what is left stays pending for others."""
        await p.drain()
        deadline = time.monotonic() + self.s.shutdown_grace_s
        while p.deferred and time.monotonic() < deadline:
            due = p.next_due() or time.monotonic()
            await asyncio.sleep(max(0.0, min(due - time.monotonic(), 0.2)))
            try:
                await p.recheck_deferred()
            except OUTAGE_ERRORS:
                break  # Redis is away: leave the rest pending
            await p.drain()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Periodically: keep the streams this detector writes to bounded (never losing unread
        entries), and refresh the lag / pending / dead-letter gauges."""
        streams = [part.results for part in self.keys.parts] if self.s.trim_results else []
        if not self.s.delete_acked_images:  # else answered image entries are deleted at once
            streams += [part.images for part in self.keys.parts]
        outage = Outage(log, "housekeeping")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.trim_every_ms / 1000)
            try:
                for stream in streams:
                    removed = await trim_acked(self.client, stream)
                    if removed:
                        log.debug("trimmed", stream=stream, entries=removed)
                await self.refresh_gauges()
                outage.ok()
            except REDIS_ERRORS as exc:
                outage.failed(exc)

    async def refresh_gauges(self) -> None:
        for stream in [name for p in self.keys.parts for name in (p.images, p.results)]:
            try:
                groups = await self.client.xinfo_groups(stream)
            except redis.exceptions.ResponseError:
                continue  # no such stream yet
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if g.get("lag") is not None:
                    metrics.LAG.labels(stream, name).set(int(g["lag"]))
                metrics.PENDING.labels(stream, name).set(int(g["pending"]))
        metrics.DLQ_SIZE.set(sum([await self.client.xlen(p.dlq) for p in self.keys.parts]))
