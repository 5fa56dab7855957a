"""Running a real detector in-process (its own asyncio loop) against the test Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgpack
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, RESULT_FIELD, ImageEvent
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.detector.worker import Detector
from tests.support.acl import as_role

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


def with_detectors(
    members: list[Settings],
    model: Any,
    scenario: Callable[[list[Detector], aioredis.Redis, Keys], Awaitable[T]],
) -> T:
    """Detectors (one per Settings, each its own client) running while `scenario` gets them,
    another client and the keys of the first member's settings."""

    async def main() -> T:
        # As the detector's own ACL user under `make test-acl` (tests/support/acl.py).
        members_as = [as_role(s, "detector") for s in members]
        clients = [async_client(s) for s in members_as]
        other = async_client(members[0])
        detectors = [Detector(s, c, model) for s, c in zip(members_as, clients, strict=True)]
        tasks = [asyncio.create_task(d.run()) for d in detectors]
        try:
            keys = Keys(members[0].prefix, members[0].partitions)
            return await scenario(detectors, other, keys)
        finally:
            for d in detectors:
                d.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30 * len(members))
            for c in [*clients, other]:
                await c.aclose()

    return asyncio.run(main())


def with_detector(
    settings: Settings,
    model: Any,
    scenario: Callable[[Detector, aioredis.Redis, Keys], Awaitable[T]],
) -> T:
    return with_detectors(
        [settings], model, lambda dets, client, keys: scenario(dets[0], client, keys)
    )


def decoded(data: bytes) -> Any:
    """An image decoded for the model as a detector would (for faces computed in the test)."""
    from facestream.detector.imaging import decode_image

    return decode_image(data, max_bytes=1 << 30, max_pixels=1 << 30, max_side=640, upscale=False)


def with_client(settings: Settings, body: Callable[[Any], Awaitable[T]]) -> T:
    """`body(client)` on a fresh asyncio client of `settings`, closed after; run to the end."""

    async def main() -> T:
        client = async_client(settings)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())
