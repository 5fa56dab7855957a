"""A detector's stage histograms (detector/metrics.py `facestream_stage_seconds`), read from
its registry around a real detector on a real redis-server: a new photo observes every stage
once, a repeat (a hit at the detector) only the stages before the model, and the stages of a
new photo add up to no more than its time from publish to result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.detector.metrics import REGISTRY
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector

STAGES = ("stream", "lookup", "parked", "decode", "model_queue", "model", "write")


def counts() -> dict[str, float]:
    return {
        s: REGISTRY.get_sample_value("facestream_stage_seconds_count", {"stage": s}) or 0.0
        for s in STAGES
    }


def sums() -> dict[str, float]:
    return {
        s: REGISTRY.get_sample_value("facestream_stage_seconds_sum", {"stage": s}) or 0.0
        for s in STAGES
    }


async def written(before: dict[str, float]) -> None:
    """The result is on its stream a moment before the write's round trip is back and its
    `write` stage observed: wait for that, not for anything else."""
    for _ in range(500):  # 5 s at most
        if counts()["write"] != before["write"]:
            return
        await asyncio.sleep(0.01)


def test_a_new_photo_observes_each_stage_once_and_a_repeat_only_the_first_two(
    make_settings: Callable[..., Settings], builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    image = photo_png["astronaut"]
    seen: list[dict[str, float]] = []

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        seen.append(counts())
        seen.append(sums())
        await publish(client, keys, make_event(image, "new-1"))
        first = await wait_results(client, keys, 1)
        await written(seen[0])
        seen.append(counts())
        seen.append(sums())
        await publish(client, keys, make_event(image, "again-1"))
        both = await wait_results(client, keys, 2)
        seen.append(counts())
        return [*first, *both[1:]]

    new, again = with_detector(make_settings(), builtin_model, scenario)
    before, sums_before, after_new, sums_new, after_again = seen
    assert new["cached"] is False and again["cached"] is True
    assert {s: after_new[s] - before[s] for s in STAGES} == dict.fromkeys(STAGES, 1.0)
    hit = {s: after_again[s] - after_new[s] for s in STAGES}
    assert hit == {**dict.fromkeys(STAGES, 0.0), "stream": 1.0, "lookup": 1.0}
    # One after the other: up to the model's, together no longer than from its publish
    # (ts_ms) to its result being made (done_ms, before the write), both whole milliseconds,
    # like the stream stage's start: 3 ms to spare.
    spent = sum(sums_new[s] - sums_before[s] for s in STAGES if s != "write")
    assert 0 < spent <= (new["done_ms"] - new["ts_ms"]) / 1000 + 0.003, spent
