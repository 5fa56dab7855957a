"""A consumer-group member: the runtime every detector and sink runs, around a batch handler.

What it does, in order: claim the consumer name (a heartbeat key, so two live processes never
share one name), wait for Redis instead of crash-looping, create the group on every stream
(MKSTREAM) and let the handler set itself up; then run `readers` readers per stream until
`stop` is set. A stream's first reader owns the member's pending list: it re-reads it ("0")
at start and after an outage or a lost write, claims work stuck on dead members (XAUTOCLAIM),
and reads new entries (">"); the others only read new entries. The handler gets batches; what
it does with them (answer, write, acknowledge) is its business.

A group deleted from under a running member (its stream deleted) is created again at once:
what the deleted stream held is gone, but what is published from then on is answered.

The member's background tasks (the name claim's heartbeat, and whatever the handler starts on
`member.supervisor`) run under one supervisor (common/supervise.py): a failed task is logged
and restarted; one that keeps failing stops the member as a signal would (the batch in hand is
finished) and `failed` names it, so the entry point exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import redis.exceptions
import structlog

from facestream.common.log import get_logger
from facestream.common.streams.errors import REDIS_ERRORS, connection_race
from facestream.common.streams.groups import ensure_group
from facestream.common.streams.hotline import Arg, Hotline, stream_entries
from facestream.common.streams.locks import LockKeeper, claim_consumer_name
from facestream.common.streams.outage import Outage, until_available
from facestream.common.streams.recovery import Reclaimer
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient, Entry
from facestream.common.supervise import RestartPolicy, Supervisor

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Subscription:
    """Which streams a member reads, as whom, and how."""

    streams: tuple[str, ...]  # one per partition, in partition order
    group: str
    consumer: str
    claim_key: str  # the consumer-name claim, kept alive while the member runs
    claim_ttl_ms: int
    count: int
    block_ms: int
    readers: int = 1  # per stream
    claim_idle_ms: int = 60_000
    claim_every_ms: int = 5_000


@dataclass(slots=True)
class Batch:
    stream: int  # index into Subscription.streams (the partition)
    entries: list[Entry]
    # Delivery counts, for entries re-read from the pending list or claimed; None for new ones.
    deliveries: dict[str, int] | None = None


@dataclass(slots=True)
class MemberCounters:
    """What every member counts; a handler's counters add their own fields."""

    claimed: int = 0  # entries taken over from other members (XAUTOCLAIM)
    deleted: int = 0  # entries deleted from the stream while pending: nothing to answer

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Handler:
    """What a member runs. Every method but `handle` has a default that does nothing; a
    handler sets `counters` (a MemberCounters, or its own subclass of it)."""

    counters: MemberCounters

    # Errors that mean "back off, then re-read the pending list": Redis away, a lost write.
    retry_on: tuple[type[Exception], ...] = REDIS_ERRORS

    async def start(self) -> None:
        """Set up once Redis answers and the groups exist (retried while Redis is away)."""

    async def handle(self, batch: Batch) -> None:
        raise NotImplementedError

    async def tick(self) -> None:
        """Timed work before each read (e.g. re-checking deferred entries)."""

    def next_due(self) -> float | None:
        """When the next timed work is due (monotonic seconds): reads block no longer."""
        return None

    def busy(self) -> bool:
        """True while the handler cannot take new entries (they would only queue)."""
        return False

    async def until_free(self, timeout_s: float) -> None:
        """Wait while busy, at most `timeout_s`."""
        await asyncio.sleep(timeout_s)

    def in_hand(self, stream: int) -> set[str]:
        """Entry ids being worked on: a re-read of the pending list does not hand them again."""
        return set()

    def rewind_needed(self) -> bool:
        """True once after the handler lost entries it held (a write failed in the
        background): the pending list is read again."""
        return False

    def claimed(self, entries: int, deleted: int) -> None:
        """Counts of an XAUTOCLAIM step: entries taken over, entries deleted while pending."""
        self.counters.claimed += entries
        self.counters.deleted += deleted

    async def finish(self) -> None:
        """On stop, after the readers ended: finish the work in hand."""

    async def close(self) -> None:
        """Release what `start` took; runs whether or not `start` ran."""

    def summary(self) -> Mapping[str, object]:
        return self.counters.as_dict()


