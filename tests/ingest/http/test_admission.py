"""Admission control (ingest/http/admission.py) through real processes on a real redis-server:
a gateway, and the real detector and model, whose model calls the test slows down or pauses
from outside (tests/support/slow_detector.py). Overloaded on purpose, the gateway refuses at
once (503 `overloaded`, Retry-After) the new photos whose deadline cannot be met, still answers
a cache hit, loses nothing it accepted, and serves new photos within their time again once the
detector keeps up."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.control.embedded import free_port
from tests.conftest import encode
from tests.support.procs import Procs, base_env, gateway_ready

SLOW_S = 0.3  # each model call, while slowed
TIMEOUT_MS = 1500  # the bursts' deadline: about four slowed photos ahead of one fit in it
CONSUMER = "adm-det"


@dataclass
class Sent:
    id: str
    status: int
    took_s: float
    body: dict[str, Any]
    retry_after: str | None


@dataclass
class Overloadable:
    url: str
    prefix: str
    control: Path  # the slowed detector's switches
    procs: Procs

    def slow(self, seconds: float) -> None:
        (self.control / "slow_s").write_text(str(seconds))

    def pause(self, paused: bool) -> None:
        path = self.control / "pause"
        if paused:
            path.touch()
        else:
            path.unlink(missing_ok=True)


@pytest.fixture
def overloadable(redis_url: str, tmp_path: Path) -> Iterator[Overloadable]:
    prefix = f"adm{uuid.uuid4().hex[:8]}"
    control = tmp_path / "control"
    control.mkdir()
    port = free_port()
    procs = Procs(tmp_path, base_env(redis_url, prefix))
    procs.start(
        "detector",
        ["-m", "tests.support.slow_detector"],
        FACESTREAM_CONSUMER=CONSUMER,
        FACESTREAM_TRIM_EVERY_MS="300",  # it advertises its model time this often
        SLOW_DETECTOR_DIR=str(control),
    )
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    stack = Overloadable(url, prefix, control, procs)
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        procs.wait_for(
            lambda: httpx.get(f"{url}/v1/status", timeout=2).json()["detectors"] == 1,
            "the detector advertised",
        )
        yield stack
    finally:
        stack.pause(False)
        stack.slow(0)
        codes = procs.stop()
        assert set(codes) == {0}, procs.logs()


def new_photos(pixels: np.ndarray, tag: int, n: int) -> list[tuple[str, bytes]]:
    """n photos never sent before (the same pixels, each with its own JPEG comment, so its own
    sha256), each with its own request id."""
    return [
        (f"p{tag}-{i}", encode(pixels, "JPEG", quality=90, comment=f"{tag}-{i}".encode()))
        for i in range(n)
    ]


async def _send(
    client: httpx.AsyncClient, url: str, eid: str, image: bytes, timeout_ms: int
) -> Sent:
    started = time.monotonic()
    resp = await client.post(
        f"{url}/v1/detect",
        params={"wait": "true", "id": eid, "timeout_ms": str(timeout_ms)},
        content=image,
    )
    return Sent(
        eid,
        resp.status_code,
        time.monotonic() - started,
        resp.json(),
        resp.headers.get("retry-after"),
    )


def burst(
    url: str,
    photos: list[tuple[str, bytes]],
    hit: tuple[str, bytes] | None = None,
    timeout_ms: int = TIMEOUT_MS,
) -> tuple[list[Sent], Sent | None]:
    """The photos sent at once, then (while they are in hand) a photo already answered."""

    async def go() -> tuple[list[Sent], Sent | None]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            sends = [
                asyncio.create_task(_send(client, url, eid, img, timeout_ms)) for eid, img in photos
            ]
            cached = None
            if hit is not None:
                await asyncio.sleep(0.3)
                cached = await _send(client, url, hit[0], hit[1], timeout_ms)
            return list(await asyncio.gather(*sends)), cached

    return asyncio.run(go())


def result_ids(r: redis.Redis, prefix: str) -> list[str]:
    return [msgpack.unpackb(f[b"result"])["id"] for _, f in r.xrange(Keys(prefix).results)]


def check_refusals(sent: list[Sent]) -> tuple[list[Sent], list[Sent]]:
    """(accepted, refused): each refusal is 503 `overloaded` with Retry-After, said at once;
    everything else was accepted and answered (200) or timed out (504: answered later)."""
    refused = [s for s in sent if s.status == 503]
    accepted = [s for s in sent if s.status != 503]
    for s in refused:
        assert s.body["error"]["code"] == "overloaded", s.body
        assert "timeout" in s.body["error"]["message"], s.body
        assert s.retry_after is not None and int(s.retry_after) >= 1
        assert s.took_s < TIMEOUT_MS / 1000, s  # not after waiting out its deadline
    assert all(s.status in (200, 504) for s in accepted), [(s.status, s.body) for s in accepted]
    if refused:
        # Said at once: the time of an HTTP round trip on a busy two-core machine, far from
        # the deadline (the gateway answers a refusal without waiting on Redis).
        assert statistics.median(s.took_s for s in refused) < 0.5, [s.took_s for s in refused]
    return accepted, refused


def test_overload_is_refused_at_once_hits_answered_nothing_lost_and_it_recovers(
    overloadable: Overloadable,
    photos: dict[str, np.ndarray],
    r: redis.Redis,
) -> None:
    stack, url = overloadable, overloadable.url
    pixels = photos["astronaut"]
    stack.slow(SLOW_S)
    warm = new_photos(pixels, 1, 2)
    for eid, image in warm:  # the detector learns (and tells) what a model call costs now
        first = httpx.post(
            f"{url}/v1/detect", params={"wait": "true", "id": eid}, content=image, timeout=30
        )
        assert first.status_code == 200 and len(first.json()["faces"]) == 1, first.text

    serving = Keys(stack.prefix).serving("detectors")

    def model_time_told() -> bool:
        load = r.hget(serving, f"load:{CONSUMER}")
        return load is not None and json.loads(load[5:])["image_ms"] >= SLOW_S * 1000 * 0.8

    stack.procs.wait_for(model_time_told, "the detector's model time advertised", 10)
    time.sleep(0.6)  # the gateway's read of it (every 0.5 s)

    # --- slowed: far more new photos at once than their deadline allows ----------------------
    sent, hit = burst(url, new_photos(pixels, 2, 24), hit=("hit-1", warm[0][1]))
    accepted, refused = check_refusals(sent)
    assert len(refused) >= 12, [(s.status, round(s.took_s, 2)) for s in sent]
    assert 1 <= len(accepted) <= 10, [(s.status, round(s.took_s, 2)) for s in sent]
    assert hit is not None and hit.status == 200 and hit.body["cached"] is True, hit
    assert hit.took_s < 1.0, hit  # answered while the new photos wait

    # Nothing accepted is lost: each has exactly one result, even those that timed out; a
    # refused request was never published.
    def answered(ids: set[str]) -> bool:
        return ids <= set(result_ids(r, stack.prefix))

    stack.procs.wait_for(lambda: answered({s.id for s in accepted}), "every accepted answered", 30)

    # --- paused: nothing is answered for a while ----------------------------------------------
    stack.pause(True)
    waves, hit2 = burst(url, new_photos(pixels, 3, 12), hit=("hit-2", warm[1][1]))
    later, _ = burst(url, new_photos(pixels, 4, 8))  # a second wave, as the first waits
    paused_accepted, paused_refused = check_refusals(waves + later)
    assert len(paused_accepted) <= 8 and len(paused_refused) >= 12
    assert all(s.status == 503 for s in later), [(s.status, round(s.took_s, 2)) for s in later]
    assert hit2 is not None and hit2.status == 200 and hit2.body["cached"] is True, hit2
    assert all(s.status == 504 for s in paused_accepted)  # no answer while paused
    released = time.monotonic()
    stack.pause(False)
    stack.slow(0)
    everyone = accepted + paused_accepted
    stack.procs.wait_for(lambda: answered({s.id for s in everyone}), "the backlog drained", 30)
    ids = result_ids(r, stack.prefix)
    for s in everyone:
        assert ids.count(s.id) == 1, s.id
    for s in refused + paused_refused:
        assert s.id not in ids, s.id
    assert r.xlen(Keys(stack.prefix).images) == 0  # nothing left behind

    # --- back to its pace: new photos are served within their time again, in seconds ------
    rounds = iter(range(5, 100))
    while True:
        again, _ = burst(url, new_photos(pixels, next(rounds), 3))
        if all(s.status == 200 for s in again):
            break
        assert time.monotonic() - released < 15, [(s.status, s.body) for s in again]
    for _ in range(3):
        again, _ = burst(url, new_photos(pixels, next(rounds), 3))
        assert all(s.status == 200 and s.took_s < TIMEOUT_MS / 1000 for s in again), again
    recovered_s = time.monotonic() - released
    assert recovered_s < 15, recovered_s
