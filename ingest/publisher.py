"""Publishing image events onto the images stream (wire contract v1), sync and asyncio.

Validation happens at the door (byte limit, image magic bytes, field limits) with clear
exceptions, and publishing is refused while the detectors are too far behind (backpressure):
nothing is ever dropped silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster
import redis.cluster

from facestream.common.contract.imagetypes import sniff_format
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import (
    DEFAULT_LIMITS,
    EVENT_FIELD,
    MAX_ID_CHARS,
    MAX_SOURCE_CHARS,
    ImageEvent,
    Limits,
    meta_problem,
)
from facestream.common.settings import PublisherSettings
from facestream.common.streams.connection import pipeline
from facestream.common.streams.errors import TRANSIENT
from facestream.common.streams.groups import group_info
from facestream.common.streams.hotline import Hotline
from facestream.common.streams.server_features import idempotent_xadd_from_hello
from facestream.common.streams.types import (
    AsyncClient,
    AsyncPipeline,
    AsyncRedisPipeline,
    SyncClient,
    SyncPipeline,
)
from facestream.ingest.coalesce import PerCycle, SingleFlight


class PublishError(Exception):
    """Refused at the door; `code` and `status` are what the HTTP gateway answers."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PublishError):
    pass


class ImageTooLarge(PublishError):
    code, status = "too_large", 413


class NotAnImage(PublishError):
    code, status = "not_an_image", 415


class Overloaded(PublishError):
    code, status = "overloaded", 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def make_event(
    image: bytes,
    event_id: str | None = None,
    *,
    source: str | None = None,
    meta: dict[str, Any] | None = None,
    reply_to: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    crops: bool = False,
) -> ImageEvent:
    """A validated v1 event with its sha256 and publish time."""
    max_bytes = limits.max_image_bytes
    if not image:
        raise BadRequest("the image is empty")
    if len(image) > max_bytes:
        raise ImageTooLarge(f"the image is {len(image)} bytes; the limit is {max_bytes}")
    if sniff_format(image) is None:
        raise NotAnImage("not a JPEG, PNG, WebP or BMP image (checked by its first bytes)")
    event_id = event_id or uuid.uuid4().hex
    if not 0 < len(event_id) <= MAX_ID_CHARS:
        raise BadRequest(f"id must be 1..{MAX_ID_CHARS} characters")
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise BadRequest(f"source must be at most {MAX_SOURCE_CHARS} characters")
    if meta is not None:
        problem = meta_problem(meta)  # before packing: msgpack itself fails on such values
        if problem is not None:
            raise BadRequest(problem)
        max_meta = limits.max_meta_bytes
        if len(msgpack.packb(meta, use_bin_type=True)) > max_meta:
            raise BadRequest(f"meta packs to over {max_meta} bytes")
    return ImageEvent(
        id=event_id,
        image=image,
        sha256=hashlib.sha256(image).hexdigest(),
        source=source,
        ts_ms=int(time.time() * 1000),
        meta=dict(meta) if meta is not None else None,
        reply_to=reply_to,
        crops=crops,
    )


def _lag_from(groups: list[dict[Any, Any]], group: str, xlen: int) -> int:
    info = group_info(groups, group)
    if info is None:
        return xlen  # no detector group yet: everything published so far is waiting
    lag = info.get("lag")
    # Redis reports no lag when it cannot compute it; every entry still in the stream is then
    # the upper bound (answered entries are deleted on ack).
    # Capped by the length: entries erased by an external XTRIM or DEL still count in Redis's
    # lag, but no detector will ever be handed them.
    return min(int(lag), xlen) if lag is not None else xlen


