"""Consumer groups: created where the stream starts, idempotently."""

from __future__ import annotations

from typing import Any

import redis.exceptions


def _unless_exists(exc: redis.exceptions.ResponseError) -> None:
    if "BUSYGROUP" not in str(exc):
        raise exc


async def ensure_group(client: Any, stream: str, group: str, start: str = "0") -> None:
    """Create `group` on `stream` (and the stream), unless it exists. From "0" by default:
    entries published before the first member ran are still read."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        _unless_exists(exc)


def ensure_group_sync(client: Any, stream: str, group: str, start: str = "0") -> None:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        _unless_exists(exc)
