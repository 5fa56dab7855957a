"""The served-model hash (common/streams/serving.py) on a real redis-server: a detector's load
field beside its `<until>:<tag>` entry is read by this version, and a reader of the format
before it (re-stated here as it was) sees it as an entry out of its time: the same live
detectors, the same served tag."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.serving import (
    Load,
    LoadMeter,
    advertise,
    live_detectors,
    live_loads,
    served_tag,
    withdraw,
)
from facestream.common.streams.types import AsyncClient
from tests.support.helpers import with_client


def old_live_detectors(entries: dict[bytes, bytes], now_ms: int) -> dict[str, str]:
    """The reader every gateway and CLI had before load fields: `<until>:<tag>`."""

    def until(value: bytes) -> int:
        head = value.decode().partition(":")[0]
        return int(head) if head.isdigit() else 0

    return {
        name.decode(): value.decode().partition(":")[2]
        for name, value in entries.items()
        if until(value) >= now_ms
    }


run = with_client  # body(client) on a fresh client of the settings


def test_loads_are_read_beside_the_entries_and_invisible_to_older_readers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    key = Keys(settings.prefix).serving("detectors")

    async def body(client: AsyncClient) -> None:
        await advertise(client, key, "d1", "model-a", 30_000, Load(0.012))
        await advertise(client, key, "d2", "model-a", 30_000)  # an older detector: no load
        entries = await client.hgetall(key)
        now = int(time.time() * 1000)
        assert set(entries) == {b"d1", b"d2", b"load:d1"}
        assert live_detectors(entries) == {"d1": "model-a", "d2": "model-a"}
        assert old_live_detectors(entries, now) == {"d1": "model-a", "d2": "model-a"}
        assert await served_tag(client, key) == "model-a"
        assert live_loads(entries) == {"d1": Load(0.012, 1)}
        body = json.loads(entries[b"load:d1"].decode().removeprefix("load:"))
        assert body["image_ms"] == 12.0 and body["slots"] == 1 and body["until"] > now

        await withdraw(client, key, "d1")
        assert set(await client.hgetall(key)) == {b"d2"}

    run(settings, body)


def test_a_killed_detectors_load_lapses_with_its_entry(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    key = Keys(settings.prefix).serving("detectors")

    async def body(client: AsyncClient) -> None:
        await advertise(client, key, "gone", "model-a", 1, Load(0.02))  # good for 1 ms
        await asyncio.sleep(0.01)
        entries = await client.hgetall(key)
        assert live_detectors(entries) == {} and live_loads(entries) == {}
        await advertise(client, key, "d1", "model-a", 30_000, Load(0.01))
        assert set(await client.hgetall(key)) == {b"d1", b"load:d1"}  # both of its fields gone

    run(settings, body)


def test_the_load_is_the_model_time_per_image_since_the_last_one() -> None:
    meter = LoadMeter()
    assert meter.load(0.0, 0) is None  # nothing ran yet: nothing to tell
    assert meter.load(0.5, 10) == Load(0.05)
    assert meter.load(0.5, 10) == Load(0.05)  # idle since: the last known time holds
    since = meter.load(0.8, 12)  # the two images since, not the whole history
    assert since is not None and abs(since.image_s - 0.15) < 1e-9
