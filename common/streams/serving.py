"""Which model the detectors serve, told to the gateways: each live detector keeps its model tag
in one hash per group, with the time it is good until. A gateway answering cache hits itself
must read the entries of the model the detectors would answer with, and of no other: while
detectors disagree (a model being rolled out), it answers nothing itself."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from facestream.common.streams.types import AsyncClient


def _now_ms() -> int:
    return int(time.time() * 1000)


async def advertise(
    client: AsyncClient, key: str, consumer: str, model_tag: str, ttl_ms: int
) -> None:
    """Keep `consumer`'s entry fresh, and drop the entries of detectors that stopped without
    withdrawing theirs (killed) once they are past their time."""
    now = _now_ms()
    entries = await client.hgetall(key)
    stale = [name for name, value in entries.items() if _until(value) < now]
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, consumer, f"{now + ttl_ms}:{model_tag}")
    if stale:
        pipe.hdel(key, *stale)
    await pipe.execute()


async def withdraw(client: AsyncClient, key: str, consumer: str) -> None:
    await client.hdel(key, consumer)


async def served_tag(client: AsyncClient, key: str) -> str | None:
    """The one model tag every live detector serves; None when none is live or they differ."""
    tags = set(live_detectors(await client.hgetall(key)).values())
    return tags.pop() if len(tags) == 1 else None


def live_detectors(entries: Mapping[Any, Any], now_ms: int | None = None) -> dict[str, str]:
    """consumer -> model tag of the entries still in their time: the detectors alive now.
    Pure, so the synchronous CLI check and the gateway's status read one rule."""
    now = _now_ms() if now_ms is None else now_ms
    return {
        name.decode() if isinstance(name, bytes) else str(name): _tag(value)
        for name, value in entries.items()
        if _until(value) >= now
    }


def _until(value: bytes | str) -> int:
    text = value.decode() if isinstance(value, bytes) else value
    head, _, _ = text.partition(":")
    return int(head) if head.isdigit() else 0


def _tag(value: bytes | str) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return text.partition(":")[2]
