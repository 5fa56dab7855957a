"""Images locked by another worker: deferred, not spun on; copies inferred once; the stop grace."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from redis.asyncio import Redis

from facestream.common.cache import scripts as cache_scripts
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import pack_faces
from facestream.common.settings import Settings
from facestream.common.streams.scripts import Scripts
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import decoded, publish, results, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def test_busy_lock_defers_then_answers_from_the_cache(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    image = photo_png["lfw_mosaic"]
    sha = hashlib.sha256(image).hexdigest()
    keys = Keys(settings.prefix)
    lock = keys.lock(sha, builtin_model.tag)
    r.set(lock, "another-worker", px=20_000)  # another detector is inferring this image
    faces = builtin_model.detect([decoded(image)])[0]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "waiting"))
        await asyncio.sleep(0.5)
        before = await results(client, keys)
        pending = (await client.xpending(keys.images, settings.detector_group))["pending"]
        # The other worker finishes: result cached, its lock released, in one script.
        scripts = Scripts(client)
        await cache_scripts.cache_put(
            scripts,
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


def test_stop_gives_deferred_images_a_grace_period(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings(shutdown_grace_s=5)
    image = photo_png["grace_hopper"]
    sha = hashlib.sha256(image).hexdigest()
    keys = Keys(settings.prefix)
    lock = keys.lock(sha, builtin_model.tag)
    r.set(lock, "other-worker", px=20_000)
    faces = builtin_model.detect([decoded(image)])[0]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(image, "in-hand"))
        await asyncio.sleep(0.3)
        det.stop.set()  # SIGTERM while the image waits on the other worker
        await asyncio.sleep(0.3)
        await cache_scripts.cache_put(
            Scripts(client),
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
