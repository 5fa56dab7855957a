"""Per-entry bookkeeping shared by the detector's stages."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from facestream.common.cache.entry import cached_result
from facestream.common.contract.keys import Partition
from facestream.common.contract.schema import ErrorCode, Face, ImageEvent, Result, SchemaError
from facestream.common.imaging.align import CropCaps, crops_or_faces
from facestream.common.imaging.photo import MAX_JPEG_SCANS
from facestream.common.log import get_logger
from facestream.common.streams.member import MemberCounters

log = get_logger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Job:
    """One images-stream entry on its way to exactly one result."""

    part: Partition  # the images stream it came from
    entry: str
    event: ImageEvent
    sha: str


@dataclass(slots=True)
class Counters(MemberCounters):
    read: int = 0
    results: int = 0
    errors: int = 0
    cached: int = 0
    inferences: int = 0
    images_inferred: int = 0
    not_emitted: int = 0  # answered, but another consumer had acked the entry already
    deferred: int = 0
    dead_lettered: int = 0


@dataclass(slots=True)
class ResultFactory:
    model: str
    consumer: str
    max_pixels: int  # the decode limits come from the settings, never a copy of their defaults
    counters: Counters = field(default_factory=Counters)
    caps: CropCaps = field(default_factory=CropCaps)
    max_scans: int = MAX_JPEG_SCANS
    # One crop cut at a time per detector: each holds a full-size decode (3 bytes a pixel).
    _cutting: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    def faces(self, job: Job, faces: list[Face], width: int, height: int, cached: bool) -> Result:
        """The result of a job, inferred here or found in the cache (one builder for every
        cached answer: common/cache/entry.py); without crops even when the event asked for
        them: those are cut by `cut_crops`, off the event loop, before the result is written."""
        if cached:
            return cached_result(
                job.event,
                sha256=job.sha,
                model=self.model,
                consumer=self.consumer,
                entry=job.entry,
                done_ms=now_ms(),
                width=width,
                height=height,
                faces=faces,
            )
        return Result.answering(
            job.event,
            model=self.model,
            consumer=self.consumer,
            entry=job.entry,
            done_ms=now_ms(),
            sha256=job.sha,
            width=width,
            height=height,
            faces=faces,
            cached=False,
        )

    async def cut_crops(self, wanted: list[tuple[Result, bytes]]) -> None:
        """Fill in the crops of results whose event asked for them (result, image bytes), in
        a worker thread: a many-face photo at full size takes seconds, which on the event
        loop stalled every other answer and the detector's heartbeats. Results of one image
        with the same faces share one decode and one set of crops."""
        if not wanted:
            return
        async with self._cutting:
            await asyncio.to_thread(self._cut_all, wanted)

    def _cut_all(self, wanted: list[tuple[Result, bytes]]) -> None:
        done: dict[str, tuple[list[Face], list[Face], int]] = {}  # sha -> (given, cut, omitted)
        for result, image in wanted:
            given = result.faces or []
            seen = done.get(result.sha256 or "")
            if seen is None or seen[0] != given:
                cut, omitted = self._cut(result, image, given)
                seen = (given, cut, omitted)
                if result.sha256:
                    done[result.sha256] = seen
            result.faces, result.crops_omitted = seen[1], seen[2]

    def _cut(self, result: Result, image: bytes, faces: list[Face]) -> tuple[list[Face], int]:
        return crops_or_faces(
            image, faces, self.max_pixels, self.caps, self.max_scans, about=result.entry
        )

    def error(
        self,
        entry: str,
        err: SchemaError,
        event: ImageEvent | None = None,
        sha: str | None = None,
    ) -> Result:
        return Result(
            id=event.id if event else err.event_id,
            model=self.model,
            consumer=self.consumer,
            entry=entry,
            done_ms=now_ms(),
            sha256=sha,
            error={"code": str(err.code), "message": err.message[:500]},
            source=event.source if event else None,
            meta=event.meta if event else None,
            ts_ms=event.ts_ms if event else None,
        )

    def inference_failed(self, job: Job, message: str) -> Result:
        err = SchemaError(ErrorCode.INFERENCE_FAILED, message, job.event.id)
        return self.error(job.entry, err, job.event, job.sha)
