"""Taking over stuck work: XAUTOCLAIM of entries idle too long on any member of a group, and
the delivery counts that tell a poison message from an unlucky one."""

from __future__ import annotations

import time
from typing import Any

from facestream.common.log import get_logger
from facestream.common.streams.types import AsyncClient

log = get_logger(__name__)

Entry = tuple[bytes, Any]


class Reclaimer:
    def __init__(
        self,
        client: AsyncClient,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        every_ms: int,
        count: int,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.min_idle_ms = min_idle_ms
        self.every_s = every_ms / 1000
        self.count = count
        self._cursor = "0-0"
        self._last = time.monotonic()  # the first claim waits a period: own pending go first

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    async def claim(self) -> tuple[list[Entry], list[str]]:
        """One XAUTOCLAIM step: entries now ours, and ids whose entries were deleted from the
        stream while pending (Redis drops those from the pending list itself)."""
        self._last = time.monotonic()
        reply = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.min_idle_ms,
            start_id=self._cursor,
            count=self.count,
        )
        cursor, entries = reply[0], reply[1]
        deleted = [
            d.decode() if isinstance(d, bytes) else str(d)
            for d in (reply[2] if len(reply) > 2 else [])
        ]
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        # An entry claimed here may have been deleted after the claim read it: no fields.
        if entries or deleted:
            log.info("claimed", stream=self.stream, entries=len(entries), deleted=len(deleted))
        return list(entries), deleted

    async def deliveries(self, ids: list[str]) -> dict[str, int]:
        """How many times each of `ids` still pending on us has been delivered; an entry not
        pending any more (answered since it was read) is left out. Every pending entry of ours
        between the lowest and highest id is listed, so none is left out by the count."""
        if not ids:
            return {}
        low, high = min(ids, key=_key), max(ids, key=_key)
        limit = max(len(ids), 1) * 4 + 100
        while True:
            rows = await self.client.xpending_range(
                self.stream, self.group, min=low, max=high, count=limit, consumername=self.consumer
            )
            if len(rows) < limit:
                break
            limit *= 4  # more of ours pending in the range than asked for: ask for all
        return {
            (
                r["message_id"].decode()
                if isinstance(r["message_id"], bytes)
                else str(r["message_id"])
            ): int(r["times_delivered"])
            for r in rows
        }


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
