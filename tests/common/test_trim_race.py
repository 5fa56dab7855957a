"""The trim point read across two calls (XINFO GROUPS, then XPENDING) on real Redis, with the
group changing between them: a deliberate interleaving, as 200 clients and a stopped detector
once produced by chance (issue 25, item 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.streams.trim import trim_acked, trim_point


class Between:
    """A real client whose XPENDING first runs `meanwhile` (what another client did between
    this process's XINFO GROUPS and its XPENDING)."""

    def __init__(self, client: Any, meanwhile: Callable[[], None]) -> None:
        self._client = client
        self._meanwhile = meanwhile
        self.interleaved = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xpending(self, *args: Any, **kwargs: Any) -> Any:
        self._meanwhile()
        self.interleaved += 1
        return await self._client.xpending(*args, **kwargs)


def run(
    redis_url: str, step: Callable[[Any], Awaitable[Any]], meanwhile: Callable[[], None]
) -> Any:
    async def go() -> Any:
        client = async_client(Settings(redis_url=redis_url))
        wrapped = Between(client, meanwhile)
        try:
            return await step(wrapped), wrapped.interleaved
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_pending_list_emptied_between_the_two_calls_is_read_as_empty(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    stream = f"{prefix}:results"
    ids = [r.xadd(stream, {"result": str(i)}).decode() for i in range(5)]
    r.xgroup_create(stream, "g", id="0")
    r.xreadgroup("g", "c", {stream: ">"}, count=3)  # 3 delivered, 2 unread
    r.xack(stream, "g", *ids[:2])  # the third is the group's last pending entry

    (removed, interleaved) = run(
        redis_url, lambda c: trim_acked(c, stream), lambda: r.xack(stream, "g", ids[2])
    )
    assert interleaved == 1  # the ack did land between the two calls
    # Everything up to the last delivered entry is done with; the two unread ones stay.
    assert removed == 3
    assert [e.decode() for e, _ in r.xrange(stream)] == ids[3:]


def test_a_group_destroyed_between_the_two_calls_puts_the_trim_off(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    stream = f"{prefix}:results"
    ids = [r.xadd(stream, {"result": str(i)}).decode() for i in range(4)]
    r.xgroup_create(stream, "gone", id="0")
    r.xgroup_create(stream, "stays", id="0")
    r.xreadgroup("gone", "c", {stream: ">"}, count=2)
    r.xreadgroup("stays", "c", {stream: ">"}, count=1)

    (point, interleaved) = run(
        redis_url, lambda c: trim_point(c, stream), lambda: r.xgroup_destroy(stream, "gone")
    )
    assert interleaved >= 1
    assert point is None  # nothing decided on a group list that changed under it
    assert [e.decode() for e, _ in r.xrange(stream)] == ids
