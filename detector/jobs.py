"""Per-entry bookkeeping shared by the detector's stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from facestream.common.contract.keys import Partition
from facestream.common.contract.schema import ErrorCode, Face, ImageEvent, Result, SchemaError
from facestream.common.imaging.align import faces_with_crops
from facestream.common.imaging.photo import PhotoError
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
class Deferred:
    """Entries whose image another worker is inferring: re-check the cache later."""

    jobs: list[Job]
    due: float  # monotonic seconds
    delay_ms: int


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
    counters: Counters = field(default_factory=Counters)
    max_pixels: int = 40_000_000

    def faces(self, job: Job, faces: list[Face], width: int, height: int, cached: bool) -> Result:
        ev = job.event
        if ev.crops:
            faces = self._crops(job, faces)
        return Result(
            id=ev.id,
            model=self.model,
            consumer=self.consumer,
            entry=job.entry,
            done_ms=now_ms(),
            sha256=job.sha,
            width=width,
            height=height,
            faces=faces,
            cached=cached,
            source=ev.source,
            meta=ev.meta,
            ts_ms=ev.ts_ms,
        )

    def _crops(self, job: Job, faces: list[Face]) -> list[Face]:
        """Crops for an event that asked for them. A full-size decode on this thread: crops
        are opt-in, and a photo that fails here was decoded once already, so it is rare."""
        try:
            return faces_with_crops(job.event.image, faces, self.max_pixels)
        except PhotoError as exc:
            log.warning("crops_failed", entry=job.entry, reason=str(exc))
            return faces

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
