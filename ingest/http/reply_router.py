"""One reply stream per gateway process and one blocking reader that hands results to the
requests waiting for them: no polling per request.

Each waiting request gets its own event's result: waiters are found by (event id, sha256) and
then told apart by the images-stream entry their publish returned, which the result carries
(`entry`). Two clients that send the same id and the same image thus never get each other's
answer (each carries its own `meta` and `source`). A reply can beat its publish's answer back
(the reader runs on the same loop), so a reply with no waiter for its entry yet is held a
moment for it. A repeated reply (allowed by the contract) finds no waiter and is dropped.

The reply stream is written only by detectors: each reply bounds it (MAXLEN) and sets its TTL,
so it expires once its gateway stops getting answers. The gateway only reads it (its Redis
user may not trim, expire or delete anything). The name carries 128 random bits: the ingest
user may read `reply:gw-*`, so an unguessable name is what keeps one gateway's answers from
another (the names are only in events, which the ingest user cannot read).

The reader survives any entry (a malformed one is logged, counted and skipped) and waits out
Redis being away. Any other error ends it: it runs under a supervisor (common/supervise.py)
that logs the error and restarts it, carrying on from the last entry it read. `healthy` is
false while it cannot read or is waiting to be restarted, and /readyz says so. A reader that
keeps failing stops the gateway as SIGTERM would (requests in flight are finished) and the
process exits 1, for whatever runs it to start a fresh one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import RESULT_FIELD, ImageEvent
from facestream.common.log import get_logger
from facestream.common.metrics import entry_age_s
from facestream.common.settings import GatewaySettings
from facestream.common.streams.connection import hotline
from facestream.common.streams.errors import REDIS_ERRORS, connection_race
from facestream.common.streams.hotline import Hotline, stream_entries
from facestream.common.streams.outage import Outage
from facestream.common.streams.types import AsyncClient
from facestream.common.supervise import RestartPolicy, Supervisor
from facestream.ingest.http import metrics
from facestream.ingest.publisher import AsyncPublisher

log = get_logger(__name__)

# How long, and how many, replies that arrived before their publish returned are kept.
EARLY_KEEP_S = 30.0
EARLY_MAX = 10_000


@dataclass(eq=False, slots=True)
class Waiter:
    fut: asyncio.Future[dict[str, Any]]
    entry: str | None = None  # known once the publish returned
    key: tuple[str, str] = field(default=("", ""))


@dataclass(frozen=True, slots=True)
class Early:
    """A reply that came before its publish returned, kept a moment for its waiter."""

    seen: float  # time.monotonic()
    result: dict[str, Any]
    added: str  # its reply-stream entry id: the `reply` stage starts at its time


def _stop_gateway(task: str) -> None:
    # uvicorn's own SIGTERM handling: no new requests, those in flight finished, then the
    # lifespan's shutdown, where `stop` exits non-zero.
    signal.raise_signal(signal.SIGTERM)


class ReplyRouter:
    def __init__(
        self,
        client: AsyncClient,
        keys: Keys,
        ttl_s: int,
        block_ms: int = 1000,
        policy: RestartPolicy | None = None,
        on_give_up: Callable[[str], None] | None = None,
        hotline: Hotline | None = None,
    ) -> None:
        """`hotline`: the reader's own connection (common/streams/hotline.py); None: redis-py's."""
        self.client = client
        self.hotline = hotline
        self.stream = keys.reply_stream(f"gw-{uuid.uuid4().hex}")
        self.ttl_ms = ttl_s * 1000
        self.block_ms = block_ms
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        self._early: OrderedDict[str, Early] = OrderedDict()
        self._policy = policy or RestartPolicy()
        # The gateway's own stop unless told otherwise (tests, an embedding application).
        self._exit_on_stop = on_give_up is None
        self._on_give_up = on_give_up or _stop_gateway
        self._supervisor: Supervisor | None = None
        self._reading = False
        self._last = "0-0"  # the last entry read: a restarted reader carries on after it
        self.gave_up = False

    @classmethod
    def of(cls, client: AsyncClient, keys: Keys, settings: GatewaySettings) -> ReplyRouter:
        """The gateway's router: its restarts as FACESTREAM_TASK_* say."""
        return cls(
            client,
            keys,
            settings.reply_ttl_s,
            policy=RestartPolicy.of(settings),
            hotline=hotline(settings, client),
        )

    @property
    def healthy(self) -> bool:
        """The reader runs and its last read worked."""
        return (
            self._reading
            and self._supervisor is not None
            and self._supervisor.running("reply_reader")
        )

    def expect(self, event_id: str, sha256: str) -> Waiter:
        """Register before publishing, so a fast answer cannot arrive unheard."""
        waiter = Waiter(asyncio.get_running_loop().create_future(), key=(event_id, sha256))
        self._waiters.setdefault(waiter.key, []).append(waiter)
        return waiter

    def published(self, waiter: Waiter, entry: str) -> None:
        waiter.entry = entry
        early = self._early.pop(entry, None)
        if early is not None and early.result.get("id") == waiter.key[0]:
            self._resolve(waiter, early.result, early.added)

    def forget(self, waiter: Waiter) -> None:
        waiters = self._waiters.get(waiter.key)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.key]

    async def publish_and_wait(
        self, publisher: AsyncPublisher, event: ImageEvent, timeout_s: float
    ) -> dict[str, Any] | None:
        """Publish an event whose reply_to is this stream and wait for its result; None when
        `timeout_s` passes first (the result still goes to the results stream)."""
        waiter = self.expect(event.id, event.sha256 or event.content_sha256())
        try:
            self.published(waiter, await publisher.publish(event))
            return await asyncio.wait_for(waiter.fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            self.forget(waiter)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _resolve(self, waiter: Waiter, result: dict[str, Any], added: str = "") -> None:
        """Hand `result` to its waiter; `added`: its reply-stream entry id (its `reply` stage,
        from the detector's write to here, ends now)."""
        self.forget(waiter)
        if not waiter.fut.done():
            waiter.fut.set_result(result)
            if added:
                metrics.STAGE_REPLY.observe(entry_age_s(added))

    def _deliver(self, result: Any, added: str = "") -> None:
        """A reply read from the stream (`added`: its entry id) to the request waiting for it."""
        if not isinstance(result, dict):
            raise TypeError(f"a reply must be a map, not {type(result).__name__}")
        event_id, sha, entry = result.get("id"), result.get("sha256") or "", result.get("entry")
        if not (isinstance(event_id, str) and isinstance(sha, str) and isinstance(entry, str)):
            raise TypeError("a reply needs str id, sha256 and entry")
        waiters = self._waiters.get((event_id, sha), [])
        for waiter in waiters:
            if waiter.entry == entry:
                self._resolve(waiter, result, added)
                return
        if any(w.entry is None for w in waiters):  # its publish has not returned yet
            now = time.monotonic()
            self._early[entry] = Early(now, result, added)
            while self._early and (
                len(self._early) > EARLY_MAX
                or next(iter(self._early.values())).seen < now - EARLY_KEEP_S
            ):
                self._early.popitem(last=False)

    def _skip(self, entry: str, why: str) -> None:
        metrics.BAD_REPLIES.inc()
        log.warning("bad_reply", entry=entry, error=why)

    async def start(self) -> None:
        self._supervisor = Supervisor(self._policy, self._give_up, log)
        self._supervisor.start("reply_reader", self._run)

    def _give_up(self, task: str) -> None:
        self.gave_up = True
        self._on_give_up(task)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.close()
        if self.hotline is not None:
            self.hotline.close()
        if self.gave_up and self._exit_on_stop:
            # After uvicorn's graceful shutdown: exit 1, not the 0 of a requested stop.
            log.error("gateway_exiting", reason="the reply reader kept failing", code=1)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    async def _read(self) -> Any:
        """The next replies, as redis-py's XREAD gives them: [[stream, [(id, fields)]]]."""
        if self.hotline is None:
            return await self.client.xread(
                {self.stream: self._last}, count=500, block=self.block_ms
            )
        raw = await self.hotline.call(
            "XREAD", "COUNT", 500, "BLOCK", self.block_ms, "STREAMS", self.stream, self._last
        )
        return [[name, stream_entries(entries)] for name, entries in raw or []]

    async def _run(self) -> None:
        outage = Outage(log, "reply_reader")
        assert self._supervisor is not None, "started"
        stopped = self._supervisor.stopped
        while not stopped.is_set():
            try:
                reply = await self._read()
                self._reading = True
                outage.ok()
            except Exception as exc:
                self._reading = False
                if not isinstance(exc, REDIS_ERRORS) and not connection_race(exc):
                    raise  # not an outage: the supervisor logs it and restarts the reader
                await asyncio.sleep(outage.failed(exc))
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self._last = last = entry_id.decode()
                    try:
                        self._deliver(msgpack.unpackb(fields[RESULT_FIELD], raw=False), last)
                    except Exception as exc:  # anyone who may XADD here may write anything
                        self._skip(last, f"{type(exc).__name__}: {exc}")
