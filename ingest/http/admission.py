"""Admission control: a waiting request whose new photo cannot be answered within its deadline
(`timeout_ms`) is refused at the door, 503 `overloaded` with Retry-After, instead of being
published to time out.

Why: past the detectors' capacity the images streams only grow; every request then waits
longer than its deadline, is answered 504 after it, and its photo is still inferred, so the
backlog of an overload outlives it. Refused at once, what cannot be served in time adds no
work, and the backlog stays what the detectors answer within the deadlines (the queue policy
of Triton's `timeout_action: REJECT`). Cache hits never get here (answered at the door first),
nor do requests that join another request's wait for the same image (they add no work,
ingest/http/shared_waits.py); a follower whose leader got no usable answer publishes an event
of its own and is asked like any new photo. Every request admitted is published and answered
as before: nothing accepted is dropped. Asynchronous publishing keeps its own lag and byte
back-pressure (ingest/publisher.py).

The estimate, wait = images ahead / service rate + one image's model time (+ a margin):
- images ahead: the detector group's backlog on the images streams (undelivered, and pending
  with a live detector: XINFO GROUPS, XLEN and the XPENDING summary per partition, re-read
  every READ_EVERY_S in the background while misses come or a backlog is left, so no request
  waits for it but the first after a lull), less what the detectors finished since at the
  service rate, plus what this process published since; never less than this process's own
  new photos still waiting, known at once, so a burst between two reads is counted as it comes.
- service rate: measured, when lately seen: the group's completions per second (entries read
  less pending, from the same reads) over intervals in which the backlog kept every detector
  busy, smoothed over ~RATE_TAU_S. It holds all a new photo costs (decode, the event loops,
  Redis, a shared CPU), which the model time alone does not. Else what the live detectors
  advertise: the sum of slots / model time per image (common/streams/serving.py). With
  neither (older detectors, none measured busy) everything is admitted.
- the margin: how much longer than expected 9 in 10 of this process's admitted photos took
  lately (a quantile tracked online from each answer, negative when the estimate runs high):
  admitting up to an expected wait equal to the deadline would let half the photos admitted
  near it miss it, each a model run spent on a 504. A photo is refused when its expected wait
  plus the margin is past its deadline.
A request with nothing ahead of it is always admitted, whatever its deadline: it costs the
detectors nothing they had to spare, and a low rate measured during a stall cannot keep
refusing an idle fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import ImageEvent
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.groups import group_info
from facestream.common.streams.types import AsyncClient
from facestream.ingest.coalesce import SingleFlight
from facestream.ingest.http import metrics
from facestream.ingest.http.liveness import Liveness
from facestream.ingest.http.reply_router import ReplyRouter
from facestream.ingest.publisher import AsyncPublisher, Overloaded

log = get_logger(__name__)
READ_EVERY_S = 0.1  # how stale the backlog read may be (the projection covers the gap)
STALE_S = 1.0  # older than this (after a lull): the miss waits for a new read
FOLLOW_S = 5.0  # the reads go on this long after the last miss (and while a backlog is left)
RATE_TAU_S = 1.0  # the measured rate's smoothing
RATE_FRESH_S = 5.0  # a measured rate this old gives way to the advertised one
MAX_SAMPLE_S = 2.0  # reads further apart say nothing about the time between them
MAX_RETRY_AFTER_S = 10
QUANTILE = 0.9  # of the waits beyond their estimate that the margin covers
MARGIN_STEP = 0.02  # of the expected wait: how far one answer moves the margin


@dataclass(frozen=True, slots=True)
class Backlog:
    """One read of the images streams, as of `at` (when it was sent)."""

    entries: int  # waiting for the detector group or held by it, all partitions
    done: int | None  # entries it has finished (read less pending); None: unknown
    at: float
    sent: int  # this process's publishes counted by then


@dataclass(frozen=True, slots=True)
class Estimate:
    ahead: float  # images before a new photo
    rate: float  # images the detectors finish a second
    wait_s: float  # a new photo's expected wait
    margin_s: float = 0.0  # what 9 in 10 lately took beyond their expected wait

    @property
    def bound_s(self) -> float:
        """The wait 9 in 10 photos admitted now are answered within."""
        return self.wait_s + self.margin_s


class Admission:
    def __init__(self, settings: GatewaySettings, client: AsyncClient, liveness: Liveness) -> None:
        self.enabled = settings.admission
        self.client = client
        self.liveness = liveness
        self.group = settings.detector_group
        self.streams = [part.images for part in Keys(settings.prefix, settings.partitions).parts]
        self.retry_after_s = settings.retry_after_s
        self.waiting = 0  # this process's new photos published and not answered yet
        self.sent = 0  # this process's new photos published, ever
        self.backlog: Backlog | None = None
        self.rate: float | None = None  # measured, images a second
        self.rate_at = float("-inf")  # when last measured with every detector busy
        self._reads = SingleFlight()
        self._follower: asyncio.Task[None] | None = None
        self._last_miss = float("-inf")
        self._read_ok: bool | None = None  # None: not read yet
        self.margin_s = 0.0
        self._warned_pending = False

    async def publish_and_wait(
        self,
        replies: ReplyRouter,
        publisher: AsyncPublisher,
        event: ImageEvent,
        timeout_s: float,
        *,
        accepted: bool = False,
    ) -> dict[str, Any] | None:
        """`replies.publish_and_wait` once admitted: raises Overloaded, having published
        nothing, when the expected wait is past `timeout_s`. `accepted`: a request accepted
        already (a follower whose leader got no usable answer, one dropped while it waited),
        whose event is owed: published whatever the wait, as before."""
        estimate = await self.admit(timeout_s) if timeout_s > 0 and not accepted else None
        self.waiting += 1
        self.sent += 1
        started = time.monotonic()
        try:
            answer = await replies.publish_and_wait(publisher, event, timeout_s)
        finally:
            self.waiting -= 1
        if estimate is not None:  # (a time out counts as its timeout: at least that)
            self._learn(estimate, time.monotonic() - started)
        return answer

    async def admit(self, timeout_s: float) -> Estimate | None:
        """The estimate a new photo is admitted on (None: no pace known, or admission off);
        raises Overloaded when it would be answered past `timeout_s`."""
        if not self.enabled:
            return None
        await self._fresh()
        estimate = self.estimate()
        if estimate is None or estimate.ahead < 1 or estimate.bound_s <= timeout_s:
            return estimate  # admitted (nothing ahead: the detectors are free for it)
        metrics.GATEWAY_OVERLOADED.inc()
        raise Overloaded(_refusal(estimate, timeout_s), self._retry_after(estimate, timeout_s))

    def _learn(self, estimate: Estimate, took_s: float) -> None:
        """Move the margin toward the QUANTILE of (took - expected): up by QUANTILE steps when
        an answer took longer than expected plus margin, down by the rest otherwise."""
        step = MARGIN_STEP * max(estimate.wait_s, 0.01)
        if took_s - estimate.wait_s > self.margin_s:
            self.margin_s += step * QUANTILE
        else:
            self.margin_s -= step * (1 - QUANTILE)

    def estimate(self) -> Estimate | None:
        """A new photo's expected wait now; None when nothing tells the detectors' pace."""
        now = time.monotonic()
        advertised = self._advertised()
        fresh = self.rate is not None and now - self.rate_at < RATE_FRESH_S
        rate = self.rate if fresh else advertised
        if rate is None:
            return None
        queued = 0.0
        if self.backlog is not None:
            b = self.backlog
            queued = b.entries - (now - b.at) * rate + (self.sent - b.sent)
        ahead = max(float(self.waiting), queued)
        loads = self.liveness.loads.values()
        if loads:
            one = sum(load.image_s for load in loads) / len(loads)
        else:
            one = max(1, self.liveness.count) / rate if rate > 0 else 0.0
        wait = one if ahead < 1 else (one + ahead / rate if rate > 0 else math.inf)
        return Estimate(ahead, rate, wait, self.margin_s)

    def _advertised(self) -> float | None:
        """Images a second by the live detectors' own word: those that say their model time,
        and as many again as their mean for those that do not (older detectors)."""
        loads = list(self.liveness.loads.values())
        if not loads:
            return None
        mean = sum(load.slots / load.image_s for load in loads) / len(loads)
        return mean * max(len(loads), self.liveness.count)

    def _retry_after(self, estimate: Estimate, timeout_s: float) -> int:
        excess = estimate.bound_s - timeout_s
        if not math.isfinite(excess):
            return MAX_RETRY_AFTER_S
        return max(self.retry_after_s, min(MAX_RETRY_AFTER_S, math.ceil(excess)))

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def _fresh(self) -> None:
        """Keep the background reads going; wait for one only when the last is too old to
        project from (the first miss after a lull)."""
        now = self._last_miss = time.monotonic()
        if self.backlog is None or now - self.backlog.at >= STALE_S:
            await self._reads.run("read", self.read)
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        """Read every READ_EVERY_S while misses come, and while a backlog is left after them:
        its drain measures the rate the next burst is admitted at."""
        try:
            while True:
                await asyncio.sleep(READ_EVERY_S)
                await self._reads.run("read", self.read)
                left = self._read_ok and self.backlog is not None and self.backlog.entries > 0
                if not left and time.monotonic() - self._last_miss > FOLLOW_S:
                    return
        except Exception:  # a bug: admission goes on from the last read, and says why
            log.exception("admission_reads_stopped")

    async def read(self) -> None:
        """One read of the backlog (and, from the last, of the rate it drains at)."""
        at, sent = time.monotonic(), self.sent
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            pipe.xpending(stream, self.group)  # per consumer: who holds what is pending
        try:
            replies = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            # Redis away: the publish that follows says so; until then the last read holds,
            # and this process's own waits. Said once per failure, not once per read.
            if self._read_ok is not False:
                log.warning("admission_read_failed", error=str(exc)[:200] or type(exc).__name__)
            self._read_ok = False
            return
        if self._read_ok is False:
            log.info("admission_read_again")
        self._read_ok = True
        live = self.liveness.live
        triples = list(zip(replies[::3], replies[1::3], replies[2::3], strict=True))
        parts = [_partition(g, n, held, self.group, live) for g, n, held in triples]
        refused = [held for _, _, held in triples if isinstance(held, NoPermissionError)]
        if refused and not self._warned_pending:
            # An ACL made by an older `facestream acl`: held work counts whoever holds it.
            log.warning("admission_without_xpending", error=str(refused[0])[:200])
            self._warned_pending = True
        finished = [done for _, done in parts if done is not None]
        done = sum(finished) if len(finished) == len(parts) else None
        now = Backlog(sum(waiting for waiting, _ in parts), done, at, sent)
        self._measure(self.backlog, now)
        self.backlog = now

    def _measure(self, before: Backlog | None, now: Backlog) -> None:
        """The completion rate between two reads: a measure of the service rate when every
        detector had work throughout; otherwise only a floor under it."""
        if before is None or before.done is None or now.done is None:
            return
        dt = now.at - before.at
        finished = now.done - before.done
        if not 0 < dt <= MAX_SAMPLE_S or finished < 0:
            return
        sample = finished / dt
        weight = 1 - math.exp(-dt / RATE_TAU_S)
        fresh = self.rate is not None and now.at - self.rate_at < RATE_FRESH_S
        if min(before.entries, now.entries) > max(1, self.liveness.count):
            start = self.rate if fresh and self.rate is not None else self._advertised()
            start = sample if start is None else start
            self.rate = start + weight * (sample - start)
            self.rate_at = now.at
        elif fresh and self.rate is not None and sample > self.rate:
            self.rate += weight * (sample - self.rate)


def _partition(
    groups: Any, length: Any, held: Any, group: str, live: frozenset[str]
) -> tuple[int, int | None]:
    """(entries waiting for `group` or held by a live detector, entries it finished) in one
    images stream, from its XINFO GROUPS, XLEN and XPENDING summary (an error: no stream or
    group yet, or no right to ask). What a detector that died holds is not ahead of a new
    photo: the live ones read past it, and claim it only once it has been idle for a minute."""
    size = length if isinstance(length, int) else 0
    g = group_info(groups, group)
    if g is None and not isinstance(groups, list):  # an error: no stream yet, or no right
        return size, None if size else 0
    if g is None:
        return size, None  # no detector group yet: everything published waits
    pending = int(g.get("pending") or 0)
    orphans = 0
    if isinstance(held, dict):
        orphans = sum(
            int(c.get("pending") or 0)
            for c in held.get("consumers") or []
            if _name(c.get("name")) not in live
        )
    lag, read = g.get("lag"), g.get("entries-read")
    # No lag when Redis cannot compute it (an entry deleted ahead of the group): every entry
    # the stream holds is the bound (answered ones are deleted on ack).
    total = min(int(lag) + pending, size) if lag is not None else size
    waiting = max(0, total - orphans)
    if read is None:
        return waiting, 0 if not pending else None
    return waiting, int(read) - pending


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(estimate: Estimate, timeout_s: float) -> str:
    if math.isfinite(estimate.bound_s):
        why = f"a new photo would wait about {estimate.bound_s * 1000:.0f} ms"
    else:
        why = "the detectors finished nothing lately"
    return (
        f"overloaded: {why} ({estimate.ahead:.0f} images ahead), past this request's timeout "
        f"of {timeout_s * 1000:.0f} ms. Nothing was queued: retry later (a photo already "
        "answered is answered at once)"
    )
