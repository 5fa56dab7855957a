"""The detector: a consumer-group member (common/streams/member.py) on every partition's images
stream, whose handler answers each batch.

Cache hits are served at once while inference runs in a thread pool, and deferred images
(another worker holds their lock) are re-checked on a backoff; while inference is saturated the
readers keep reading and only misses wait (detector/pipeline.py says where the bounds are).

Its background tasks run on the member's supervisor (common/supervise.py): the inference
thread, the lock keeper, trimming, the gauges and the served-model entry. The entry is
refreshed only while every critical one runs, so a detector with a task down drops out of
`/v1/status` and the gateways' cache answers instead of being counted as alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

import redis.exceptions

from facestream.common.cache.bloom import open_bloom
from facestream.common.contract.keys import Keys
from facestream.common.log import get_logger
from facestream.common.settings import DetectorSettings
from facestream.common.streams.connection import hotline
from facestream.common.streams.errors import REDIS_ERRORS, connection_race
from facestream.common.streams.locks import LockKeeper
from facestream.common.streams.member import Batch, Handler, Member, Subscription
from facestream.common.streams.outage import Outage
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.serving import LoadMeter, advertise, withdraw
from facestream.common.streams.trim import trim_acked
from facestream.common.streams.types import AsyncClient
from facestream.common.supervise import RestartPolicy
from facestream.detector import metrics
from facestream.detector.context import Context
from facestream.detector.jobs import Counters
from facestream.detector.model.face_model import FaceModel
from facestream.detector.pipeline import BatchProcessor
from facestream.detector.writer import OUTAGE_ERRORS

log = get_logger(__name__)


def subscription(settings: DetectorSettings, keys: Keys) -> Subscription:
    return Subscription(
        streams=tuple(part.images for part in keys.parts),
        group=settings.detector_group,
        consumer=settings.consumer,
        claim_key=keys.consumer_claim(settings.detector_group, settings.consumer),
        claim_ttl_ms=settings.consumer_claim_ttl_ms,
        count=settings.read_count,
        block_ms=settings.block_ms,
        readers=settings.read_lanes,
        claim_idle_ms=settings.claim_idle_ms,
        claim_every_ms=settings.claim_every_ms,
    )


class Detector(Handler):
    retry_on = OUTAGE_ERRORS
    counters: Counters

    def __init__(self, settings: DetectorSettings, client: AsyncClient, model: FaceModel) -> None:
        self.settings = settings
        self.client = client
        self.model = model
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(client, hotline(settings, client))
        self.counters = Counters()
        self.locks = LockKeeper(self.scripts, settings.lock_ttl_ms)
        self.member = Member(
            client,
            subscription(settings, self.keys),
            self,
            "detector",
            RestartPolicy.of(settings),
            hotlines=lambda: hotline(settings, client),
        )
        self.stop = self.member.stop
        self._processor: BatchProcessor | None = None
        self._lost_seen = 0
        self._held_back = False  # the served-model entry is not being refreshed
        self._load = LoadMeter()  # the model time per image it advertises

    async def run(self) -> Counters:
        await self.member.run()
        return self.counters

    @property
    def started(self) -> bool:
        return self._processor is not None

    @property
    def processor(self) -> BatchProcessor:
        """The batch processor (pipeline.py), made at start."""
        assert self._processor is not None, "started"
        return self._processor

    async def start(self) -> None:
        s = self.settings
        bloom = await open_bloom(self.client, self.scripts, self.keys, self.model.tag, s)
        ctx = Context(
            s,
            self.client,
            self.keys,
            self.scripts,
            bloom,
            self.locks,
            self.model.tag,
            self.counters,
        )
        self._processor = BatchProcessor(ctx, self.model)
        await self._advertise()
        batcher, every = self.processor.batcher, s.trim_every_ms / 1000
        supervise = self.member.supervisor.start
        supervise("inference", batcher.run)
        stopped = self.member.supervisor.stopped
        supervise("lock_keeper", lambda: self.locks.run(self.client, stopped))
        supervise("trim", lambda: self._every(every, "trim", self.trim))
        supervise(
            "gauges", lambda: self._every(every, "gauges", self.refresh_gauges), critical=False
        )
        supervise("advertise", lambda: self._every(every, "advertise", self._advertise_if_alive))
        log.info(
            "detector_ready",
            model=self.model.tag,
            provider=self.model.backend.provider,
            bloom=bloom.mode,
            lock_owner=self.locks.owner,  # every lock this process takes starts with it
            group=s.detector_group,
            streams=[part.images for part in self.keys.parts],
        )

    async def handle(self, batch: Batch) -> None:
        await self.processor.handle(self.keys.parts[batch.stream], batch.entries, batch.deliveries)

    async def tick(self) -> None:
        await self.processor.recheck_deferred()

    def next_due(self) -> float | None:
        return self.processor.next_due()

    def busy(self) -> bool:
        return self.processor.saturated()

    async def until_free(self, timeout_s: float) -> None:
        # Saturated: let inference finish (or deferrals come due) before reading more.
        stop_wait = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait(
            [*self.processor.tasks, stop_wait],
            timeout=timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        stop_wait.cancel()

    def in_hand(self, stream: int) -> set[str]:
        return self.processor.active_entries(self.keys.parts[stream])

    def rewind_needed(self) -> bool:
        # A write failed, or entries in hand were dropped: they are pending, unanswered.
        if self.processor.lost_writes == self._lost_seen:
            return False
        self._lost_seen = self.processor.lost_writes
        return True

    async def finish(self) -> None:
        """On stop: finish inference in hand, and give images deferred on another worker's lock
        a grace period to be answered from the cache; what is left stays pending for others."""
        p = self.processor
        if self.member.failed is not None:
            # A task gave up (inference, perhaps): wait for the work in hand no longer than
            # the grace; what is not done by then stays pending for the other detectors.
            deadline = time.monotonic() + self.settings.shutdown_grace_s
            while p.tasks and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait(list(p.tasks), timeout=left)
            return
        await p.drain()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while p.deferred_jobs() and time.monotonic() < deadline:
            due = p.next_due() or time.monotonic()
            await asyncio.sleep(max(0.0, min(due - time.monotonic(), 0.2)))
            try:
                await p.recheck_deferred()
            except OUTAGE_ERRORS:
                break  # Redis is away: leave the rest pending
            await p.drain()

    async def _advertise(self) -> None:
        """Tell the gateways which model's cache entries answer for this detector, and its
        recent model time per image (their admission control: ingest/http/admission.py)."""
        ttl_ms = max(3 * self.settings.trim_every_ms, 30_000)
        key = self.keys.serving(self.settings.detector_group)
        batcher = self.processor.batcher
        load = self._load.load(batcher.model_s, batcher.images_run)
        await advertise(self.client, key, self.settings.consumer, self.model.tag, ttl_ms, load)

    async def _advertise_if_alive(self) -> None:
        """Refresh the served-model entry only while every critical task runs: else let it
        lapse, so nothing counts this detector alive while it cannot do all its work."""
        down = self.member.supervisor.down()
        if down:
            if not self._held_back:
                log.warning("not_advertising", tasks_down=down, hint="the entry lapses")
            self._held_back = True
            return
        if self._held_back:
            log.info("advertising_again")
        self._held_back = False
        await self._advertise()

    async def close(self) -> None:
        # The member's supervisor has stopped the background tasks by now.
        if self.started:
            with contextlib.suppress(*REDIS_ERRORS):  # else it expires
                key = self.keys.serving(self.settings.detector_group)
                await withdraw(self.client, key, self.settings.consumer)
            self.processor.close()

    def summary(self) -> Mapping[str, object]:
        if not self.started:
            return self.counters.as_dict()
        return {
            "deferred_left_pending": self.processor.deferred_jobs(),
            "batch_sizes": dict(sorted(self.processor.batcher.batch_sizes.items())),
            **self.counters.as_dict(),
        }

    async def _every(
        self, interval_s: float, what: str, step: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `step` every `interval_s` until the supervisor stops. Redis away is waited out
        here (one line when it goes, one when it is back); any other error ends the task, for
        the supervisor to log and restart."""
        outage = Outage(log, what)
        stopped = self.member.supervisor.stopped
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), interval_s)
            if stopped.is_set():
                return
            try:
                await step()
                outage.ok()
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS) and not connection_race(exc):
                    raise
                outage.failed(exc)

    async def trim(self) -> None:
        """Keep the streams this detector writes to bounded, never losing unread entries."""
        results = {part.results for part in self.keys.parts}
        streams = sorted(results) if self.settings.trim_results else []
        if not self.settings.delete_acked_images:  # else answered image entries are deleted at once
            streams += [part.images for part in self.keys.parts]
        for stream in streams:
            keep = self.settings.results_keep if stream in results else 0
            removed = await trim_acked(self.client, stream, keep)
            if removed:
                log.debug("trimmed", stream=stream, entries=removed)

    async def refresh_gauges(self) -> None:
        for stream in [name for p in self.keys.parts for name in (p.images, p.results)]:
            try:
                groups = await self.client.xinfo_groups(stream)
            except redis.exceptions.ResponseError:
                continue  # no such stream yet
            # Entries erased from under a group (an XTRIM, an XDEL) still count in its lag:
            # what is left to deliver cannot exceed what the stream holds.
            length = int(await self.client.xlen(stream))
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if g.get("lag") is not None:
                    metrics.LAG.labels(stream, name).set(min(int(g["lag"]), length))
                metrics.PENDING.labels(stream, name).set(int(g["pending"]))
        metrics.DLQ_SIZE.set(sum([await self.client.xlen(p.dlq) for p in self.keys.parts]))
