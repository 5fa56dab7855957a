"""Drop-in for the service facestream replaces: its HTTP API on a running stack, and importing
its Redis cache so that facestream starts warm."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control.cli import main
from facestream.control.embedded import EmbeddedRedis, free_port
from facestream.detector.worker import Detector
from facestream.ingest.http.dropin import old_shape
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector
from tests.support.procs import Procs, base_env, gateway_ready


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    procs = Procs(
        tmp_path_factory.mktemp("compat"),
        base_env(redis_url, f"compat{np.random.randint(1 << 30)}"),
    )
    procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="compat-det")
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        yield url
    finally:
        assert procs.stop() == [0, 0], procs.logs()


def test_compat_endpoint_answers_the_old_shape(stack: str, photo_png: dict[str, bytes]) -> None:
    image = photo_png["lfw_mosaic"]
    # As the old service's clients post: a multipart form with an `image` file field.
    old = httpx.post(
        f"{stack}/face-detection", files={"image": ("group.png", image, "image/png")}, timeout=30
    )
    assert old.status_code == 200, old.text
    body = old.json()
    assert set(body) == {"boxes", "keypoints", "scores"}
    assert len(body["boxes"]) == len(body["keypoints"]) == len(body["scores"]) == 20
    assert all(len(b) == 4 for b in body["boxes"]) and all(len(k) == 10 for k in body["keypoints"])
    new = httpx.post(f"{stack}/v1/detect", params={"wait": "true"}, content=image, timeout=30)
    assert body == old_shape(new.json())  # the same faces as /v1/detect
    raw = httpx.post(f"{stack}/face-detection", content=image, timeout=30)
    assert raw.status_code == 200 and raw.json() == body


@pytest.mark.parametrize(
    "kwargs",
    [
        {"files": {"picture": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}},  # no image field
        {"files": {"image": ("a.txt", b"just text", "text/plain")}},  # not an image
        {"content": b"\xff\xd8\xff" + b"\0" * 64},  # a JPEG signature, nothing decodable
        {"content": b""},
    ],
)
def test_compat_errors_in_the_old_shape(stack: str, kwargs: dict[str, Any]) -> None:
    resp = httpx.post(f"{stack}/face-detection", timeout=30, **kwargs)
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"} and isinstance(resp.json()["error"], str)


def test_compat_endpoint_documented(stack: str) -> None:
    op = httpx.get(f"{stack}/openapi.json").json()["paths"]["/face-detection"]["post"]
    assert op["tags"] == ["compatibility"] and {"200", "400", "503"} <= set(op["responses"])


def test_compat_overloaded_is_503(redis_url: str, tmp_path: Path, photo_png: dict[str, bytes]):
    port = free_port()
    procs = Procs(
        tmp_path,
        base_env(
            redis_url,
            "compat-bp",
            FACESTREAM_MAX_LAG=1,
            FACESTREAM_BACKPRESSURE_CHECK_MS=0,
            FACESTREAM_WAIT_TIMEOUT_MS=200,
            FACESTREAM_HTTP_PORT=port,
        ),
    )
    procs.start("gateway", ["-m", "facestream.ingest"])
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        nobody = httpx.post(f"{url}/face-detection", content=photo_png["camera"], timeout=30)
        # A detector that advertises itself and never reads: the first request is queued and
        # times out, the second finds the lag over its limit.
        client = sync_client(Settings(redis_url=redis_url))  # a cluster too (make test-cluster)
        until = int(time.time() * 1000) + 60_000
        client.hset(Keys("compat-bp", 1).serving("detectors"), "idle", f"{until}:some-model")
        client.close()
        time.sleep(0.6)  # the gateway re-reads who is alive at most every 0.5 s
        first = httpx.post(f"{url}/face-detection", content=photo_png["camera"], timeout=30)
        second = httpx.post(f"{url}/face-detection", content=photo_png["camera"], timeout=30)
    finally:
        procs.stop()
    assert nobody.status_code == 503 and "no detector" in nobody.json()["error"]
    assert first.status_code == 504 and first.json() == {"error": "timeout"}
    assert second.status_code == 503 and "error" in second.json()
    assert second.headers["retry-after"]


# --- importing the old cache -----------------------------------------------------------------


def old_key(image: bytes) -> str:
    return "face_detection:" + base64.urlsafe_b64encode(hashlib.sha256(image).digest()).decode()


@pytest.fixture
def old_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    with EmbeddedRedis(tmp_path / "old") as server:
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def url_of(client: redis.Redis) -> str:
    return f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


def fill_old_cache(old: redis.Redis, builtin_model: Any, photo_png: dict[str, bytes]) -> None:
    from facestream.detector.imaging import decode_image

    for name, ttl in (("astronaut", 80_000), ("camera", 3_600), ("grace_hopper", None)):
        image = photo_png[name]
        faces = builtin_model.detect(
            [
                decode_image(
                    image, max_bytes=1 << 30, max_pixels=1 << 30, max_side=640, upscale=False
                )
            ]
        )[0]
        answer = old_shape({"faces": [f.to_wire() for f in faces]})
        key = old_key(image)
        old.hset(
            key,
            mapping={k: json.dumps(v) for k, v in answer.items()} | {"timestamp": "1764000000.5"},
        )
        if ttl:
            old.expire(key, ttl)
    old.hset(old_key(b"broken"), mapping={"boxes": "[[1, 2", "keypoints": "[]", "scores": "[]"})
    old.hset(old_key(b"partial"), mapping={"boxes": "[]", "scores": "[]"})
    old.set(old_key(b"a string"), "not a hash")
    old.rpush("face_detection:a-list", "x")
    old.hset(
        "face_detection:not-base64!!", mapping={"boxes": "[]", "keypoints": "[]", "scores": "[]"}
    )
    old.set("unrelated:key", "left alone")


def run_import(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, settings: Any, source: str, *extra: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("FACESTREAM_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FACESTREAM_PREFIX", settings.prefix)
    monkeypatch.setattr("facestream.control.cli.configure", lambda s: None)
    capsys.readouterr()
    code = main(["migrate", "import-cache", "--from", source, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_cache_then_serve_from_it(
    make_settings: Any,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    old_redis: redis.Redis,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    fill_old_cache(old_redis, builtin_model, photo_png)
    before = {k: old_redis.dump(k) for k in old_redis.scan_iter()}
    settings = make_settings()
    source = url_of(old_redis)
    code, out, err = run_import(
        monkeypatch, capsys, settings, source, "--model", "retinaface-mnet025"
    )
    assert code == 0, err
    assert json.loads(out) == {
        "read": 8,
        "imported": 3,
        "skipped": {
            "malformed JSON": 1,
            "missing field keypoints": 1,
            "not a hash (string)": 1,
            "not a hash (list)": 1,
            "key is not URL-safe base64": 1,
        },
    }
    assert {k: old_redis.dump(k) for k in old_redis.scan_iter()} == before  # source untouched
    keys = Keys(settings.prefix)
    sha = hashlib.sha256(photo_png["astronaut"]).hexdigest()
    assert 70_000 < r.ttl(keys.cache(sha, builtin_model.tag)) <= 80_000  # its remaining TTL
    no_ttl = hashlib.sha256(photo_png["grace_hopper"]).hexdigest()
    assert r.ttl(keys.cache(no_ttl, builtin_model.tag)) > 80_000  # none: facestream's TTL
    # Re-running changes nothing.
    assert (
        json.loads(
            run_import(monkeypatch, capsys, settings, source, "--model", "retinaface-mnet025")[1]
        )["imported"]
        == 3
    )

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, make_event(photo_png["astronaut"], "warm"))
        return await wait_results(client, keys, 1), det.counters.images_inferred

    [result], inferred = with_detector(settings, builtin_model, scenario)
    assert inferred == 0 and result["cached"] is True  # answered from the imported cache
    assert (result["width"], result["height"]) == (512, 512)  # read from the image header
    assert len(result["faces"]) == 1


def test_import_refuses_another_models_cache(
    make_settings: Any,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    old_redis: redis.Redis,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    fill_old_cache(old_redis, builtin_model, photo_png)
    settings = make_settings()
    source = url_of(old_redis)
    code, _, err = run_import(monkeypatch, capsys, settings, source)  # --model damofd
    assert code == 2 and "refused" in err and "damofd" in err
    assert not list(r.scan_iter(match=f"{settings.prefix}:face:*"))


def test_old_keys_decode_to_sha256() -> None:
    from facestream.control.migrate import sha_of

    image = b"some image bytes"
    assert sha_of(old_key(image), "face_detection:") == hashlib.sha256(image).hexdigest()
    short = "face_detection:" + base64.urlsafe_b64encode(b"too short").decode()
    with pytest.raises(ValueError, match="not a sha256 digest"):
        sha_of(short, "face_detection:")