class Backpressure:
    """The detectors' lag and the images streams' memory, read at most every `check_ms`, and
    the refusal they imply. Between reads the publisher adds what it sent itself, so a burst
    cannot overshoot by more than one check's worth of other publishers' work."""

    def __init__(self, settings: PublisherSettings) -> None:
        self.max_lag = settings.max_lag
        # A count of events says nothing about memory (10,000 x 20 MiB is 200 GB): the
        # images streams' own size in Redis is bounded too.
        self.max_bytes = settings.max_queue_bytes
        self.check_s = settings.backpressure_check_ms / 1000
        self.retry_after_s = settings.retry_after_s
        self.group = settings.detector_group
        self.lag = 0
        self.bytes = 0
        self.checked = float("-inf")

    def due(self) -> bool:
        limited = self.max_lag > 0 or self.max_bytes > 0
        return limited and time.monotonic() - self.checked >= self.check_s

    def update(self, replies: list[Any], unread_answers: Any = None) -> None:
        """From (XINFO GROUPS, XLEN, MEMORY USAGE) replies, one triple per partition, and the
        MEMORY USAGE of the publisher's own reply stream (answers wait in Redis too: the same
        budget): the sum of the lags and of the streams' bytes."""
        lag = 0
        size = int(unread_answers) if isinstance(unread_answers, int) else 0  # None: none
        for groups, xlen, memory in zip(replies[::3], replies[1::3], replies[2::3], strict=True):
            groups = groups if isinstance(groups, list) else []  # no stream yet: an error
            lag += _lag_from(groups, self.group, int(xlen) if isinstance(xlen, int) else 0)
            size += int(memory) if isinstance(memory, int) else 0  # None: no stream yet
        self.lag, self.bytes = lag, size
        self.checked = time.monotonic()

    def check(self, adding: int = 1, adding_bytes: int = 0) -> None:
        if self.max_lag and self.lag + adding > self.max_lag:
            raise Overloaded(
                f"detectors are {self.lag} events behind (limit {self.max_lag}); retry later",
                self.retry_after_s,
            )
        if self.max_bytes and self.bytes + adding_bytes > self.max_bytes:
            raise Overloaded(
                f"the images queue and this publisher's unread answers hold {self.bytes} bytes "
                f"(limit {self.max_bytes}); retry later",
                self.retry_after_s,
            )

    def added(self, events: list[ImageEvent]) -> None:
        self.lag += len(events)
        self.bytes += _size(events)


def _size(events: list[ImageEvent]) -> int:
    return sum(len(e.image) for e in events)


RETRIES = 3


class _Producer:
    """What the sync and asyncio publishers share: the XADD form and its retry safety.

    A publish whose reply is lost (connection dropped) is retried. On Redis >= 8.6 the XADD
    carries `IDMP <producer> <event id:sha256>`, so the retry returns the first entry instead of
    adding a second; elsewhere a retry may add a duplicate, which sinks drop by (id, sha256).

    With several partitions, events go round-robin from a random start: an even spread with
    no coordination between publishers. (By content hash, every copy of a popular image would
    pile onto one partition; the single-flight lock already dedupes work across partitions.)
    A retry goes to the partition of the first try, where IDMP can find it.
    """

    def __init__(self, settings: PublisherSettings, reply_stream: str | None = None) -> None:
        self.settings = settings
        self.reply_stream = reply_stream
        self.keys = Keys(settings.prefix, settings.partitions)
        self.backpressure = Backpressure(settings)
        self.producer = f"{settings.consumer}-{uuid.uuid4().hex[:8]}"
        self.idmp: bool | None = None  # learnt from INFO on first use
        self._next = random.randrange(settings.partitions)

    def route(self, events: list[ImageEvent]) -> list[str]:
        """The images stream of each event."""
        parts = self.keys.parts
        streams = [parts[(self._next + i) % len(parts)].images for i in range(len(events))]
        self._next = (self._next + len(events)) % len(parts)
        return streams

    def queue(self, pipe: SyncPipeline | AsyncPipeline, event: ImageEvent, stream: str) -> None:
        payload = event.to_wire()
        if self.idmp:
            iid = f"{event.id}:{event.sha256}"
            pipe.execute_command(
                "XADD", stream, "IDMP", self.producer, iid, "*", EVENT_FIELD, payload
            )
        else:
            pipe.xadd(stream, {EVENT_FIELD: payload})

    def queue_lag(self, pipe: SyncPipeline | AsyncRedisPipeline) -> None:
        for part in self.keys.parts:
            pipe.xinfo_groups(part.images)
            pipe.xlen(part.images)
            # SAMPLES 0: every node of the stream, exact (a sample extrapolates one large
            # entry to the whole stream, or misses it). Its cost grows with the stream's
            # nodes, which the byte budget itself bounds; once per check_ms per publisher.
            pipe.memory_usage(part.images, samples=0)
        if self.reply_stream is not None:
            pipe.memory_usage(self.reply_stream, samples=0)

    def read_lag(self, replies: list[Any]) -> None:
        """The answers of the commands `queue_lag` queued, given to the back-pressure."""
        own = replies.pop() if self.reply_stream is not None else None
        self.backpressure.update(replies, own)


