"""The detector's write step: one pipelined round trip per batch of answers (on a cluster,
one per ordered step).

Order matters: cache entries (each releasing its lock atomically), then the Bloom adds that
vouch for them, then replies, then per partition the ack-gated emit. Replies go before the ack
so a crash in between can repeat a reply (the gateway dedupes by id) but never lose one;
results go out through the emit script, after a successful XACK, where a partition's streams
share a slot (see `_stream_steps` for the cross-slot case).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from facestream.common.cache.store import Put, queue_puts
from facestream.common.contract.keys import Partition
from facestream.common.contract.schema import RESULT_FIELD, Result
from facestream.common.log import get_logger
from facestream.common.streams.ack_gated import DeadLetter, Emit, acknowledge_entries
from facestream.common.streams.errors import REDIS_ERRORS, TRANSIENT
from facestream.common.streams.scripts import Step
from facestream.common.streams.types import AsyncPipeline
from facestream.detector import metrics
from facestream.detector.context import WithContext
from facestream.detector.jobs import now_ms

log = get_logger(__name__)
RETRIES = 4


@dataclass(slots=True)
class BatchWrite:
    # (partition, result, reply_to)
    results: list[tuple[Partition, Result, str | None]] = field(default_factory=list)
    cache_puts: list[Put] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)  # (lock key, token)
    ack_only: list[tuple[Partition, str]] = field(default_factory=list)
    # Given up after too many deliveries: (partition, error result, event payload, deliveries).
    dead: list[tuple[Partition, Result, bytes, int]] = field(default_factory=list)
    # Results whose event asked for crops, with the image to cut them from: cut before the
    # write (ResultFactory.cut_crops), off the event loop.
    crops: list[tuple[Result, bytes]] = field(default_factory=list)

    def add(
        self,
        part: Partition,
        result: Result,
        reply_to: str | None = None,
        crops_from: bytes | None = None,
    ) -> None:
        self.results.append((part, result, reply_to))
        if crops_from is not None:
            self.crops.append((result, crops_from))

    def __bool__(self) -> bool:
        return bool(self.results or self.cache_puts or self.releases or self.ack_only or self.dead)

    def entries(self, partition: int) -> set[str]:
        """The entries of one partition this write answers (pending until its ack lands)."""
        answered = [(part, result.entry) for part, result, _ in self.results]
        answered += [(part, result.entry) for part, result, _, _ in self.dead]
        answered += self.ack_only
        return {entry for part, entry in answered if part.index == partition}


# What Redis adds to a stream entry besides its payload: the entry's header, field name and
# share of its node, and the allocator's rounding up to a size class (jemalloc's classes are at
# most a quarter apart: a 66 KB reply takes 80 KiB).
REPLY_ENTRY_OVERHEAD = 64
# The stream's own structures, and the one node of small entries that MAXLEN ~ may keep over.
REPLY_STREAM_OVERHEAD = 8 * 1024


def reply_cost(size: int) -> int:
    """The memory one reply of `size` bytes can take in its stream."""
    return size + size // 4 + REPLY_ENTRY_OVERHEAD


def reply_maxlen(size: int, max_bytes: int, max_entries: int) -> int:
    """How many entries a reply stream keeps after a reply of `size` bytes: as many of this
    size as fit in `max_bytes` (at least this one), at most `max_entries`. Reply streams are
    written only with XADD (the detector's role may not read or trim them otherwise), so the
    byte bound rides on each XADD's MAXLEN. The gateway reads each reply as it lands; what is
    trimmed is almost always read already. A stream of equal-sized answers stays under
    `max_bytes`; answers of two sizes (with and without crops) under about twice that."""
    room = max(0, max_bytes - REPLY_STREAM_OVERHEAD)
    return max(1, min(max_entries, room // reply_cost(size)))


class WriteError(RuntimeError):
    pass


# What the detector's loop treats as an outage: Redis away or reshaping, or a write that failed.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, WriteError)


class Writer(WithContext):
    async def write(self, out: BatchWrite) -> None:
        """Write with retries: every step is safe to repeat (cache and Bloom writes are
        idempotent, releases check tokens, a repeated emit finds its entries acked and publishes
        nothing, a repeated reply is deduped by id downstream)."""
        if not out:
            return
        payloads = [result.to_wire() for _, result, _ in out.results]  # once, not per try
        for attempt in range(RETRIES):
            try:
                await self._write_once(out, payloads)
                return
            except TRANSIENT as exc:
                if attempt == RETRIES - 1:
                    raise
                log.info("write_retry", attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(0.05 * 2**attempt)

    def _side_effects(self, out: BatchWrite, payloads: list[bytes]) -> Step:
        """Cache entries (each releasing its lock), the Bloom adds vouching for them, lock
        releases, replies: everything that must land before the acks."""
        s = self.settings
        created = now_ms()

        def build(pipe: AsyncPipeline) -> None:
            queue_puts(pipe, self.cache, self.bloom, out.cache_puts, s.cache_ttl_s * 1000, created)
            for lock_key, token in out.releases:
                self.scripts.lock_release(pipe, lock_key, token)
            for (_, _, reply_to), payload in zip(out.results, payloads, strict=True):
                if reply_to is not None:
                    maxlen = reply_maxlen(len(payload), s.reply_max_bytes, s.reply_maxlen)
                    pipe.xadd(reply_to, {RESULT_FIELD: payload}, maxlen=maxlen, approximate=True)
                    # A reply to a gateway that is gone must not recreate a key that lives
                    # forever.
                    pipe.pexpire(reply_to, s.reply_ttl_s * 1000)

        return build

    def _stream_steps(
        self, out: BatchWrite, payloads: list[bytes], at: dict[str, list[int]]
    ) -> list[Step]:
        """Per partition: plain acks, dead letters and the ack-gated emit. Where a partition's
        streams share a slot (or on one server) each is one script; on a cluster with the
        untagged v1 names they span slots, so results and dead letters are written first and
        the acks after: a crash in between repeats a result (deduped by id downstream), never
        loses one. `at` gets the answer offset of each script call, by kind."""
        s = self.settings
        parts: dict[int, Partition] = {}
        emits: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
        dead: dict[int, list[tuple[str, bytes, bytes, int]]] = defaultdict(list)
        acks: dict[int, list[str]] = defaultdict(list)
        for (part, result, _), payload in zip(out.results, payloads, strict=True):
            parts[part.index] = part
            emits[part.index].append((result.entry, payload))
        for part, result, event, count in out.dead:
            parts[part.index] = part
            dead[part.index].append((result.entry, result.to_wire(), event, count))
        for part, entry in out.ack_only:
            parts[part.index] = part
            acks[part.index].append(entry)

        g, delete = s.detector_group, s.delete_acked_images
        calls: list[tuple[str, DeadLetter | Emit]] = []
        for i, part in sorted(parts.items()):
            if dead[i]:
                dl = DeadLetter(part.images, part.results, part.dlq, g, delete, s.consumer, dead[i])
                calls.append(("dead", dl))
            if emits[i]:
                calls.append(("emit", Emit(part.images, part.results, g, delete, emits[i])))

        def plain_acks(pipe: AsyncPipeline) -> None:
            for i, part in sorted(parts.items()):
                acknowledge_entries(pipe, part.images, g, delete, acks[i])

        def scripted(pipe: AsyncPipeline) -> None:
            at["dead"].clear()
            at["emit"].clear()
            start = len(pipe)
            plain_acks(pipe)
            for kind, call in calls:
                at[kind].append(len(pipe) - start)
                call.queue(self.scripts, pipe)

        if self.keys.streams_in_one_slot(s.cluster):
            return [scripted]
        splits = [call.split() for _, call in calls]

        def publish(pipe: AsyncPipeline) -> None:
            for split in splits:
                split.publish(pipe)

        def acknowledge(pipe: AsyncPipeline) -> None:
            plain_acks(pipe)
            for split in splits:
                split.acknowledge(pipe)

        return [publish, acknowledge]

    async def _write_once(self, out: BatchWrite, payloads: list[bytes]) -> None:
        at: dict[str, list[int]] = {"dead": [], "emit": []}
        side = self._side_effects(out, payloads)
        streams = self._stream_steps(out, payloads, at)
        if not self.settings.cluster:
            side_answers, *stream_answers = await self.scripts.run_steps(
                self.client, [side, *streams], together=True
            )
        else:
            (side_answers,) = await self.scripts.run_steps(self.client, [side], together=False)
            stream_answers = await self.scripts.run_steps(self.client, streams, together=False)
        for answer in side_answers:
            if isinstance(answer, Exception):
                # A cache write, Bloom add or reply failed: results still go out; the cache
                # is an optimisation and the results stream is the record.
                log.warning("write_step_failed", error=str(answer))
        for answers in stream_answers:
            for answer in answers:
                if isinstance(answer, Exception):
                    raise WriteError(f"ack / emit failed: {answer}")
        if len(stream_answers) != len(streams):
            raise WriteError("ack / emit stopped early")
        self._count(out, stream_answers[0] if len(streams) == 1 else None, at)

    def _count(self, out: BatchWrite, answers: list[Any] | None, at: dict[str, list[int]]) -> None:
        """Counters, metrics and logs of one write. `answers`: the scripted step's answers
        (None when the step was split: every result and dead letter went out)."""
        dead_ok: list[Any] = []
        emit_ok: list[Any] = []
        if answers is None:
            dead_ok, emit_ok = [1] * len(out.dead), [1] * len(out.results)
        else:
            for offset in at["dead"]:
                dead_ok += answers[offset]
            for offset in at["emit"]:
                emit_ok += answers[offset]
        # The scripts' answers come in partition order; match them up the same way.
        dead = sorted(out.dead, key=lambda d: d[0].index)
        results = sorted(out.results, key=lambda r: r[0].index)
        for (_, result, _, count), ok in zip(dead, dead_ok, strict=True):
            if ok:
                self.counters.dead_lettered += 1
                metrics.DEAD_LETTERS.labels("detector").inc()
                log.warning(
                    "dead_lettered", entry=result.entry, event_id=result.id, deliveries=count
                )
        outcomes = {"inferred": 0, "cached": 0, "error": 0}
        for (_, result, _), ok in zip(results, emit_ok, strict=True):
            if not ok:
                self.counters.not_emitted += 1
                continue
            self.counters.results += 1
            outcome = "inferred"
            if result.error is not None:
                self.counters.errors += 1
                outcome = "error"
            elif result.cached:
                self.counters.cached += 1
                outcome = "cached"
            outcomes[outcome] += 1
            if result.ts_ms is not None:
                metrics.END_TO_END.observe(max(0, result.done_ms - result.ts_ms) / 1000)
        for outcome, n in outcomes.items():
            if n:
                metrics.RESULT_BY_OUTCOME[outcome].inc(n)
