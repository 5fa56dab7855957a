"""Recovery on real Redis: stuck work claimed over, poison messages dead-lettered atomically,
entries deleted while pending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import redis
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD
from facestream.common.settings import Settings
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import wait_results, with_detector

MakeSettings = Callable[..., Settings]
FAST_CLAIM = {"lock_ttl_ms": 500, "claim_idle_ms": 800, "claim_every_ms": 100}


def strand(r: redis.Redis, keys: Keys, group: str, consumer: str, events: list[Any]) -> list[str]:
    """Publish events and have `consumer` read them, as a member that then died."""
    with contextlib.suppress(redis.ResponseError):  # the group may exist already
        r.xgroup_create(keys.images, group, id="0", mkstream=True)
    ids = [r.xadd(keys.images, {EVENT_FIELD: e.to_wire()}).decode() for e in events]
    r.xreadgroup(group, consumer, {keys.images: ">"}, count=len(ids))
    return ids


def test_work_of_a_dead_member_is_claimed_and_answered(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(**FAST_CLAIM)
    keys = Keys(settings.prefix)
    strand(
        r,
        keys,
        "detectors",
        "dead-1",
        [make_event(photo_png["camera"], f"stuck-{i}") for i in range(3)],
    )

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        got = await wait_results(client, keys, 3, wait_s=15)
        return got, det.counters.claimed

    got, claimed = with_detector(settings, builtin_model, scenario)
    assert sorted(g["id"] for g in got) == ["stuck-0", "stuck-1", "stuck-2"]
    assert claimed == 3
    assert r.xpending(keys.images, "detectors")["pending"] == 0


def test_poison_message_is_dead_lettered_in_one_step(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(consumer="crashy", max_deliveries=3)
    keys = Keys(settings.prefix)
    event = make_event(photo_png["astronaut"], "poison", source="cam-1")
    [entry] = strand(r, keys, "detectors", "crashy", [event])
    # Two more deliveries that each died before answering (a crash loop).
    for _ in range(2):
        r.xreadgroup("detectors", "crashy", {keys.images: "0"})

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        got = await wait_results(client, keys, 1)
        # On a cluster the result is written a round trip before the ack that completes the
        # step (and its counting): give it that long.
        for _ in range(100):
            if det.counters.dead_lettered:
                break
            await asyncio.sleep(0.02)
        return got, det.counters.dead_lettered, det.counters.images_inferred

    [result], dead, inferred = with_detector(settings, builtin_model, scenario)
    assert dead == 1 and inferred == 0
    assert result["id"] == "poison" and result["error"]["code"] == "max_deliveries"
    assert result["source"] == "cam-1" and result["entry"] == entry
    [(_, letter)] = r.xrange(keys.dlq)
    assert letter[b"reason"] == b"max_deliveries" and letter[b"consumer"] == b"crashy"
    assert int(letter[b"deliveries"]) >= 3 and letter[b"entry"].decode() == entry
    assert msgpack.unpackb(letter[b"event"])["id"] == "poison"  # replayable as it was
    assert r.xpending(keys.images, "detectors")["pending"] == 0


def test_entries_deleted_while_pending_are_cleared(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(**FAST_CLAIM)
    keys = Keys(settings.prefix)
    ids = strand(
        r,
        keys,
        "detectors",
        "dead-2",
        [make_event(photo_png["camera"], f"gone-{i}") for i in range(2)],
    )
    r.xdel(keys.images, ids[0])  # trimmed away while its reader was dead

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        got = await wait_results(client, keys, 1, wait_s=15)
        for _ in range(100):
            if det.counters.deleted:
                break
            await asyncio.sleep(0.05)
        return got, det.counters.deleted

    got, deleted = with_detector(settings, builtin_model, scenario)
    assert [g["id"] for g in got] == ["gone-1"]
    assert deleted == 1
    assert r.xpending(keys.images, "detectors")["pending"] == 0


def test_trimming_keeps_everything_any_group_still_needs(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    from facestream.common.streams.connection import async_client
    from facestream.common.streams.trim import trim_acked

    stream = f"{prefix}:results"
    ids = [r.xadd(stream, {"result": str(i)}).decode() for i in range(10)]

    def trim() -> int:
        async def go() -> int:
            client = async_client(Settings(redis_url=redis_url))
            try:
                return await trim_acked(client, stream)
            finally:
                await client.aclose()

        return asyncio.run(go())

    assert trim() == 0  # no group reads it: keep all
    r.xgroup_create(stream, "fast", id="0")
    r.xgroup_create(stream, "slow", id="0")
    r.xreadgroup("fast", "f", {stream: ">"})  # fast: all delivered and acked
    r.xack(stream, "fast", *ids)
    r.xreadgroup("slow", "s", {stream: ">"}, count=6)  # slow: 6 delivered, 4 undelivered
    r.xack(stream, "slow", *ids[:3])  # and entries 3..5 still pending
    assert trim() == 3
    assert [e.decode() for e, _ in r.xrange(stream)] == ids[3:]
    r.xack(stream, "slow", *ids[3:6])
    assert trim() == 3  # now only the undelivered 6..9 stay
    assert [e.decode() for e, _ in r.xrange(stream)] == ids[6:]
