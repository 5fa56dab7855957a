"""Cache hits answered by the gateway itself: no event, no detector, no reply stream.

A request that waits for its answer (`wait=true`, the drop-in route) first asks the cache: the
Bloom filter, then the cache entry of the model the detectors serve (common/streams/serving.py),
for every request of an event-loop cycle at once. A hit is published to the results stream
(`cached: true`, `consumer` naming this gateway, no images-stream `entry`), so sinks see exactly
one result per request, and then returned; a miss or a never-seen image goes through the stream
as before. On one server look-up and publication are one script, one round trip per cycle; on a
cluster, where the filter, the entries and the streams live in different slots, they are
ordered round trips.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack

from facestream.common.cache.bloom import BloomFilter, open_bloom
from facestream.common.cache.entry import Entry, cached_result, result_head
from facestream.common.cache.lookup import CacheView, lookup_and_publish, lookup_apart
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import (
    RESULT_FIELD,
    Face,
    ImageEvent,
    Result,
    pack_result,
    unpack_faces,
)
from facestream.common.imaging.align import CropCaps, crops_or_faces
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.common.streams.connection import hotline
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.serving import served_tag
from facestream.common.streams.types import AsyncClient
from facestream.ingest.coalesce import PerCycle, SingleFlight
from facestream.ingest.http import hit_clock, metrics
from facestream.ingest.http.admission import Admission
from facestream.ingest.http.reply_router import ReplyRouter
from facestream.ingest.http.shared_waits import Joins, SharedAnswer
from facestream.ingest.publisher import AsyncPublisher

log = get_logger(__name__)
TAG_EVERY_S = 2.0  # how stale the gateway's idea of the served model may be

CutKey = tuple[str, bytes]  # an image's sha256 and its packed faces
Cut = asyncio.Future[tuple[list[Face], int]]  # the faces with crops, how many left without


class CacheAnswers:
    def __init__(self, settings: GatewaySettings, client: AsyncClient, consumer: str) -> None:
        self.settings = settings
        self.client = client
        self.consumer = consumer
        self.keys = Keys(settings.prefix, settings.partitions)
        self.scripts = Scripts(client, hotline(settings, client))
        self.tag: str | None = None
        self._bloom: BloomFilter | None = None
        self._view: CacheView | None = None  # the served model's entries, with the filter
        self._tag_read = 0.0
        self._shared = SingleFlight()  # one read of the served model for a burst of requests
        # Redis away during the look-up: the batch's error reaches each request (503) and
        # nothing was published; a later failure is only its own request's (_answers).
        self._cycle: PerCycle[ImageEvent, SharedAnswer | Exception] = PerCycle(self._answers)
        self._copies: PerCycle[dict[str, Any], None] = PerCycle(self._publish_copies)
        self.joins = Joins(consumer, self._copies)
        self._next = 0
        self._caps = CropCaps(settings.max_crops, settings.max_crop_bytes)
        self._cutting = asyncio.Semaphore(1)
        self._cut: dict[CutKey, Cut] = {}  # crops being cut, by image and faces

    async def answer(self, event: ImageEvent) -> dict[str, Any] | None:
        """The result from the cache, already published; None: publish the event. (Only with
        FACESTREAM_GATEWAY_HITS on: `answer_or_wait` asks.)"""
        await self._refresh_tag()
        if self.tag is None:
            return None
        answer = await self._cycle(event)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _refresh_tag(self) -> None:
        if time.monotonic() - self._tag_read < TAG_EVERY_S:
            return
        await self._shared.run("tag", self._read_tag)

    async def _read_tag(self) -> None:
        tag = await served_tag(self.client, self.keys.serving(self.settings.detector_group))
        self._tag_read = time.monotonic()
        if tag == self.tag:
            return
        self.tag, self._bloom, self._view = tag, None, None
        if tag is not None:
            try:
                self._bloom = await open_bloom(
                    self.client, self.scripts, self.keys, tag, self.settings
                )
                self._view = CacheView(self.client, self.scripts, self.keys, tag)
            except RuntimeError as exc:  # FACESTREAM_BLOOM=native on a server without BF.*
                log.warning("gateway_hits_off", reason=str(exc))
                self.tag = None
                return
        log.info("gateway_hits_model", model=tag)

    async def _answers(self, events: list[ImageEvent]) -> list[SharedAnswer | Exception]:
        """Per request its answer, None (ask the detectors) or its own error: the script may
        have published the cycle's other hits already, so one request's failure is not theirs."""
        tag, bloom, view = self.tag, self._bloom, self._view
        if tag is None or bloom is None or view is None:
            return [None] * len(events)
        # make_event hashed every image at the door: its sha256 is the content's.
        of = [event.sha256 or event.content_sha256() for event in events]
        done_ms = int(time.time() * 1000)
        # Each request's result map but for what the cache entry holds: the head the script
        # publishes from, then (filled in) the answer, built once.
        drafts = [
            self._result(event, sha, tag, done_ms).to_dict()
            for event, sha in zip(events, of, strict=True)
        ]
        sent = time.perf_counter()  # the waiting requests' `queue` ends, `compute_infer` starts
        if self.settings.cluster:
            found = await lookup_apart(view, bloom, of)
        else:
            # A request for crops gets no head: its result is published once they are cut.
            heads = [
                b"" if event.crops else result_head(draft)
                for event, draft in zip(events, drafts, strict=True)
            ]
            streams = [self._next_results() for _ in events]
            found = await lookup_and_publish(view, bloom, of, heads, streams)
        hit_clock.looked_up(events, sent, [entry is not None for entry in found.entries])
        metrics.add(metrics.BLOOM_MAYBE, found.maybe)
        metrics.add(metrics.BLOOM_NEVER, found.never)
        answers: list[SharedAnswer | Exception] = []
        unpublished: list[tuple[int, dict[str, Any]]] = []
        cuts: dict[CutKey, Cut] = {}
        rows = zip(events, of, drafts, found.entries, found.published, strict=True)
        for event, sha, draft, hit, done in rows:
            if hit is None:
                answers.append(None)
                continue
            try:
                body = await self._body(event, sha, tag, done_ms, draft, hit, cycle=cuts)
            except (ValueError, msgpack.UnpackException) as exc:
                # Only a foreign writer leaves such an entry: detectors pack what they store.
                log.error("cache_entry_unreadable", id=event.id, sha256=sha, reason=str(exc))
                answers.append(exc)
                continue
            if not done:
                unpublished.append((len(answers), body))
            answers.append(body)
        hits = sum(1 for a in answers if a is not None)
        metrics.add(metrics.GATEWAY_HITS, hits)
        metrics.add(metrics.GATEWAY_MISSES, len(events) - hits)
        if unpublished:
            try:
                await self._publish([body for _, body in unpublished])
            except REDIS_ERRORS as exc:
                for i, _ in unpublished:
                    answers[i] = exc  # not published: these requests get 503
        return answers

    async def _body(
        self,
        event: ImageEvent,
        sha: str,
        tag: str,
        done_ms: int,
        draft: dict[str, Any],
        hit: Entry,
        *,
        cycle: dict[CutKey, Cut],
    ) -> dict[str, Any]:
        if event.crops:
            result = self._result(event, sha, tag, done_ms, hit.width, hit.height)
            result.faces, result.crops_omitted = await self._crops(event, sha, hit.faces, cycle)
            return result.to_dict()
        # The packed faces are already the result's {box, score, kps} maps: decoded as they
        # are, with no Face objects made and unmade per hit.
        draft.update(
            width=hit.width, height=hit.height, faces=msgpack.unpackb(hit.faces, raw=False)
        )
        return draft

    async def _crops(
        self, event: ImageEvent, sha: str, packed: bytes, cycle: dict[CutKey, Cut]
    ) -> tuple[list[Face], int]:
        """A cached entry holds coordinates only: the crops of a hit need the image decoded
        again, in a worker thread (docs/contract.md, "Crops", says what that costs), one at a
        time per process (each holds a full-size decode). Requests for one image waiting
        together share one cut: the faces and crops of an image are the same for each."""
        key = (sha, packed)
        shared = cycle.get(key) or self._cut.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._cut_once(event, unpack_faces(packed)))
            self._cut[key] = shared
            shared.add_done_callback(lambda _: self._cut.pop(key, None))
        cycle[key] = shared  # the cycle's later requests for it are answered in turn
        return await asyncio.shield(shared)

    async def _cut_once(self, event: ImageEvent, faces: list[Face]) -> tuple[list[Face], int]:
        async with self._cutting:
            return await asyncio.to_thread(
                crops_or_faces,
                event.image,
                faces,
                self.settings.max_pixels,
                self._caps,
                self.settings.max_jpeg_scans,
                about=event.id,
            )

    def _result(
        self,
        event: ImageEvent,
        sha: str,
        tag: str,
        done_ms: int,
        width: int | None = None,
        height: int | None = None,
    ) -> Result:
        # Answered at the door: no images-stream entry.
        return cached_result(
            event,
            sha256=sha,
            model=tag,
            consumer=self.consumer,
            entry="",
            done_ms=done_ms,
            width=width,
            height=height,
            faces=[],
        )

    async def _publish(self, results: list[dict[str, Any]]) -> None:
        """One round trip for the batch's hits, spread over the partitions like events."""
        pipe = self.client.pipeline(transaction=False)
        for result in results:
            pipe.xadd(self._next_results(), {RESULT_FIELD: pack_result(result)})
        await pipe.execute()

    async def _publish_copies(self, bodies: list[dict[str, Any]]) -> list[None]:
        await self._publish(bodies)
        return [None] * len(bodies)

    def _next_results(self) -> str:
        parts = self.keys.parts
        self._next += 1
        return parts[self._next % len(parts)].results


