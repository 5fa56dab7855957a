"""A detector rides out restarts, killed connections, flushed scripts and cluster errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio.cluster as aiocluster
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD
from facestream.common.settings import Settings
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import kill_clients, publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def test_own_pending_entries_are_answered_after_a_restart(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(consumer="restarted")
    keys = Keys(settings.prefix)
    r.xgroup_create(keys.images, settings.detector_group, id="0", mkstream=True)
    for i in range(3):
        r.xadd(keys.images, {EVENT_FIELD: make_event(photo_png["camera"], f"p{i}").to_wire()})
    # A previous life of this consumer read them and died before answering.
    r.xreadgroup(settings.detector_group, "restarted", {keys.images: ">"}, count=10)
    assert r.xpending(keys.images, settings.detector_group)["pending"] == 3

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        return await wait_results(client, keys, 3)

    got = with_detector(settings, builtin_model, scenario)
    assert sorted(g["id"] for g in got) == ["p0", "p1", "p2"]
    assert r.xpending(keys.images, settings.detector_group)["pending"] == 0


def test_detector_survives_its_connections_being_killed(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(photo_png["astronaut"], "before"))
        await wait_results(client, keys, 1)
        await asyncio.sleep(0.2)  # the detector is blocked in XREADGROUP now
        killed = await kill_clients(client)
        await publish(client, keys, make_event(photo_png["camera"], "after"))
        return killed, await wait_results(client, keys, 2)

    killed, got = with_detector(settings, builtin_model, scenario)
    assert killed >= 1
    assert [g["id"] for g in got] == ["before", "after"]


def test_scripts_flushed_from_the_server_are_loaded_again(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """Scripts travel as EVALSHA only; after SCRIPT FLUSH (as after a restart or a failover to
    a replica) the NOSCRIPT answer makes the detector load them and carry on."""
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(photo_png["astronaut"], "before"))
        await wait_results(client, keys, 1)
        if isinstance(client, aiocluster.RedisCluster):
            await client.execute_command("SCRIPT", "FLUSH", target_nodes=client.get_primaries())
        else:
            await client.script_flush()
        await publish(client, keys, make_event(photo_png["camera"], "after"))
        await publish(client, keys, make_event(photo_png["astronaut"], "again"))
        return await wait_results(client, keys, 3)

    got = {g["id"]: g for g in with_detector(settings, builtin_model, scenario)}
    assert set(got) == {"before", "after", "again"}  # a hit need not wait for an inference
    assert got["again"]["cached"] and len(got["after"]["faces"]) == 1


def test_a_cluster_client_error_is_an_outage_not_a_crash(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """redis-py's cluster client raises SlotNotCoveredError (not a RedisError) while a failover
    leaves a slot without a primary: the detector backs off and carries on."""
    from redis.exceptions import SlotNotCoveredError

    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        real = det.client.xreadgroup
        failures = [SlotNotCoveredError("slot 1234 is not covered"), None]

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            failure = failures.pop(0) if failures else None
            if failure is not None:
                raise failure
            return await real(*args, **kwargs)

        await asyncio.sleep(0.3)  # the lanes are blocked in their first reads
        det.client.xreadgroup = flaky
        await publish(client, keys, make_event(photo_png["astronaut"], "through"))
        return await wait_results(client, keys, 1)

    [result] = with_detector(settings, builtin_model, scenario)
    assert result["id"] == "through"


def test_an_answer_being_written_is_still_in_hand(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """Between the end of an image's flight and its acknowledgement an entry is still pending
    in Redis: a re-read of the pending list then (after an outage) must skip it, or it is
    answered twice (a duplicate result on a cluster, where results are written before acks)."""
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        for _ in range(600):  # until the detector has started (it has no event to wait on)
            if det.started:
                break
            await asyncio.sleep(0.05)
        writer = det.processor.writer
        real, entered, release = writer.write, asyncio.Event(), asyncio.Event()

        async def held_write(out: Any) -> None:
            entered.set()
            await release.wait()
            await real(out)

        writer.write = held_write  # type: ignore[method-assign]
        [entry] = await publish(client, keys, make_event(photo_png["astronaut"], "held"))
        await asyncio.wait_for(entered.wait(), 30)
        in_hand = det.in_hand(0)
        release.set()
        return in_hand, entry, await wait_results(client, keys, 1)

    in_hand, entry, results = with_detector(settings, builtin_model, scenario)
    assert entry in in_hand
    assert [r["id"] for r in results] == ["held"]
