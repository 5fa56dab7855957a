"""The Python publisher: door checks, backpressure, retries after a lost connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis
import redis.cluster

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Limits
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client, sync_client
from facestream.common.streams.server_features import has_idempotent_xadd, version_of
from facestream.ingest.publisher import (
    AsyncPublisher,
    BadRequest,
    ImageTooLarge,
    NotAnImage,
    Overloaded,
    Publisher,
    make_event,
)

MakeSettings = Callable[..., Settings]
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100


def test_door_checks() -> None:
    with pytest.raises(NotAnImage):
        make_event(b"GIF89a....")
    with pytest.raises(ImageTooLarge):
        make_event(JPEG, limits=Limits(max_image_bytes=50))
    with pytest.raises(BadRequest):
        make_event(b"")
    with pytest.raises(BadRequest):
        make_event(JPEG, "x" * 129)
    with pytest.raises(BadRequest):
        make_event(JPEG, meta={"k": "v" * 5000})
    event = make_event(JPEG, "ok", meta={"k": 1})
    assert event.sha256 and event.ts_ms and event.id == "ok"


def test_publish_many_is_one_pipeline_in_order(make_settings: MakeSettings, r: redis.Redis) -> None:
    settings = make_settings()
    publisher = Publisher(settings, r)
    ids = publisher.publish_many([make_event(JPEG, f"e{i}") for i in range(20)])
    stream = r.xrange(Keys(settings.prefix).images)
    assert [e.decode() for e, _ in stream] == ids
    assert [msgpack.unpackb(f[b"event"])["id"] for _, f in stream] == [f"e{i}" for i in range(20)]


def test_backpressure_sync_and_async(make_settings: MakeSettings, r: redis.Redis) -> None:
    settings = make_settings(max_lag=5, backpressure_check_ms=0, retry_after_s=3)
    r.xgroup_create(Keys(settings.prefix).images, settings.detector_group, id="0", mkstream=True)
    publisher = Publisher(settings, r)
    publisher.publish_many([make_event(JPEG) for _ in range(5)])
    with pytest.raises(Overloaded) as info:
        publisher.publish(make_event(JPEG))
    assert info.value.retry_after_s == 3 and "5 events behind" in info.value.message

    async def go() -> None:
        client = async_client(settings)
        try:
            with pytest.raises(Overloaded):
                await AsyncPublisher(settings, client).publish(make_event(JPEG))
        finally:
            await client.aclose()

    asyncio.run(go())
    # A detector catching up lets work in again.
    r.xreadgroup(settings.detector_group, "d", {Keys(settings.prefix).images: ">"})
    assert publisher.publish(make_event(JPEG))


def test_publish_survives_a_killed_connection(make_settings: MakeSettings, r: redis.Redis) -> None:
    settings = make_settings()
    client = sync_client(settings)
    publisher = Publisher(settings, client)
    publisher.publish(make_event(JPEG, "before"))
    if isinstance(r, redis.cluster.RedisCluster):
        killed = r.client_kill_filter(_type="normal", skipme=True, target_nodes=r.get_nodes())
        assert sum(killed.values()) >= 1
    else:
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
    publisher.publish(make_event(JPEG, "after"))
    ids = [msgpack.unpackb(f[b"event"])["id"] for _, f in r.xrange(Keys(settings.prefix).images)]
    assert ids == ["before", "after"]
    client.close()


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"redis_version": "7.0.15"}, False),
        ({"redis_version": "8.2.1"}, False),
        ({"redis_version": "8.6.0"}, True),
        ({"redis_version": "9.0.0-rc1"}, True),
        ({"redis_version": "7.2.4", "valkey_version": "9.1.2"}, False),
    ],
)
def test_idempotent_xadd_detection(info: dict[str, Any], expected: bool) -> None:
    assert has_idempotent_xadd(info) is expected
    assert version_of({"redis_version": "8.6.1"}) == (8, 6, 1)


def test_concurrent_async_publishes_share_round_trips(
    make_settings: MakeSettings, r: redis.Redis
) -> None:
    settings = make_settings()

    async def go() -> tuple[list[str], int]:
        client = async_client(settings)
        publisher = AsyncPublisher(settings, client)
        calls = 0
        send = publisher._xadd

        async def counting(events: list[Any]) -> list[str]:
            nonlocal calls
            calls += 1
            return await send(events)

        publisher._xadd = counting  # type: ignore[method-assign]
        try:
            ids = await asyncio.gather(
                *(publisher.publish(make_event(JPEG, f"c{i}")) for i in range(100))
            )
        finally:
            await client.aclose()
        return list(ids), calls

    ids, calls = asyncio.run(go())
    stream = r.xrange(Keys(settings.prefix).images)
    event_at = {e.decode(): msgpack.unpackb(f[b"event"])["id"] for e, f in stream}
    assert len(event_at) == 100
    assert [event_at[entry] for entry in ids] == [f"c{i}" for i in range(100)]  # own entry each
    assert calls < 10  # one pipeline per event-loop cycle, not one per publish


def test_backpressure_counts_bytes_not_only_events(
    make_settings: MakeSettings, r: redis.Redis
) -> None:
    """10,000 events of 20 MiB would be 200 GB: the images stream's bytes are bounded too."""
    settings = make_settings(max_lag=0, max_queue_bytes=1_000_000, backpressure_check_ms=0)
    publisher = Publisher(settings, r)
    big = JPEG + b"\0" * 300_000
    accepted = 0
    with pytest.raises(Overloaded) as info:
        for _ in range(10):
            publisher.publish(make_event(big))
            accepted += 1
    assert 2 <= accepted <= 4 and "bytes" in info.value.message
    assert int(r.xlen(Keys(settings.prefix).images)) == accepted


def test_a_gateways_unread_answers_count_towards_the_byte_budget(
    make_settings: MakeSettings, r: redis.Redis, redis_url: str
) -> None:
    """Answers waiting in a gateway's reply stream are held in Redis like queued images: the
    publisher that owns the stream refuses new work while images and answers pass the budget."""
    settings = make_settings(max_lag=0, max_queue_bytes=1_000_000, backpressure_check_ms=0)
    reply = Keys(settings.prefix).reply_stream("gw-test")
    for _ in range(4):
        r.xadd(reply, {"result": b"\0" * 300_000})  # ~1.2 MB of answers nobody read yet

    async def publish() -> str:
        client = async_client(Settings(redis_url=redis_url))
        try:
            return await AsyncPublisher(settings, client, reply).publish(make_event(JPEG))
        finally:
            await client.aclose()

    with pytest.raises(Overloaded) as info:
        asyncio.run(publish())
    assert "unread answers" in info.value.message
    r.xtrim(reply, maxlen=0, approximate=False)  # the gateway read them
    assert asyncio.run(publish())


def test_lag_forgets_entries_erased_by_an_external_trim(
    make_settings: MakeSettings, r: redis.Redis
) -> None:
    settings = make_settings(max_lag=5, backpressure_check_ms=0)
    images = Keys(settings.prefix).images
    r.xgroup_create(images, settings.detector_group, id="0", mkstream=True)
    publisher = Publisher(settings, r)
    publisher.publish_many([make_event(JPEG) for _ in range(5)])
    r.xtrim(images, maxlen=0, approximate=False)  # what an operator (not ingest) may do
    assert publisher.publish(make_event(JPEG))
