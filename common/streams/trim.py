"""Trimming a stream without losing anything any consumer group still needs.

The trim point is the oldest entry some group still needs: its oldest pending entry, or, when
it has none pending, the first entry after its last-delivered id. `XTRIM MINID` removes only
entries below that point, so nothing unread or unacknowledged by any group is ever removed.
A stream that no group reads is never trimmed (a future reader may want it all).

XINFO GROUPS and XPENDING are two calls: a group's last pending entry can be acknowledged
between them (its pending summary then names no oldest entry), and a group can be destroyed
between them. Both are read as they are now, never as an error: a group whose pending list
emptied needs what follows its last-delivered id as XINFO saw it (an older id than now, so the
point is only lower: nothing it needs is trimmed), and a vanished group puts the trim off to
the next round.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions

from facestream.common.streams.types import AsyncClient


def _id(value: Any) -> tuple[int, int] | None:
    """A stream id as (ms, seq); None for no id (None, empty, or not an id at all)."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    if not ms.isdigit() or not (seq.isdigit() or seq == ""):
        return None
    return int(ms), int(seq or 0)


def _text(point: tuple[int, int]) -> str:
    return f"{point[0]}-{point[1]}"


async def _oldest_pending(client: AsyncClient, stream: str, group: str) -> tuple[int, int] | None:
    summary = await client.xpending(stream, group)
    if not summary or not int(summary.get("pending") or 0):
        return None  # acknowledged since XINFO GROUPS: nothing pending now
    return _id(summary.get("min"))


async def trim_point(client: AsyncClient, stream: str, keep: int = 0) -> str | None:
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.ResponseError:
        return None  # no stream yet
    if not groups:
        return None
    floor: tuple[int, int] | None = None
    for group in groups:
        name = group["name"]
        needed: tuple[int, int] | None = None
        if int(group.get("pending") or 0):
            try:
                needed = await _oldest_pending(client, stream, name)
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return None  # destroyed since XINFO GROUPS: decide next round
                raise
        if needed is None:
            delivered = _id(group.get("last-delivered-id"))
            if delivered is None:
                return None  # a group whose position is unknown keeps everything
            needed = (delivered[0], delivered[1] + 1)  # everything after it is undelivered
        floor = needed if floor is None else min(floor, needed)
    if floor is not None and keep > 0:
        # The newest `keep` entries stay whatever the groups did (`facestream results --last`).
        newest = await client.xrevrange(stream, count=keep) or []
        oldest_kept = _id(newest[-1][0]) if len(newest) == keep else None
        if oldest_kept is None:
            return None  # fewer than `keep` in all
        floor = min(floor, oldest_kept)
    return _text(floor) if floor is not None else None


async def trim_acked(client: AsyncClient, stream: str, keep: int = 0) -> int:
    """Remove the entries every group is done with, except the newest `keep`; returns how
    many were removed."""
    point = await trim_point(client, stream, keep)
    if point is None:
        return 0
    return int(await client.xtrim(stream, minid=point, approximate=False))
