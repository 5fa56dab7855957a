"""Cache hits answered by the gateway itself (ingest/http/cache_answers.py), with a real gateway
and detector: one result per request on the results stream, the detector's cached answer,
counted."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgpack
import pytest
import redis

from facestream.common.contract.keys import Keys
from tests.support.procs import Procs, detector_and_gateway

Stack = tuple[str, str, Procs]


def stack(redis_url: str, tmp: Any, hits: bool, hotlines: bool = True) -> Iterator[Stack]:
    hotline = {"FACESTREAM_REDIS_HOTLINE": "true" if hotlines else "false"}
    with detector_and_gateway(
        redis_url,
        tmp,
        "gh",
        hotline,
        FACESTREAM_CONSUMER="gh-gw",
        FACESTREAM_GATEWAY_HITS="true" if hits else "false",
        **hotline,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def with_hits(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(redis_url, tmp_path_factory.mktemp("gh"), hits=True)


@pytest.fixture(scope="module")
def without_hits(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(redis_url, tmp_path_factory.mktemp("gh-off"), hits=False)


@pytest.fixture(scope="module", params=[True, False], ids=["hotlines", "redis-py"])
def fresh_with_hits(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of its own, with the hot calls on hotlines and (FACESTREAM_REDIS_HOTLINE=false)
    every call through redis-py's client, as on a cluster."""
    yield from stack(redis_url, tmp_path_factory.mktemp("gh-f"), hits=True, hotlines=request.param)


