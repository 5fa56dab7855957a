"""The detector through a real redis-server with the real model on real photos."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import redis
import redis.asyncio.cluster as aiocluster
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, ImageEvent, pack_faces
from facestream.common.settings import Settings
from facestream.common.streams.scripts import Scripts
from facestream.detector.model.loader import load_model
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.helpers import kill_clients, publish, results, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def test_event_to_result_with_contract_fields(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    image = photo_png["astronaut"]
    event = make_event(image, "evt-1", source="cam-7", meta={"shop": 12, "tags": ["a"]})

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        [entry] = await publish(client, keys, event)
        [result] = await wait_results(client, keys, 1)
        return entry, result

    entry, result = with_detector(settings, builtin_model, scenario)
    keys = Keys(settings.prefix)
    direct = builtin_model.detect([_decoded(image)])[0]
    assert result == {
        "v": 1,
        "id": "evt-1",
        "sha256": hashlib.sha256(image).hexdigest(),
        "model": builtin_model.tag,
        "width": 512,
        "height": 512,
        "faces": [f.to_wire() for f in direct],
        "cached": False,
        "source": "cam-7",
        "meta": {"shop": 12, "tags": ["a"]},
        "ts_ms": event.ts_ms,
        "done_ms": result["done_ms"],
        "consumer": settings.consumer,
        "entry": entry,
    }
    assert len(result["faces"]) == 1 and len(result["faces"][0]["kps"]) == 5
    assert result["done_ms"] >= event.ts_ms
    # Acked, and the image bytes left the stream.
    assert r.xpending(keys.images, settings.detector_group)["pending"] == 0
    assert r.xlen(keys.images) == 0


def _decoded(data: bytes) -> Any:
    from facestream.detector.imaging import decode_image

    return decode_image(data, max_bytes=1 << 30, max_pixels=1 << 30, max_side=640, upscale=False)


def test_same_image_again_is_cached_with_ttl(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(cache_ttl_s=3600)
    image = photo_png["grace_hopper"]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "first"))
        await wait_results(client, keys, 1)
        await publish(client, keys, make_event(image, "second"))
        got = await wait_results(client, keys, 2)
        return got, det.counters.images_inferred

    (first, second), inferred = with_detector(settings, builtin_model, scenario)
    assert inferred == 1
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["faces"] == second["faces"] and second["id"] == "second"
    key = Keys(settings.prefix).cache(hashlib.sha256(image).hexdigest(), builtin_model.tag)
    assert 0 < r.pttl(key) <= 3600 * 1000
    assert set(r.hgetall(key)) == {b"faces", b"width", b"height", b"model", b"created_ms"}


def test_other_model_settings_use_another_cache_key(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    image = photo_png["astronaut"]
    sha = hashlib.sha256(image).hexdigest()
    loose = load_model(Settings(score_threshold=0.5))
    assert loose.tag != builtin_model.tag
    for n, model in enumerate((builtin_model, loose), start=1):
        # Same prefix, so both share one cache namespace and one results stream.
        settings = make_settings()

        async def scenario(det: Detector, client: Redis, keys: Keys, n: int = n) -> Any:
            await publish(client, keys, make_event(image))
            return (await wait_results(client, keys, n))[-1]

        result = with_detector(settings, model, scenario)
        # Each model computes its own answer: no result crosses models.
        assert result["cached"] is False and result["model"] == model.tag
    keys = Keys(make_settings().prefix)
    assert r.exists(keys.cache(sha, builtin_model.tag), keys.cache(sha, loose.tag)) == 2


def test_bad_input_gets_error_results_and_the_worker_lives(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    good = photo_png["astronaut"]
    bad_hash = make_event(good, "bad-hash")
    bad_hash.sha256 = "0" * 64
    bogus = [
        b"\xc1\xc1 not msgpack",
        msgpack.packb({"v": 1, "image": b"x"}),
        # Past the publisher's door checks, as a foreign publisher could send them:
        ImageEvent(id="gif", image=b"GIF89a not allowed").to_wire(),
        ImageEvent(id="truncated-jpeg", image=b"\xff\xd8\xff" + b"\0" * 100).to_wire(),
        bad_hash.to_wire(),
    ]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *bogus)
        await client.xadd(keys.images, {b"wrong-field": b"1"})
        await publish(client, keys, make_event(good, "good"))
        return await wait_results(client, keys, 7)

    got = with_detector(settings, builtin_model, scenario)
    by_id = {(g["id"], (g.get("error") or {}).get("code")) for g in got}
    assert by_id == {
        ("", "bad_event"),
        ("gif", "undecodable"),
        ("truncated-jpeg", "undecodable"),
        ("bad-hash", "hash_mismatch"),
        ("good", None),
    }
    assert len(got) == 7
    assert sum(1 for g in got if g["id"] == "") == 3  # garbage, no id, wrong field
    assert len(next(g for g in got if g["id"] == "good")["faces"]) == 1
    assert r.xpending(Keys(settings.prefix).images, settings.detector_group)["pending"] == 0


def test_reply_to_gets_the_result_and_foreign_keys_are_refused(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    keys = Keys(settings.prefix)
    reply = keys.reply_stream("gw-1")
    foreign = f"{settings.prefix}:results-spoof"

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(
            client,
            keys,
            make_event(photo_png["camera"], "ok", reply_to=reply),
            make_event(photo_png["camera"], "evil", reply_to=foreign),
        )
        await wait_results(client, keys, 2)
        return await results(client, keys), await results(client, keys, reply)

    main, replies = with_detector(settings, builtin_model, scenario)
    assert [x["id"] for x in replies] == ["ok"]
    assert {x["id"]: x == replies[0] for x in main}["ok"]
    evil = next(x for x in main if x["id"] == "evil")
    assert evil["error"]["code"] == "bad_event" and "reply_to" in evil["error"]["message"]
    assert not r.exists(foreign)


def test_busy_lock_defers_then_answers_from_the_cache(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    image = photo_png["lfw_mosaic"]
    sha = hashlib.sha256(image).hexdigest()
    keys = Keys(settings.prefix)
    lock = keys.lock(sha, builtin_model.tag)
    r.set(lock, "another-worker", px=20_000)  # another detector is inferring this image
    faces = builtin_model.detect([_decoded(image)])[0]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "waiting"))
        await asyncio.sleep(0.5)
        before = await results(client, keys)
        pending = (await client.xpending(keys.images, settings.detector_group))["pending"]
        # The other worker finishes: result cached, its lock released, in one script.
        scripts = Scripts(client)
        await scripts.cache_put(
            client,
            keys.cache(sha, builtin_model.tag),
            lock,
            "another-worker",
            60_000,
            pack_faces(faces),
            640,
            512,
            builtin_model.tag,
            1,
        )
        after = await wait_results(client, keys, 1)
        return before, pending, after, det.counters.images_inferred

    before, pending, after, inferred = with_detector(settings, builtin_model, scenario)
    assert before == [] and pending == 1
    assert len(after) == 1 and after[0]["cached"] is True and inferred == 0
    assert len(after[0]["faces"]) == 20


def test_dead_lock_holder_expires_and_the_work_is_redone(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    image = photo_png["astronaut"]
    keys = Keys(settings.prefix)
    r.set(keys.lock(hashlib.sha256(image).hexdigest(), builtin_model.tag), "dead", px=300)

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "orphan"))
        got = await wait_results(client, keys, 1, wait_s=10)
        return got, det.counters.images_inferred

    got, inferred = with_detector(settings, builtin_model, scenario)
    assert len(got) == 1 and got[0]["cached"] is False and inferred == 1


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


def test_a_batch_of_all_photos(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *(make_event(d, n) for n, d in photo_png.items()))
        return await wait_results(client, keys, len(photo_png))

    got = {g["id"]: len(g["faces"]) for g in with_detector(settings, builtin_model, scenario)}
    assert got == {"astronaut": 1, "camera": 1, "grace_hopper": 1, "lfw_mosaic": 20, "coffee": 0}


def test_many_copies_in_one_process_infer_once(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    from tests.conftest import encode

    settings = make_settings(read_count=16)
    image = encode(photos["astronaut"], "JPEG", quality=91)  # bytes no other test uses

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *(make_event(image, f"c{i}") for i in range(100)))
        return await wait_results(client, keys, 100), det.counters.images_inferred

    got, inferred = with_detector(settings, builtin_model, scenario)
    assert inferred == 1
    assert len({g["id"] for g in got}) == 100 and len(got) == 100
    assert sum(1 for g in got if not g["cached"]) == 1


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


def test_stop_gives_deferred_images_a_grace_period(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(shutdown_grace_s=5)
    image = photo_png["grace_hopper"]
    sha = hashlib.sha256(image).hexdigest()
    keys = Keys(settings.prefix)
    lock = keys.lock(sha, builtin_model.tag)
    r.set(lock, "other-worker", px=20_000)
    faces = builtin_model.detect([_decoded(image)])[0]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "in-hand"))
        await asyncio.sleep(0.3)
        det.stop.set()  # SIGTERM while the image waits on the other worker
        await asyncio.sleep(0.3)
        await Scripts(client).cache_put(
            client,
            keys.cache(sha, builtin_model.tag),
            lock,
            "other-worker",
            60_000,
            pack_faces(faces),
            512,
            600,
            builtin_model.tag,
            1,
        )
        return await wait_results(client, keys, 1, wait_s=5)

    got = with_detector(settings, builtin_model, scenario)
    assert [g["id"] for g in got] == ["in-hand"] and got[0]["cached"] is True
    assert r.xpending(keys.images, settings.detector_group)["pending"] == 0


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
