"""Consumer groups: created where the stream starts, idempotently."""

from __future__ import annotations

from typing import Any

import redis.exceptions

from facestream.common.streams.types import AsyncClient, SyncClient


def _unless_exists(exc: redis.exceptions.ResponseError) -> bool:
    if "BUSYGROUP" not in str(exc):
        raise exc
    return False


async def ensure_group(client: AsyncClient, stream: str, group: str, start: str = "0") -> bool:
    """Create `group` on `stream` (and the stream), unless it exists. From "0" by default:
    entries published before the first member ran are still read. True when created."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        return _unless_exists(exc)
    return True


def ensure_group_sync(client: SyncClient, stream: str, group: str, start: str = "0") -> bool:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        return _unless_exists(exc)
    return True


def group_info(groups: Any, name: str) -> dict[Any, Any] | None:
    """`name`'s map in an XINFO GROUPS answer (its lag, pending, entries-read); None when the
    group is not there (not created yet) or the answer is not a list (an error as a value)."""
    if not isinstance(groups, list):
        return None
    for g in groups:
        found = g.get("name")
        if (found.decode() if isinstance(found, bytes) else found) == name:
            return dict(g)
    return None
