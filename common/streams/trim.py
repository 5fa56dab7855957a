"""Trimming a stream without losing anything any consumer group still needs.

The trim point is the oldest entry some group still needs: its oldest pending entry, or, when
it has none pending, the first entry after its last-delivered id. `XTRIM MINID` removes only
entries below that point, so nothing unread or unacknowledged by any group is ever removed.
A stream that no group reads is never trimmed (a future reader may want it all).
"""

from __future__ import annotations

from typing import Any

from facestream.common.streams.types import AsyncClient


def _id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(point: tuple[int, int]) -> str:
    return f"{point[0]}-{point[1]}"


async def trim_point(client: AsyncClient, stream: str, keep: int = 0) -> str | None:
    try:
        groups = await client.xinfo_groups(stream)
    except Exception:
        return None  # no stream yet
    if not groups:
        return None
    floor: tuple[int, int] | None = None
    for group in groups:
        name = group["name"]
        if int(group["pending"]):
            summary = await client.xpending(stream, name)
            needed = _id(summary["min"])
        else:
            ms, seq = _id(group["last-delivered-id"])
            needed = (ms, seq + 1)  # everything after the last delivered is undelivered
        floor = needed if floor is None else min(floor, needed)
    if floor is not None and keep > 0:
        # The newest `keep` entries stay whatever the groups did (`facestream results --last`).
        newest = await client.xrevrange(stream, count=keep)
        if len(newest) == keep:
            floor = min(floor, _id(newest[-1][0]))
        else:
            return None  # fewer than `keep` in all
    return _text(floor) if floor is not None else None


async def trim_acked(client: AsyncClient, stream: str, keep: int = 0) -> int:
    """Remove the entries every group is done with, except the newest `keep`; returns how
    many were removed."""
    point = await trim_point(client, stream, keep)
    if point is None:
        return 0
    return int(await client.xtrim(stream, minid=point, approximate=False))
