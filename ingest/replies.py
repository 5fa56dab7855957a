"""One reply stream per gateway process and one blocking reader that hands results to the
requests waiting for them: no polling per request.

Waiters are keyed by (event id, sha256), so two requests that reuse an id for different images
never get each other's answer; a repeated reply (allowed by the contract) finds no waiter and
is dropped. The reader keeps the stream's TTL fresh while the gateway lives and trims what it
has read; when the gateway goes away the stream expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import msgpack

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import RESULT_FIELD
from facestream.common.log import get_logger
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.outage import Outage
from facestream.common.streams.types import AsyncClient

log = get_logger(__name__)

Waiter = asyncio.Future[dict[str, Any]]


class ReplyRouter:
    def __init__(self, client: AsyncClient, keys: Keys, ttl_s: int, block_ms: int = 1000) -> None:
        self.client = client
        self.stream = keys.reply_stream(f"gw-{uuid.uuid4().hex[:12]}")
        self.ttl_ms = ttl_s * 1000
        self.block_ms = block_ms
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self.healthy = False

    def expect(self, event_id: str, sha256: str) -> Waiter:
        """Register before publishing, so a fast answer cannot arrive unheard."""
        fut: Waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((event_id, sha256), []).append(fut)
        return fut

    def forget(self, event_id: str, sha256: str, fut: Waiter) -> None:
        waiters = self._waiters.get((event_id, sha256))
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[(event_id, sha256)]

    async def publish_and_wait(
        self, publisher: Any, event: Any, timeout_s: float
    ) -> dict[str, Any] | None:
        """Publish an event whose reply_to is this stream and wait for its result; None when
        `timeout_s` passes first (the result still goes to the results stream)."""
        fut = self.expect(event.id, event.sha256)
        try:
            await publisher.publish(event)
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            self.forget(event.id, event.sha256, fut)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _deliver(self, result: dict[str, Any]) -> None:
        for fut in self._waiters.pop((result.get("id", ""), result.get("sha256") or ""), []):
            if not fut.done():
                fut.set_result(result)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.delete(self.stream)

    async def _run(self) -> None:
        last = "0-0"
        refreshed = 0.0
        outage = Outage(log, "reply_reader")
        while True:
            try:
                if time.monotonic() - refreshed > self.ttl_ms / 3000:
                    await self.client.pexpire(self.stream, self.ttl_ms)
                    refreshed = time.monotonic()
                reply: Any = await self.client.xread(
                    {self.stream: last}, count=500, block=self.block_ms
                )
                self.healthy = True
                outage.ok()
            except REDIS_ERRORS as exc:
                self.healthy = False
                await asyncio.sleep(outage.failed(exc))
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    try:
                        self._deliver(msgpack.unpackb(fields[RESULT_FIELD], raw=False))
                    except (KeyError, ValueError, TypeError) as exc:
                        log.warning("bad_reply", entry=last, error=str(exc))
            if reply:
                # What is read is delivered; keep the stream short.
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.client.xtrim(self.stream, minid=last, approximate=False)
