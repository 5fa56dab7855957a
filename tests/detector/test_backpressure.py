"""Back-pressure applies to misses only: cached images are answered while inference is
saturated, and the misses a detector holds stay under its bound (real Redis, real model)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.control.samples import encode
from facestream.detector.flights import State
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def distinct_large_photos(photos: dict[str, np.ndarray], n: int) -> list[bytes]:
    """`n` different images, each slow to decode and infer (a 1600 px photo as PNG): one pixel
    block differs per image, so each is a miss of its own."""
    base = np.kron(photos["astronaut"], np.ones((3, 3, 1), np.uint8))[:1200, :1600]
    out = []
    for i in range(n):
        px = base.copy()
        px[:8, :8] = (i * 37 % 256, i * 11 % 256, i % 256)
        out.append(encode(px))
    return out


def test_cached_images_are_answered_while_inference_is_saturated(
    make_settings: MakeSettings,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    photos: dict[str, np.ndarray],
) -> None:
    settings = make_settings(decode_threads=1, read_lanes=1)  # one reader: nothing hides a stop
    cached = [photo_png[name] for name in ("camera", "coffee", "grace_hopper")]
    misses = distinct_large_photos(photos, 12)

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        await publish(client, keys, *(make_event(img, f"warm-{i}") for i, img in enumerate(cached)))
        assert len(await wait_results(client, keys, len(cached))) == len(cached)
        await client.delete(keys.results)
        # The misses first, the cached images right behind them on the same stream.
        await publish(client, keys, *(make_event(img, f"miss-{i}") for i, img in enumerate(misses)))
        # Until the detector holds every miss: inference is saturated.
        while (await client.xinfo_groups(keys.images))[0]["entries-read"] < len(cached) + 12:  # noqa: ASYNC110 (polling Redis)
            await asyncio.sleep(0.002)
        await publish(client, keys, *(make_event(img, f"hit-{i}") for i, img in enumerate(cached)))
        return await wait_results(client, keys, len(misses) + len(cached), wait_s=120)

    got = with_detector(settings, builtin_model, scenario)
    order = [r["id"] for r in got]
    assert sorted(order) == sorted(
        [f"miss-{i}" for i in range(12)] + [f"hit-{i}" for i in range(3)]
    )
    hits_at = [order.index(f"hit-{i}") for i in range(3)]
    misses_before_last_hit = sum(1 for r in order[: max(hits_at)] if r.startswith("miss-"))
    # Every cached image was answered while most misses were still parked or inferring; while
    # readers stopped whenever inference was busy, they waited until all but a few were done.
    assert misses_before_last_hit <= 4, order
    assert all(got[i]["cached"] for i in hits_at)


def test_the_parked_misses_stay_under_their_bound(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    bound, count = 2, 4
    settings = make_settings(max_parked=bound, read_count=count, read_lanes=1, decode_threads=1)
    misses = distinct_large_photos(photos, 14)
    seen: list[int] = []

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        await publish(client, keys, *(make_event(img, f"m-{i}") for i, img in enumerate(misses)))
        waiting = asyncio.ensure_future(wait_results(client, keys, len(misses), wait_s=120))
        while not waiting.done():
            if det.started:
                seen.append(det.processor.flights.count(State.PARKED))
            await asyncio.sleep(0.005)
        return await waiting

    got = with_detector(settings, builtin_model, scenario)
    assert sorted(r["id"] for r in got) == sorted(f"m-{i}" for i in range(14))
    # Reading stops once `bound` misses are parked; one read may still bring `count` more.
    assert max(seen) <= bound - 1 + count, max(seen)
    assert max(seen) >= bound  # the bound was reached: inference really was saturated
