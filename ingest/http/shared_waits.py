"""Waiting requests for an image this gateway process already waits on share that one wait.

A waiting request whose image is not cached yet (new, or being inferred) is published as an
event and waits for its result: the leader. While it waits, a later request of the same process
for the same image (by sha256) publishes no event of its own: it waits for the leader's answer
and is answered with a copy of it, its own id, source, meta and ts_ms, `cached: true` (no
inference ran for it, docs/contract.md), `consumer` naming this gateway and no images-stream
entry, published to the results stream like a cache hit, so sinks still see one result per
request. Without this a popular new photo sent by many users at once queued one event per
request (the image bytes through Redis, a read, a deferral and an answer in a detector each)
behind its single inference: at 200 users the benchmark sent ~38 events per inference.

Requests that asked for crops share a wait only with each other (the leader's answer carries
the crops, the same for every request of one image): sixty waiting `crops=true` requests for one
many-face photo were sixty events and sixty answers of ~1 MB each on the gateway's reply stream;
now they are one. A follower whose leader gets no usable answer (an error, no answer in time,
Redis away) publishes its own event with the time it has left, so every request still gets
exactly one result: its own error, or its result on the results stream after its own time
out. It was accepted when it joined, so admission control does not refuse that event (`owed`).
A follower whose request is dropped while it waits (the client gone, the server stopping)
is still owed its result: a task left behind publishes it once the leader is answered. A leader
refused at the door (503 `overloaded`, ingest/http/admission.py) takes the followers that
joined it in those milliseconds with it: refused as promptly, nothing published for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from facestream.common.contract.schema import ImageEvent
from facestream.common.log import get_logger
from facestream.ingest.http import metrics
from facestream.ingest.publisher import Overloaded

log = get_logger(__name__)
SharedAnswer = dict[str, Any] | None
Own = Callable[[float], Awaitable[SharedAnswer]]  # publish the event, wait so long for its answer


class _Refused:
    """What a leader refused at the door leaves its followers (a value, not the exception set
    on the future: with no follower, nobody would retrieve it)."""

    def __init__(self, error: Overloaded) -> None:
        self.error = error

    def again(self) -> Overloaded:
        return Overloaded(str(self.error), self.error.retry_after_s)


def _usable(answer: SharedAnswer) -> TypeGuard[dict[str, Any]]:
    """An answer a follower may share: faces (maybe none), not an error, not a time out."""
    return answer is not None and "error" not in answer


class Joins:
    def __init__(self, consumer: str, publish: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.consumer = consumer
        self._publish = publish  # adds one result to the results stream
        # (sha256, crops) -> the leader's answer
        self._leaders: dict[tuple[str, bool], asyncio.Future[SharedAnswer | _Refused]] = {}
        self._owed: set[asyncio.Task[None]] = set()

    async def wait(
        self,
        event: ImageEvent,
        timeout_s: float,
        own: Own,
        owed: Own | None = None,
    ) -> SharedAnswer:
        """`event`'s answer: the leader's, copied, or its own: `own(seconds)` when it leads
        (publish and wait), `owed(seconds left)` (default `own`) when the leader's answer was
        not usable; Overloaded when the leader was refused."""
        owed = owed or own
        key = (event.sha256 or event.content_sha256(), event.crops)
        leader = self._leaders.get(key)
        if leader is None:
            return await self._lead(key, timeout_s, own)
        started = time.monotonic()
        try:
            # Shielded: a follower that stops waiting must not cancel the leader's answer.
            answer = await asyncio.wait_for(asyncio.shield(leader), timeout_s)
        except TimeoutError:
            answer = None
        except asyncio.CancelledError:
            task = asyncio.create_task(self._answer_dropped_follower(event, leader, owed))
            self._owed.add(task)
            task.add_done_callback(self._owed.discard)
            raise
        if isinstance(answer, _Refused):
            raise answer.again()
        if _usable(answer):
            return await self._answer_with(answer, event)
        return await owed(max(0.0, timeout_s - (time.monotonic() - started)))

    async def _answer_with(self, answer: dict[str, Any], event: ImageEvent) -> dict[str, Any]:
        body = self._copy(answer, event)
        await self._publish(body)
        metrics.GATEWAY_JOINED.inc()
        return body

    async def _answer_dropped_follower(
        self,
        event: ImageEvent,
        leader: asyncio.Future[SharedAnswer | _Refused],
        owed: Own,
    ) -> None:
        """A dropped follower's one result: the leader's copy, or its own event published
        (none when the leader was refused: so was it)."""
        try:
            answer = await asyncio.shield(leader)
            if isinstance(answer, _Refused):
                return
            if _usable(answer):
                await self._answer_with(answer, event)
            else:
                await owed(0.0)  # publishes the event; the detectors answer it
        except Exception as exc:  # nobody is left to tell but the log
            log.error("joined_result_lost", id=event.id, reason=repr(exc))

    @property
    def leading(self) -> int:
        return len(self._leaders)

    async def _lead(self, key: tuple[str, bool], timeout_s: float, own: Own) -> SharedAnswer:
        fut: asyncio.Future[SharedAnswer | _Refused] = asyncio.get_running_loop().create_future()
        self._leaders[key] = fut
        answer: SharedAnswer | _Refused = None
        try:
            answer = await own(timeout_s)
            return answer
        except Overloaded as exc:
            answer = _Refused(exc)
            raise
        finally:
            # Gone before the followers run: a request after this answer finds the cache.
            del self._leaders[key]
            fut.set_result(answer)

    def _copy(self, answer: dict[str, Any], event: ImageEvent) -> dict[str, Any]:
        body = dict(answer)
        body.update(
            id=event.id,
            source=event.source,
            meta=event.meta,
            ts_ms=event.ts_ms,
            cached=True,
            consumer=self.consumer,
            entry="",
            done_ms=int(time.time() * 1000),
        )
        return body
