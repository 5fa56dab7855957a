"""The result cache: a repeat is answered from it, with its TTL, under the model's own key."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import redis
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.detector.model.loader import load_model
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]


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
