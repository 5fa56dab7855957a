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
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from facestream.common.contract.keys import Keys, Partition
from facestream.common.contract.schema import RESULT_FIELD, decode_result
from facestream.common.log import get_logger
from facestream.common.settings import SinkSettings
from facestream.common.streams.ack_gated import SinkDeadLetter
from facestream.common.streams.member import Batch, Handler, Member, MemberCounters, Subscription
from facestream.common.streams.scripts import Scripts, Step
from facestream.common.streams.types import AsyncClient, AsyncPipeline, Entry
from facestream.common.supervise import RestartPolicy
from facestream.sink import metrics

log = get_logger(__name__)


@dataclass(slots=True)
class Item:
    entry: str  # results-stream entry id
    payload: bytes
    result: dict[str, Any] | None  # None when the payload is not a v1 result


@dataclass(slots=True)
class WriteOutcome:
    """What became of the items handed to a sink: written, or given up with a reason."""

    written: list[Item]
    dead: list[tuple[Item, str]]


class Sink(Protocol):
    kind: str

    async def open(self) -> None: ...

    async def write(self, items: list[Item]) -> WriteOutcome: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class SinkCounters(MemberCounters):
    read: int = 0
    written: int = 0
    dead: int = 0
    skipped: int = 0


class SinkRunner(Handler):
    # Redis away, or the sink's own write failed: nothing was acked, so the member re-reads
    # its pending entries after a pause.
    retry_on = (Exception,)
    counters: SinkCounters

    def __init__(self, settings: SinkSettings, client: AsyncClient, sink: Sink) -> None:
        self.settings = settings
        self.client = client
        self.sink = sink
        self.keys = Keys(settings.prefix, settings.partitions)
        self.group = settings.sink_group_of(sink.kind)
        self.counters = SinkCounters()
        self.scripts = Scripts(client)
        self._writing = asyncio.Lock()
        self._opened = False
        sub = Subscription(
            streams=tuple(part.results for part in self.keys.parts),
            group=self.group,
            consumer=settings.consumer,
            claim_key=self.keys.consumer_claim(self.group, settings.consumer),
            claim_ttl_ms=settings.consumer_claim_ttl_ms,
            count=settings.read_count,
            block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms,
            claim_every_ms=settings.claim_every_ms,
        )
        # Its background task (the name claim's heartbeat) runs under the member's supervisor.
        self.member = Member(client, sub, self, "sink", RestartPolicy.of(settings))
        self.stop = self.member.stop

    async def run(self) -> SinkCounters:
        structlog.contextvars.bind_contextvars(sink=self.sink.kind)
        await self.member.run()
        return self.counters

    async def start(self) -> None:
        await self.sink.open()
        self._opened = True
        log.info("sink_ready", group=self.group, streams=[p.results for p in self.keys.parts])

    async def close(self) -> None:
        if self._opened:
            await self.sink.close()

    @staticmethod
    def _item(entry: Entry) -> Item:
        raw_id, fields = entry
        payload = (fields or {}).get(RESULT_FIELD, b"")
        try:
            result: dict[str, Any] | None = decode_result(payload)
        except Exception:
            result = None  # dead-lettered as "not a v1 result"
        return Item(raw_id.decode(), payload, result)

    async def _acknowledge(self, part: Partition, items: list[Item], outcome: WriteOutcome) -> None:
        """Acknowledge the batch, dead letters included. Where the results and dead-letter
        streams share a slot (or on one server) each dead letter is one script step with its
        acknowledgement, written only if that acknowledgement counted; on a cluster with the
        untagged v1 names they span slots: the script's split, dead letters first."""
        dead = [(item.entry, item.payload, reason[:1000]) for item, reason in outcome.dead]
        dead_ids = {entry for entry, _, _ in dead}
        rest = [i.entry for i in items if i.entry not in dead_ids]
        settings, kind = self.settings, self.sink.kind

        letters = SinkDeadLetter(part.results, part.dlq, self.group, kind, settings.consumer, dead)

        def acks(pipe: AsyncPipeline) -> None:
            if rest:
                pipe.xack(part.results, self.group, *rest)

        def scripted(pipe: AsyncPipeline) -> None:
            if dead:
                letters.queue(self.scripts, pipe)
            acks(pipe)

        split = letters.split()

        def acknowledge(pipe: AsyncPipeline) -> None:
            split.acknowledge(pipe)
            acks(pipe)

        one_slot = self.keys.streams_in_one_slot(settings.cluster)
        steps: list[Step] = [scripted] if one_slot else [split.publish, acknowledge]
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

    async def handle(self, batch: Batch) -> None:
        items = [self._item(e) for e in batch.entries]
        if not items:
            return
        part, deliveries = self.keys.parts[batch.stream], batch.deliveries
        self.counters.read += len(items)
        limit = self.settings.max_deliveries
        poison = {i.entry for i in items if deliveries and deliveries.get(i.entry, 1) >= limit}
        good = [i for i in items if i.result is not None and i.entry not in poison]
        async with self._writing:
            outcome = await self.sink.write(good) if good else WriteOutcome([], [])
        outcome.dead.extend((i, "not a v1 result") for i in items if i.result is None)
        outcome.dead.extend(
            (i, f"max_deliveries: delivered {deliveries[i.entry]} times, never written")
            for i in items
            if i.entry in poison and deliveries is not None
        )
        handled = {i.entry for i in outcome.written} | {i.entry for i, _ in outcome.dead}
        self.counters.skipped += sum(1 for i in good if i.entry not in handled)
        await self._acknowledge(part, items, outcome)