async def answer_or_wait(
    hits: CacheAnswers,
    replies: ReplyRouter,
    publisher: AsyncPublisher,
    event: ImageEvent,
    timeout_s: float,
    admission: Admission | None = None,
) -> dict[str, Any] | None:
    """A waiting request's result: from the cache at the door, else through the detectors,
    sharing the wait of an earlier request of this process for the same image
    (ingest/http/shared_waits.py); None when `timeout_s` passes first. With `admission`, a
    new photo that would wait past its time is refused (Overloaded, 503) before anything is
    published (ingest/http/admission.py). A hit, or a request that joins another's wait,
    adds no work: it is never refused, but for a follower of a leader refused at the door
    (refused with it, as promptly)."""

    async def own(left_s: float, accepted: bool = False) -> dict[str, Any] | None:
        """Publish and wait. `accepted`: a follower's own event, its leader's answer unusable:
        it was accepted when it joined, so published whatever the wait (504 if too late)."""
        if admission is None:
            return await replies.publish_and_wait(publisher, event, left_s)
        return await admission.publish_and_wait(
            replies, publisher, event, left_s, accepted=accepted
        )

    async def owed(left_s: float) -> dict[str, Any] | None:
        return await own(left_s, accepted=True)

    if not hits.settings.gateway_hits:
        return await own(timeout_s)
    result = await hits.answer(event)
    if result is not None:
        return result
    return await hits.joins.wait(event, timeout_s, own, owed)
