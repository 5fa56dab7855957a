"""A sink: one member of a consumer group on every partition's results stream.

Each sink kind is its own group (`sink-<kind>` unless FACESTREAM_SINK_GROUP says otherwise), so
every kind sees every result, and members of one group share its work. Per partition a member
re-reads its own pending entries first, acknowledges an entry only after the sink's write
succeeded, and sends what a sink gives up on to the partition's dead-letter stream with the
reason before acknowledging it. Writes to the sink are one at a time, whichever partition
they come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from facestream.common import metrics
from facestream.common.contract.keys import Keys, Partition
from facestream.common.contract.schema import RESULT_FIELD, decode_result
from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.groups import ensure_group
from facestream.common.streams.locks import LockKeeper, claim_consumer_name
from facestream.common.streams.outage import Outage, until_available
from facestream.common.streams.recovery import Reclaimer
from facestream.common.streams.scripts import Scripts

log = get_logger(__name__)


@dataclass(slots=True)
class Item:
    entry: str  # results-stream entry id
    payload: bytes
    result: dict[str, Any] | None  # None when the payload is not a v1 result


@dataclass(slots=True)
class Outcome:
    """What became of the items handed to a sink: written, or given up with a reason."""

    written: list[Item]
    dead: list[tuple[Item, str]]


class Sink(Protocol):
    kind: str

    async def open(self) -> None: ...

    async def write(self, items: list[Item]) -> Outcome: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class SinkCounters:
    read: int = 0
    written: int = 0
    dead: int = 0
    skipped: int = 0
    claimed: int = 0
    deleted: int = 0


class SinkRunner:
    def __init__(self, settings: Settings, client: Any, sink: Sink) -> None:
        self.s = settings
        self.client = client
        self.sink = sink
        self.keys = Keys(settings.prefix, settings.partitions)
        self.group = settings.sink_group or f"sink-{sink.kind}"
        self.counters = SinkCounters()
        self.stop = asyncio.Event()
        self.scripts = Scripts(client)
        self._writing = asyncio.Lock()
        self.reclaimers = [
            Reclaimer(
                client,
                part.results,
                self.group,
                settings.consumer,
                settings.claim_idle_ms,
                settings.claim_every_ms,
                settings.read_count,
            )
            for part in self.keys.parts
        ]

    async def _read(self, part: Partition, start: str, block: int | None) -> list[Item]:
        reply = await self.client.xreadgroup(
            self.group,
            self.s.consumer,
            {part.results: start},
            count=self.s.read_count,
            block=block,
        )
        return [self._item(e) for e in (reply[0][1] if reply else [])]

    @staticmethod
    def _item(entry: tuple[bytes, Any]) -> Item:
        raw_id, fields = entry
        payload = (fields or {}).get(RESULT_FIELD, b"")
        try:
            result: dict[str, Any] | None = decode_result(payload)
        except Exception:
            result = None  # dead-lettered as "not a v1 result"
        return Item(raw_id.decode(), payload, result)

    async def _settle(self, part: Partition, items: list[Item], outcome: Outcome) -> None:
        """Acknowledge the batch, dead letters included. Where the results and dead-letter
        streams share a slot (or on one server) each dead letter is one script step with its
        acknowledgement, written only if that acknowledgement counted; on a cluster with the
        untagged v1 names they span slots, so dead letters go first and the acks after (a
        crash in between repeats a dead letter, never loses one)."""
        dead = [(item.entry, item.payload, reason[:1000]) for item, reason in outcome.dead]
        dead_ids = {entry for entry, _, _ in dead}
        rest = [i.entry for i in items if i.entry not in dead_ids]
        s, kind = self.s, self.sink.kind

        def scripted(pipe: Any) -> None:
            if dead:
                self.scripts.sink_dead_letter(
                    pipe, part.results, part.dlq, self.group, kind, s.consumer, dead
                )
            if rest:
                pipe.xack(part.results, self.group, *rest)

        def dead_letters(pipe: Any) -> None:
            for entry, payload, reason in dead:
                pipe.xadd(
                    part.dlq,
                    {
                        "result": payload,
                        "reason": reason,
                        "sink": kind,
                        "group": self.group,
                        "consumer": s.consumer,
                        "entry": entry,
                    },
                )

        def ack(pipe: Any) -> None:
            pipe.xack(part.results, self.group, *[i.entry for i in items])

        one_slot = self.keys.streams_in_one_slot(s.cluster)
        steps: list[Callable[[Any], None]] = [scripted] if one_slot else [dead_letters, ack]
        for answers in await self.scripts.run_steps(self.client, steps, together=len(steps) == 1):
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
        self.counters.written += len(outcome.written)
        self.counters.dead += len(outcome.dead)
        metrics.SINK_WRITTEN.labels(self.sink.kind).inc(len(outcome.written))
        metrics.DEAD_LETTERS.labels(f"sink-{self.sink.kind}").inc(len(outcome.dead))
        for item, reason in outcome.dead:
            log.warning("dead_lettered", entry=item.entry, reason=reason)

    async def _handle(
        self, part: Partition, items: list[Item], deliveries: dict[str, int] | None = None
    ) -> None:
        if not items:
            return
        self.counters.read += len(items)
        limit = self.s.max_deliveries
        poison = {i.entry for i in items if deliveries and deliveries.get(i.entry, 1) >= limit}
        good = [i for i in items if i.result is not None and i.entry not in poison]
        async with self._writing:
            outcome = await self.sink.write(good) if good else Outcome([], [])
        outcome.dead.extend((i, "not a v1 result") for i in items if i.result is None)
        outcome.dead.extend(
            (i, f"max_deliveries: delivered {deliveries[i.entry]} times, never written")
            for i in items
            if i.entry in poison and deliveries is not None
        )
        handled = {i.entry for i in outcome.written} | {i.entry for i, _ in outcome.dead}
        self.counters.skipped += sum(1 for i in good if i.entry not in handled)
        await self._settle(part, items, outcome)

    async def _redelivered(self, part: Partition, items: list[Item]) -> None:
        counts = await self.reclaimers[part.index].deliveries([i.entry for i in items])
        await self._handle(part, items, counts)

    async def run(self) -> SinkCounters:
        s = self.s
        structlog.contextvars.bind_contextvars(consumer=s.consumer, sink=self.sink.kind)
        scripts = self.scripts
        claim = self.keys.consumer_claim(self.group, s.consumer)
        # Started before Redis is up (or while it is down)? Wait for it, do not crash-loop.
        token = await until_available(
            lambda: claim_consumer_name(self.client, claim, s.consumer_claim_ttl_ms),
            self.stop,
            log,
        )
        # From the stream's start: results published before the sink first ran are kept.
        grouped = await until_available(self._ensure_groups, self.stop, log) if token else None
        if token is None or grouped is None:
            return self.counters  # stopped before Redis came
        keeper = LockKeeper(scripts, s.consumer_claim_ttl_ms)
        keeper.hold(claim, token)
        keeper_stop = asyncio.Event()
        heartbeat = asyncio.create_task(keeper.run(self.client, keeper_stop))
        await self.sink.open()
        log.info("sink_ready", group=self.group, streams=[p.results for p in self.keys.parts])
        started = time.monotonic()
        try:
            await asyncio.gather(*(self._loop(part) for part in self.keys.parts))
        finally:
            keeper_stop.set()
            await heartbeat
            await self.sink.close()
            with contextlib.suppress(*REDIS_ERRORS):
                await scripts.lock_release(self.client, claim, keeper.token(claim) or "")
            log.info(
                "sink_stopped",
                seconds=round(time.monotonic() - started, 1),
                **vars_of(self.counters),
            )
        return self.counters

    async def _ensure_groups(self) -> bool:
        for part in self.keys.parts:
            await ensure_group(self.client, part.results, self.group)
        return True

    async def _loop(self, part: Partition) -> None:
        """One partition's reader (each blocks on its own stream)."""
        if self.s.partitions > 1:
            structlog.contextvars.bind_contextvars(partition=part.index)
        reclaimer = self.reclaimers[part.index]
        cursor: str | None = "0"  # own pending first
        outage = Outage(log)
        while not self.stop.is_set():
            try:
                if cursor is not None:
                    items = await self._read(part, cursor, None)
                    cursor = items[-1].entry if items else None
                    await self._redelivered(part, items)
                elif reclaimer.due():
                    # Work stuck on members that died or hang: take it over.
                    entries, deleted = await reclaimer.claim()
                    self.counters.claimed += len(entries)
                    self.counters.deleted += len(deleted)  # gone from the stream: no result
                    await self._redelivered(part, [self._item(e) for e in entries])
                else:
                    await self._handle(part, await self._read(part, ">", self.s.block_ms))
                outage.ok()
            except Exception as exc:
                # Redis away, or the sink's own write failed: nothing was acked, so re-read our
                # pending entries after a pause.
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("sink_write_failed")
                cursor = "0"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), outage.failed(exc))


def vars_of(counters: SinkCounters) -> dict[str, int]:
    return {name: getattr(counters, name) for name in counters.__slots__}