class Publisher(_Producer):
    """Synchronous publisher: XADD one event, or pipeline many in one round trip."""

    def __init__(self, settings: PublisherSettings, client: SyncClient) -> None:
        super().__init__(settings)
        self.client = client

    def _check(self, events: list[ImageEvent]) -> None:
        if self.idmp is None:
            self.idmp = idempotent_xadd_from_hello(_hello(self.client))
        if self.backpressure.due():
            pipe = self.client.pipeline(transaction=False)
            self.queue_lag(pipe)
            self.read_lag(pipe.execute(raise_on_error=False))
        self.backpressure.check(len(events), _size(events))
        self.backpressure.added(events)

    def publish(self, event: ImageEvent) -> str:
        return self.publish_many([event])[0]

    def publish_many(self, events: list[ImageEvent]) -> list[str]:
        self._check(events)
        streams = self.route(events)
        for attempt in range(RETRIES + 1):
            pipe = self.client.pipeline(transaction=False)
            for event, stream in zip(events, streams, strict=True):
                self.queue(pipe, event, stream)
            try:
                return [_entry_id(e) for e in pipe.execute()]
            except TRANSIENT:
                if attempt == RETRIES:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")


class AsyncPublisher(_Producer):
    """The asyncio twin of `Publisher`. Concurrent `publish` calls made in one event-loop cycle
    (a gateway serving many requests) share one pipelined round trip."""

    def __init__(
        self,
        settings: PublisherSettings,
        client: AsyncClient,
        reply_stream: str | None = None,
        hotline: Hotline | None = None,
    ) -> None:
        """`reply_stream`: the stream this publisher's waiting callers are answered on (a
        gateway's), whose unread answers count towards the byte budget. `hotline`: a connection
        of its own for the XADDs (common/streams/hotline.py; the caller closes it), else the
        client's."""
        super().__init__(settings, reply_stream)
        self.client = client
        self.hotline = hotline
        self._cycle: PerCycle[ImageEvent, str] = PerCycle(self._xadd)
        self._shared = SingleFlight()  # the INFO and lag reads of a burst of publishes

    async def _learn_idmp(self) -> None:
        if isinstance(self.client, aioredis.cluster.RedisCluster):
            await self.client.initialize()  # its node list, for _any_node
        self.idmp = idempotent_xadd_from_hello(await _hello(self.client))

    async def _read_lag(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.queue_lag(pipe)
        self.read_lag(await pipe.execute(raise_on_error=False))

    async def _check(self, events: list[ImageEvent]) -> None:
        if self.idmp is None:
            await self._shared.run("info", self._learn_idmp)
        if self.backpressure.due():
            await self._shared.run("lag", self._read_lag)
        self.backpressure.check(len(events), _size(events))
        self.backpressure.added(events)

    async def publish(self, event: ImageEvent) -> str:
        await self._check([event])
        return await self._cycle(event)

    async def publish_many(self, events: list[ImageEvent]) -> list[str]:
        await self._check(events)
        return await self._xadd(events)

    async def _xadd(self, events: list[ImageEvent]) -> list[str]:
        streams = self.route(events)
        for attempt in range(RETRIES + 1):
            try:
                return [_entry_id(e) for e in await self._send(events, streams)]
            except TRANSIENT:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _send(self, events: list[ImageEvent], streams: list[str]) -> list[Any]:
        pipe = pipeline(self.client, self.hotline)
        for event, stream in zip(events, streams, strict=True):
            self.queue(pipe, event, stream)
        return list(await pipe.execute())


def _hello(client: SyncClient | AsyncClient) -> Any:
    """HELLO (the server's name and version): a reply (sync) or an awaitable (asyncio)."""
    return client.execute_command("HELLO", **_any_node(client))


def _any_node(client: SyncClient | AsyncClient) -> dict[str, Any]:
    """A keyless command on a cluster client must name its node; any one will do."""
    if isinstance(client, redis.cluster.RedisCluster | aioredis.cluster.RedisCluster):
        # A node, not the RANDOM flag: redis-py's cluster client ignores flags for commands
        # it has no routing policy for.
        return {"target_nodes": client.get_random_node()}
    return {}


def _entry_id(entry: Any) -> str:
    return entry.decode() if isinstance(entry, bytes) else str(entry)