@dataclass(slots=True)
class _Reader:
    member: Member
    index: int  # which stream
    first: bool
    reclaimer: Reclaimer
    cursor: str | None = field(default=None)
    # Its own connection for its reads (a blocking read holds one): common/streams/hotline.py.
    hotline: Hotline | None = None

    def rewind(self) -> None:
        if self.first:
            self.cursor = "0"

    async def run(self) -> None:
        m = self.member
        if len(m.sub.streams) > 1:
            structlog.contextvars.bind_contextvars(partition=self.index)
        # Redis away and the handler's own failures (a sink's write) are told apart in the logs.
        outage, failing = Outage(log), Outage(log, f"{m.what}_work")
        while not m.stop.is_set():
            try:
                await self.step()
                outage.ok()
                failing.ok()
            except Exception as exc:
                if isinstance(exc, redis.exceptions.ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(*REDIS_ERRORS):  # else the next step pauses
                        await m.recreate_group(self.index)
                elif isinstance(exc, REDIS_ERRORS) or connection_race(exc):
                    await self._pause(outage, exc)
                elif isinstance(exc, m.handler.retry_on):
                    # The handler's own failure (a sink's write): say so, with the trace.
                    log.exception(f"{m.what}_step_failed")
                    await self._pause(failing, exc)
                else:
                    raise

    async def _pause(self, outage: Outage, exc: Exception) -> None:
        # Whatever was in hand stays pending in our list: re-read after the pause.
        self.member.rewind()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.member.stop.wait(), outage.failed(exc))

    async def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        m = self.member
        if self.hotline is not None:
            return await self._read_on_hotline(self.hotline, start, block_ms)
        # redis-py types RESP2 and RESP3 replies alike; ours (RESP2) is [[stream, entries]].
        reply: Any = await m.client.xreadgroup(
            m.sub.group,
            m.sub.consumer,
            {m.sub.streams[self.index]: start},
            count=m.sub.count,
            block=block_ms,
        )
        if not reply:
            return []
        entries: list[Entry] = reply[0][1]
        return entries

    async def _read_on_hotline(
        self, hotline: Hotline, start: str, block_ms: int | None
    ) -> list[Entry]:
        sub = self.member.sub
        command: list[Arg] = ["XREADGROUP", "GROUP", sub.group, sub.consumer, "COUNT", sub.count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        reply = await hotline.call(*command, "STREAMS", sub.streams[self.index], start)
        return stream_entries(reply[0][1]) if reply else []

    async def step(self) -> None:
        m, h = self.member, self.member.handler
        await h.tick()
        if h.rewind_needed():
            m.rewind()
        if self.cursor is not None:
            entries = await self._read(self.cursor, None)
            if not entries:
                self.cursor = None
                return
            self.cursor = entries[-1][0].decode()
            await self._redelivered(entries)
            return
        if h.busy():
            await h.until_free(self._block_s())
            return
        if self.first and self.reclaimer.due():
            # Work stuck on members that died or hang: take it over.
            claimed, deleted = await self.reclaimer.claim()
            h.claimed(len(claimed), len(deleted))
            if claimed:
                await self._redelivered(claimed)
                return
        entries = await self._read(">", max(1, int(self._block_s() * 1000)))
        if entries:
            await h.handle(Batch(self.index, entries))

    def _block_s(self) -> float:
        block = self.member.sub.block_ms / 1000
        due = self.member.handler.next_due()
        if due is not None:
            block = max(0.001, min(block, due - time.monotonic()))
        return block

    async def _redelivered(self, entries: list[Entry]) -> None:
        handler = self.member.handler
        in_hand = handler.in_hand(self.index)
        fresh = [e for e in entries if e[0].decode() not in in_hand]
        counts = await self.reclaimer.deliveries([e[0].decode() for e in fresh])
        # Asked again after the round trip: an entry whose answer was written meanwhile (its
        # write in flight when the pending list or the claim was read) is no longer pending,
        # and one another reader took meanwhile is in hand. Either would be answered twice.
        in_hand = handler.in_hand(self.index)
        fresh = [e for e in fresh if e[0].decode() in counts and e[0].decode() not in in_hand]
        await handler.handle(Batch(self.index, fresh, counts))


class Member:
    def __init__(
        self,
        client: AsyncClient,
        sub: Subscription,
        handler: Handler,
        what: str,
        policy: RestartPolicy | None = None,
        hotlines: Callable[[], Hotline | None] | None = None,
    ) -> None:
        """`hotlines`: makes each reader's own connection for its reads (None: redis-py's)."""
        self.client = client
        self.sub = sub
        self.handler = handler
        self.what = what  # "detector", "sink": names the start and stop log lines
        self.stop = asyncio.Event()
        self.policy = policy or RestartPolicy()
        self.supervisor = Supervisor(self.policy, self._give_up, log)
        self.failed: str | None = None  # the background task that kept failing, if one did
        self.scripts = Scripts(client)
        self.readers = [
            _Reader(
                self,
                index,
                first=reader == 0,
                reclaimer=Reclaimer(
                    client,
                    stream,
                    sub.group,
                    sub.consumer,
                    sub.claim_idle_ms,
                    sub.claim_every_ms,
                    sub.count,
                ),
                cursor="0" if reader == 0 else None,  # own pending first
                hotline=hotlines() if hotlines is not None else None,
            )
            for index, stream in enumerate(sub.streams)
            for reader in range(sub.readers)
        ]

    def _give_up(self, task: str) -> None:
        # The normal stop: finish what is in hand, then the entry point exits non-zero.
        self.failed = task
        self.stop.set()

    def rewind(self) -> None:
        """Re-read the pending list (every stream's first reader)."""
        for reader in self.readers:
            reader.rewind()

    async def _groups(self) -> bool:
        for stream in self.sub.streams:
            await ensure_group(self.client, stream, self.sub.group)
        return True

    async def recreate_group(self, index: int) -> None:
        stream = self.sub.streams[index]
        created = await ensure_group(self.client, stream, self.sub.group)
        log.warning(
            "group_recreated" if created else "group_found",
            stream=stream,
            group=self.sub.group,
            hint="the stream was deleted: what it held is gone; new entries are read",
        )
        self.rewind()

    async def _start(self) -> bool:
        await self._groups()
        await self.handler.start()
        return True

    async def run(self) -> None:
        sub = self.sub
        # Every log line of this task and the tasks it starts names the consumer.
        structlog.contextvars.bind_contextvars(consumer=sub.consumer)
        # A fresh one per run: a member run again starts its tasks again.
        self.supervisor = Supervisor(self.policy, self._give_up, log)
        self.failed = None
        token = await until_available(
            lambda: claim_consumer_name(self.client, sub.claim_key, sub.claim_ttl_ms),
            self.stop,
            log,
        )
        try:
            started_ok = await until_available(self._start, self.stop, log) if token else None
        except BaseException:
            await self.supervisor.close()  # whatever the failed start had begun
            raise
        if token is None or started_ok is None:
            await self.supervisor.close()
            await self.handler.close()
            return  # stopped before Redis came
        keeper = LockKeeper(self.scripts, sub.claim_ttl_ms)
        keeper.hold(sub.claim_key, token)
        stopped = self.supervisor.stopped
        self.supervisor.start("consumer_claim", lambda: keeper.run(self.client, stopped))
        started = time.monotonic()
        try:
            await asyncio.gather(*(reader.run() for reader in self.readers))
            await self.handler.finish()
        finally:
            await self.supervisor.close()
            await self.handler.close()
            for reader in self.readers:
                if reader.hotline is not None:
                    reader.hotline.close()
            with contextlib.suppress(*REDIS_ERRORS):  # else it expires
                await self.scripts.lock_release(self.client, sub.claim_key, token)
            log.info(
                f"{self.what}_stopped",
                seconds=round(time.monotonic() - started, 1),
                **({"failed_task": self.failed} if self.failed else {}),
                **self.handler.summary(),
            )


def stop_on_signals(stop: Callable[[], None], what: str) -> None:
    """SIGINT / SIGTERM: the first stops gracefully (the work in hand is finished), the second
    at once; unfinished entries stay pending and are re-read or claimed later."""
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(130)
        log.info(
            "stopping",
            what=what,
            signal=signal.Signals(signum).name,
            hint="finishing the work in hand; signal again to stop at once",
        )
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
