"""Cache hits answered by the gateway itself: no event, no detector, no reply stream.

A request that waits for its answer (`wait=true`, the drop-in route) first asks the cache: the
Bloom filter, then the cache entry of the model the detectors serve (common/streams/serving.py),
for every request of an event-loop cycle in one round trip (one script on one server; on a
cluster, where the filter and the entries live in different slots, two ordered round trips).
A hit is published to the results stream (`cached: true`, `consumer` naming this gateway, no
images-stream `entry`), so sinks see exactly one result per request, and then returned; a miss
or a never-seen image goes through the stream as before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from facestream.common import metrics
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import (
    RESULT_FIELD,
    Face,
    ImageEvent,
    Result,
    unpack_faces,
)
from facestream.common.imaging.align import faces_with_crops
from facestream.common.imaging.photo import PhotoError
from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.common.streams.bloom import BloomFilter, resolve_bloom_mode
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.serving import served_tag
from facestream.common.streams.types import AsyncClient
from facestream.ingest.coalesce import PerCycle, SingleFlight
from facestream.ingest.publisher import AsyncPublisher
from facestream.ingest.replies import ReplyRouter

log = get_logger(__name__)
NEVER, CACHED, NOT_CACHED = 0, 1, 2
TAG_EVERY_S = 2.0  # how stale the gateway's idea of the served model may be

# Per image of a batch: None (ask the detectors) or (packed faces, width, height).
Found = tuple[bytes, int, int] | None


class CacheAnswers:
    def __init__(self, settings: Settings, client: AsyncClient, consumer: str) -> None:
        self.s = settings
        self.client = client
        self.consumer = consumer
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(client)
        self.tag: str | None = None
        self._bloom: BloomFilter | None = None
        self._tag_read = 0.0
        self._shared = SingleFlight()  # one read of the served model for a burst of requests
        # Redis away: the batch's error reaches each request (503); nothing was published.
        self._cycle: PerCycle[ImageEvent, dict[str, Any] | None] = PerCycle(self._answers)
        self._next = 0

    async def answer(self, event: ImageEvent) -> dict[str, Any] | None:
        """The result from the cache, already published; None: publish the event."""
        if not self.s.gateway_hits:
            return None
        await self._refresh_tag()
        if self.tag is None:
            return None
        return await self._cycle(event)

    async def _refresh_tag(self) -> None:
        if time.monotonic() - self._tag_read < TAG_EVERY_S:
            return
        await self._shared.run("tag", self._read_tag)

    async def _read_tag(self) -> None:
        tag = await served_tag(self.client, self.keys.serving(self.s.detector_group))
        self._tag_read = time.monotonic()
        if tag == self.tag:
            return
        self.tag, self._bloom = tag, None
        if tag is not None:
            try:
                mode = await resolve_bloom_mode(self.client, self.s.bloom, self.keys.bloom(tag))
            except RuntimeError as exc:  # FACESTREAM_BLOOM=native on a server without BF.*
                log.warning("gateway_hits_off", reason=str(exc))
                self.tag = None
                return
            self._bloom = BloomFilter(
                self.keys,
                self.scripts,
                tag,
                mode,
                self.s.bloom_capacity,
                self.s.bloom_error_rate,
                self.s.cache_ttl_s * 1000,
            )
        log.info("gateway_hits_model", model=tag)

    async def _answers(self, events: list[ImageEvent]) -> list[dict[str, Any] | None]:
        tag, bloom = self.tag, self._bloom
        if tag is None or bloom is None:
            return [None] * len(events)
        # make_event hashed every image at the door: its sha256 is the content's.
        of = [event.sha256 or event.content_sha256() for event in events]
        shas = list(dict.fromkeys(of))
        found = dict(zip(shas, await self._lookup(tag, bloom, shas), strict=True))
        results: list[Result | None] = []
        for event, sha in zip(events, of, strict=True):
            hit = found[sha]
            results.append(None if hit is None else self._result(event, sha, tag, *hit))
        hits = [r for r in results if r is not None]
        for event, result in zip(events, results, strict=True):
            if result is not None and event.crops:
                result.faces = await self._crops(event, result.faces or [])
        metrics.GATEWAY_HITS.inc(len(hits))
        metrics.GATEWAY_MISSES.inc(len(events) - len(hits))
        if hits:
            await self._publish(hits)
        return [None if r is None else r.to_dict() for r in results]

    async def _lookup(self, tag: str, bloom: BloomFilter, shas: list[str]) -> list[Found]:
        if not self.s.cluster:
            current, previous = bloom.generation_keys()
            args: list[Any] = [bloom.mode, bloom.shape.hashes if bloom.mode == "lua" else 0]
            for sha in shas:
                args += [sha, *bloom.script_offsets(sha)]
            keys = [current, previous, *(self.keys.cache(sha, tag) for sha in shas)]
            replies = await self.scripts.call("cached_answers", self.client, keys, args)
            kinds = [int(reply[0]) for reply in replies]
            metrics.BLOOM_MAYBE.inc(sum(1 for k in kinds if k != NEVER))
            metrics.BLOOM_NEVER.inc(sum(1 for k in kinds if k == NEVER))
            return [_found(reply) for reply in replies]
        # A cluster: the filter's keys and each image's entry are in different slots.
        maybe = await bloom.check(self.client, shas)
        metrics.BLOOM_MAYBE.inc(sum(maybe))
        metrics.BLOOM_NEVER.inc(len(maybe) - sum(maybe))
        asked = [sha for sha, m in zip(shas, maybe, strict=True) if m]
        pipe = self.client.pipeline(transaction=False)
        for sha in asked:
            pipe.hmget(self.keys.cache(sha, tag), ["faces", "width", "height"])
        rows = dict(zip(asked, await pipe.execute(), strict=True)) if asked else {}
        return [_found([CACHED, *rows[sha]]) if sha in rows else None for sha in shas]

    async def _crops(self, event: ImageEvent, faces: list[Face]) -> list[Face]:
        """A cached entry holds coordinates only: the crops of a hit need the image decoded
        again (off the loop; docs/contract.md, "Crops", says what that costs)."""
        try:
            return await asyncio.to_thread(faces_with_crops, event.image, faces, self.s.max_pixels)
        except PhotoError as exc:
            log.warning("crops_failed", id=event.id, reason=str(exc))
            return faces

    def _result(
        self, event: ImageEvent, sha: str, tag: str, faces: bytes, width: int, height: int
    ) -> Result:
        return Result(
            id=event.id,
            model=tag,
            consumer=self.consumer,
            entry="",  # answered at the door: no images-stream entry
            done_ms=int(time.time() * 1000),
            sha256=sha,
            width=width,
            height=height,
            faces=unpack_faces(faces),
            cached=True,
            source=event.source,
            meta=event.meta,
            ts_ms=event.ts_ms,
        )

    async def _publish(self, results: list[Result]) -> None:
        """One round trip for the batch's hits, spread over the partitions like events."""
        parts = self.keys.parts
        pipe = self.client.pipeline(transaction=False)
        for result in results:
            part = parts[self._next % len(parts)]
            self._next += 1
            pipe.xadd(part.results, {RESULT_FIELD: result.to_wire()})
        await pipe.execute()


async def answer_or_wait(
    hits: CacheAnswers,
    replies: ReplyRouter,
    publisher: AsyncPublisher,
    event: ImageEvent,
    timeout_s: float,
) -> dict[str, Any] | None:
    """A waiting request's result: from the cache at the door, else through the detectors
    (None when `timeout_s` passes first)."""
    result = await hits.answer(event)
    if result is not None:
        return result
    return await replies.publish_and_wait(publisher, event, timeout_s)


def _found(reply: list[Any]) -> Found:
    if int(reply[0]) != CACHED or reply[1] is None:
        return None
    width = int(reply[2]) if reply[2] else 0
    height = int(reply[3]) if reply[3] else 0
    if not width or not height:
        return None  # imported from the old design without a size: the detector reads it
    return reply[1], width, height