def detect(url: str, image: bytes, event_id: str, crops: bool = False) -> dict[str, Any]:
    resp = httpx.post(
        f"{url}/v1/detect",
        params={"wait": "true", "id": event_id, "crops": str(crops).lower()},
        content=image,
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def results(r: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    return [msgpack.unpackb(f[b"result"]) for _, f in r.xrange(Keys(prefix).results)]


def wait_served(r: redis.Redis, prefix: str, procs: Procs) -> None:
    """The detector tells the gateways its model at start: wait for that."""
    procs.wait_for(lambda: bool(r.hlen(Keys(prefix).serving("detectors"))), "model served")


def lookups(url: str, metric: str = "facestream_gateway_cache_lookups_total") -> dict[str, float]:
    """A gateway counter from /metrics by its one label's value ("" for a counter without)."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(metric + "{"):
            out[line[len(metric) + 1 :].split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(metric + " "):
            out[""] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_cached_image_is_answered_by_the_gateway_once_per_request(
    fresh_with_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = fresh_with_hits
    wait_served(r, prefix, procs)
    image = photo_png["astronaut"]
    first = detect(url, image, "a-1")  # a miss: the detector infers it
    assert first["cached"] is False and first["consumer"] == "gh-det"
    again = [detect(url, image, f"a-{i}") for i in range(2, 5)]
    for body in again:
        assert body["cached"] is True
        assert body["consumer"].startswith("gateway:")
        assert body["faces"] == first["faces"]
        assert (body["width"], body["height"], body["model"]) == (
            first["width"],
            first["height"],
            first["model"],
        )
        assert body["sha256"] == hashlib.sha256(image).hexdigest()
        assert body["entry"] == ""
    # Exactly one result per request on the results stream: sinks see hits and misses alike.
    published = results(r, prefix)
    assert sorted(p["id"] for p in published) == ["a-1", "a-2", "a-3", "a-4"]
    by_id = {p["id"]: p for p in published}
    # What the script added from the gateway's head and the cache entry is the answer itself.
    for i, body in enumerate(again, start=2):
        assert by_id[f"a-{i}"] == body
    # No event went to the images stream for the hits: the detectors read only the first.
    (group,) = r.xinfo_groups(Keys(prefix).images)
    assert group["entries-read"] == 1
    assert lookups(url) == {"hit": 3.0, "miss": 1.0}


def test_a_sink_group_sees_gateway_hits_and_detector_results_once_each(
    with_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = with_hits
    wait_served(r, prefix, procs)
    results_stream = Keys(prefix).results
    r.xgroup_create(results_stream, "audit", id="$", mkstream=True)
    image = photo_png["camera"]
    ids = [f"s-{i}" for i in range(4)]
    bodies = [detect(url, image, event_id) for event_id in ids]
    assert [b["cached"] for b in bodies] == [False, True, True, True]
    read = r.xreadgroup("audit", "a", {results_stream: ">"}, count=100)
    seen = [msgpack.unpackb(f[b"result"])["id"] for _, f in read[0][1]]
    assert sorted(seen) == ids


def test_with_the_setting_off_the_detector_answers_hits(
    without_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = without_hits
    wait_served(r, prefix, procs)
    image = photo_png["astronaut"]
    detect(url, image, "o-1")
    body = detect(url, image, "o-2")
    assert body["cached"] is True and body["consumer"] == "gh-det"
    assert body["entry"] != ""


def test_the_drop_in_route_takes_the_same_path(
    with_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = with_hits
    wait_served(r, prefix, procs)
    image = photo_png["lfw_mosaic"]
    shapes = []
    for _ in range(2):
        resp = httpx.post(
            f"{url}/face-detection", files={"image": ("x.png", image, "image/png")}, timeout=30
        )
        assert resp.status_code == 200, resp.text
        shapes.append(resp.json())
    assert shapes[0] == shapes[1] and len(shapes[0]["boxes"]) == 20
    mine = [p for p in results(r, prefix) if p["sha256"] == hashlib.sha256(image).hexdigest()]
    assert [p["cached"] for p in mine] == [False, True]
    assert mine[1]["consumer"].startswith("gateway:")


def test_a_hit_asking_for_crops_is_published_once_with_its_crops(
    with_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = with_hits
    wait_served(r, prefix, procs)
    image = photo_png["astronaut"]
    detect(url, image, "c-1")
    body = detect(url, image, "c-2", crops=True)
    assert body["cached"] is True and body["consumer"].startswith("gateway:")
    assert body["faces"] and all(f["crop"] for f in body["faces"])
    assert body["crops_omitted"] == 0  # under the caps: every face has its crop
    mine = [p for p in results(r, prefix) if p["id"] == "c-2"]
    assert len(mine) == 1 and mine[0]["crops_omitted"] == 0
    assert [bool(f.get("crop")) for f in mine[0]["faces"]] == [True] * len(body["faces"])


def test_concurrent_requests_for_a_new_image_share_one_wait(
    with_hits: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    """Requests of one gateway process for an image it already waits on publish no event:
    each gets a copy of the first one's answer, and its own result on the results stream."""
    url, prefix, procs = with_hits
    wait_served(r, prefix, procs)
    detector = procs.running[0][0]
    image = photo_png["grace_hopper"]
    images = Keys(prefix).images
    n = 8

    def added() -> int:
        return int(r.xinfo_stream(images)["entries-added"])

    def misses() -> float:
        return lookups(url).get("miss", 0.0)

    events, looked_up = added(), misses()
    # The detector paused: the first request's answer cannot come before all the others wait.
    detector.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(n) as pool:
            first = pool.submit(detect, url, image, "j-0")
            procs.wait_for(lambda: added() == events + 1, "the first request's event")
            rest = [pool.submit(detect, url, image, f"j-{i}") for i in range(1, n)]
            procs.wait_for(lambda: misses() == looked_up + n, "every request looked up")
            time.sleep(0.2)  # from the look-up to the shared wait: no Redis in between
            detector.send_signal(signal.SIGCONT)
            bodies = [first.result(), *(f.result() for f in rest)]
    finally:
        detector.send_signal(signal.SIGCONT)
    assert added() == events + 1  # one event for eight requests
    assert bodies[0]["consumer"] == "gh-det" and bodies[0]["cached"] is False
    for body in bodies[1:]:
        assert body["consumer"].startswith("gateway:") and body["cached"] is True
        assert body["entry"] == ""
        assert {k: v for k, v in body.items() if k not in COPIED} == {
            k: v for k, v in bodies[0].items() if k not in COPIED
        }
    assert lookups(url, "facestream_gateway_joined_total") == {"": n - 1}
    mine = {p["id"]: p for p in results(r, prefix) if p["id"].startswith("j-")}
    assert mine == {b["id"]: b for b in bodies}  # one result each, as answered


# A shared wait's answer is the first one's but for these (the request's own, and who made it).
COPIED = {"id", "source", "meta", "ts_ms", "cached", "consumer", "entry", "done_ms"}
