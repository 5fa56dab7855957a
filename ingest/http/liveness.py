"""Is any detector alive? Asked by every request that waits for its answer, so that one with
nobody to answer it is told at once (503 `no_detector`) instead of after its whole timeout.

The rule is the one `facestream detect` and `/v1/status` use: a detector is alive while its
entry in the served-model hash is in its time (common/streams/serving.py). The count is read
at most once per `FRESH_S` for all of a process's requests (one HGETALL shared by a burst), so
the hot path pays a clock read, and a detector that just started is seen within a second. The
same read gives the loads the live detectors advertise (their model time per image), which
admission control reads (ingest/http/admission.py).
"""

from __future__ import annotations

import time
from typing import Any

from facestream.common.contract.keys import Keys
from facestream.common.settings import GatewaySettings
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.serving import Load, live_detectors, live_loads
from facestream.common.streams.types import AsyncClient
from facestream.ingest.coalesce import SingleFlight
from facestream.ingest.publisher import PublishError

FRESH_S = 0.5  # how old the gateway's count may be
NO_DETECTOR = (
    "no detector is running; start one with `facestream detector` (or `facestream up`). "
    "Nothing was queued: retry once one runs, or send without wait=true to queue it."
)
# In the 202 answer of a request that does not wait: accepted, answered once one starts.
QUEUED_WITHOUT_DETECTOR = (
    "no detector is running: the image is queued and will be answered once one starts "
    "(`facestream detector` or `facestream up`)"
)


class NoDetector(PublishError):
    """A waiting request with nobody to answer it: refused before anything is published."""

    code, status = "no_detector", 503

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(NO_DETECTOR)
        self.retry_after_s = retry_after_s


class Liveness:
    def __init__(self, settings: GatewaySettings, client: AsyncClient) -> None:
        self.client = client
        self.key = Keys(settings.prefix, settings.partitions).serving(settings.detector_group)
        self.retry_after_s = settings.retry_after_s
        self.live: frozenset[str] = frozenset()  # the live detectors' consumer names
        self.loads: dict[str, Load] = {}  # consumer -> its advertised load, as of the count
        self._read_at = float("-inf")
        self._shared = SingleFlight()

    async def detectors(self) -> int:
        """Detectors alive, as of at most FRESH_S ago (Redis errors propagate)."""
        if time.monotonic() - self._read_at >= FRESH_S:
            await self._shared.run("read", self._read)
        return len(self.live)

    @property
    def count(self) -> int:
        """Detectors alive as of the last read (no read: for code that must not wait)."""
        return len(self.live)

    async def require(self) -> None:
        """Raises NoDetector when none is alive."""
        if not await self.detectors():
            raise NoDetector(self.retry_after_s)

    async def accepted_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A 202 body with `detectors` (and a `warning` when none is alive). The image is
        already queued: a Redis error here must not turn the 202 into a failure (the client
        would send it again), so the count is left out instead."""
        try:
            count = await self.detectors()
        except REDIS_ERRORS:
            return body
        body["detectors"] = count
        if not count:
            body["warning"] = QUEUED_WITHOUT_DETECTOR
        return body

    async def _read(self) -> None:
        entries = await self.client.hgetall(self.key)
        self.live = frozenset(live_detectors(entries))
        self.loads = live_loads(entries)
        self._read_at = time.monotonic()
