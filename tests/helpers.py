"""Running a real detector in-process (its own asyncio loop) against the test Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgpack
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from common.connection import async_client
from common.keys import Keys
from common.schema import EVENT_FIELD, RESULT_FIELD, ImageEvent
from common.settings import Settings
from detector.worker import Detector

T = TypeVar("T")


async def results(
    client: aioredis.Redis, keys: Keys, stream: str | None = None
) -> list[dict[str, Any]]:
    entries = await client.xrange(stream or keys.results)
    return [msgpack.unpackb(fields[RESULT_FIELD]) for _, fields in entries]


async def wait_results(
    client: aioredis.Redis, keys: Keys, n: int, wait_s: float = 20.0, stream: str | None = None
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait_s
    while True:
        got = await results(client, keys, stream)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.02)


async def kill_clients(client: Any) -> int:
    """CLIENT KILL every normal connection but ours, on every node of a cluster."""
    args = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    if isinstance(client, aiocluster.RedisCluster):
        answers = await client.execute_command(*args, target_nodes=client.get_nodes())
        return sum(int(n) for n in answers.values())
    return int(await client.execute_command(*args))


async def publish(client: aioredis.Redis, keys: Keys, *events: ImageEvent | bytes) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(keys.images, {EVENT_FIELD: ev if isinstance(ev, bytes) else ev.to_wire()})
    return [e.decode() for e in await pipe.execute()]


def with_detector(
    settings: Settings,
    model: Any,
    scenario: Callable[[Detector, aioredis.Redis, Keys], Awaitable[T]],
) -> T:
    async def main() -> T:
        client = async_client(settings)
        other = async_client(settings)
        detector = Detector(settings, client, model)
        task = asyncio.create_task(detector.run())
        try:
            return await scenario(detector, other, Keys(settings.prefix, settings.partitions))
        finally:
            detector.stop.set()
            await asyncio.wait_for(task, 30)
            await client.aclose()
            await other.aclose()

    return asyncio.run(main())
