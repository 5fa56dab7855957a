"""The HTTP gateway as a real uvicorn process, with a real detector behind it."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.control.embedded import free_port
from tests.conftest import encode
from tests.support.procs import Procs, base_env, detector_and_gateway


@pytest.fixture(scope="module")
def gateway(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Procs]]:
    with detector_and_gateway(
        redis_url,
        tmp_path_factory.mktemp("gw"),
        "gw",
        FACESTREAM_MAX_IMAGE_BYTES="2000000",
        FACESTREAM_CONSUMER="gw-1",
    ) as stack:
        yield stack


def test_wait_true_with_raw_body(gateway: Any, photo_png: dict[str, bytes]) -> None:
    url, _, _ = gateway
    image = photo_png["astronaut"]
    resp = httpx.post(
        f"{url}/v1/detect",
        params={"wait": "true", "id": "raw-1", "source": "cam", "meta": json.dumps({"a": 1})},
        content=image,
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == "raw-1" and body["sha256"] == hashlib.sha256(image).hexdigest()
    assert body["source"] == "cam" and body["meta"] == {"a": 1}
    assert len(body["faces"]) == 1 and len(body["faces"][0]["kps"]) == 5
    assert {"v", "model", "width", "height", "cached", "done_ms", "consumer"} <= set(body)


def test_wait_true_with_multipart(gateway: Any, photo_png: dict[str, bytes]) -> None:
    url, _, _ = gateway
    resp = httpx.post(
        f"{url}/v1/detect?wait=true&timeout_ms=20000",
        files={"image": ("m.png", photo_png["lfw_mosaic"], "image/png")},
        data={"id": "multi-1", "meta": '{"k": "v"}'},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "multi-1" and len(resp.json()["faces"]) == 20
    assert resp.json()["meta"] == {"k": "v"}


def test_async_accept_lands_on_the_results_stream(
    gateway: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    url, prefix, procs = gateway
    resp = httpx.post(
        f"{url}/v1/detect", params={"id": "async-1"}, content=photo_png["camera"], timeout=30
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] == "async-1" and resp.json()["entry"]
    results = Keys(prefix).results

    def answered() -> bool:
        import msgpack

        return any(msgpack.unpackb(f[b"result"])["id"] == "async-1" for _, f in r.xrange(results))

    procs.wait_for(answered, "async result", 20)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"hello, not an image"}, 415, "not_an_image"),
        ({"content": b""}, 400, "bad_request"),
        ({"content": b"\xff\xd8\xff" + b"\0" * 2_100_000}, 413, "too_large"),
        ({"content": b"\xff\xd8\xff", "params": {"id": "x" * 200}}, 400, "bad_request"),
        ({"content": b"\xff\xd8\xff", "params": {"meta": "[1, 2]"}}, 400, "bad_request"),
        ({"content": b"\xff\xd8\xff", "params": {"timeout_ms": "soon"}}, 400, "bad_request"),
        ({"content": b"\xff\xd8\xff", "params": {"wait": "maybe"}}, 400, "bad_request"),
        ({"content": b"\xff\xd8\xff", "params": {"timeout_ms": "0"}}, 400, "bad_request"),
        ({"files": {"picture": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}}, 400, "bad_request"),
        ({"files": {"image": ("a.txt", b"plain text", "text/plain")}}, 415, "not_an_image"),
    ],
)
def test_errors(gateway: Any, kwargs: dict[str, Any], status: int, code: str) -> None:
    url, _, _ = gateway
    resp = httpx.post(f"{url}/v1/detect", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]


def test_chunked_upload_over_the_limit_is_refused(gateway: Any) -> None:
    url, _, _ = gateway

    def chunks() -> Iterator[bytes]:
        yield b"\xff\xd8\xff"
        for _ in range(30):
            yield b"\0" * 100_000

    resp = httpx.post(f"{url}/v1/detect", content=chunks(), timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"


def test_wait_timeout_is_504(gateway: Any, photos: dict[str, np.ndarray]) -> None:
    url, _, _ = gateway
    big = encode(np.tile(photos["astronaut"], (3, 3, 1)), "JPEG")  # a fresh image: a miss
    resp = httpx.post(
        f"{url}/v1/detect", params={"wait": "true", "timeout_ms": "1"}, content=big, timeout=30
    )
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    assert resp.json()["id"]


def test_200_concurrent_waits_each_get_their_own_answer(
    gateway: Any, photos: dict[str, np.ndarray], photo_png: dict[str, bytes]
) -> None:
    url, _, _ = gateway
    # Five distinct images, 40 requests each, ids unique: every answer must match its request.
    images = {name: photo_png[name] for name in photo_png}
    expected_faces = {"astronaut": 1, "camera": 1, "grace_hopper": 1, "lfw_mosaic": 20, "coffee": 0}
    jobs = [(f"c-{i}", name) for i, name in enumerate(list(images) * 40)]

    async def go() -> list[tuple[str, str, httpx.Response]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(eid: str, name: str) -> tuple[str, str, httpx.Response]:
                resp = await client.post(
                    f"{url}/v1/detect",
                    params={"wait": "true", "id": eid, "timeout_ms": "60000"},
                    content=images[name],
                )
                return eid, name, resp

            return await asyncio.gather(*(one(e, n) for e, n in jobs))

    answers = asyncio.run(go())
    assert len(answers) == 200
    for eid, name, resp in answers:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["id"] == eid
        assert body["sha256"] == hashlib.sha256(images[name]).hexdigest()
        assert len(body["faces"]) == expected_faces[name]


def test_health_and_openapi(gateway: Any) -> None:
    url, _, _ = gateway
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    spec = httpx.get(f"{url}/openapi.json").json()
    op = spec["paths"]["/v1/detect"]["post"]
    assert {"200", "202", "400", "413", "415", "503", "504"} <= set(op["responses"])
    assert "multipart/form-data" in op["requestBody"]["content"]


def test_backpressure_answers_503_with_retry_after(
    redis_url: str, tmp_path: Path, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    """No detector runs, so the lag grows: past max_lag the gateway refuses, with Retry-After."""
    prefix = f"bp{np.random.randint(1 << 30)}"
    port = free_port()
    procs = Procs(
        tmp_path,
        base_env(
            redis_url,
            prefix,
            FACESTREAM_MAX_LAG=3,
            FACESTREAM_BACKPRESSURE_CHECK_MS=0,
            FACESTREAM_HTTP_PORT=port,
            FACESTREAM_RETRY_AFTER_S=7,
        ),
    )
    procs.start("gateway", ["-m", "facestream.ingest"])
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        statuses = [
            httpx.post(f"{url}/v1/detect", content=photo_png["camera"]).status_code
            for _ in range(5)
        ]
        refused = httpx.post(f"{url}/v1/detect", content=photo_png["camera"])
        ready = httpx.get(f"{url}/readyz")
    finally:
        assert procs.stop() == [0]
    assert statuses == [202, 202, 202, 503, 503]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    assert refused.json()["error"]["code"] == "overloaded"
    assert r.xlen(Keys(prefix).images) == 3  # refused work was never enqueued
    assert ready.status_code == 503 and "detector" in ready.json()["reason"]


def test_redis_unreachable_is_503_and_not_ready(tmp_path: Path, photo_png: dict[str, bytes]):
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    procs = Procs(
        tmp_path,
        base_env(dead, "down", FACESTREAM_HTTP_PORT=port, FACESTREAM_SOCKET_CONNECT_TIMEOUT_S=0.5),
    )
    procs.start("gateway", ["-m", "facestream.ingest"])
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        resp = httpx.post(f"{url}/v1/detect", content=photo_png["camera"], timeout=30)
        ready = httpx.get(f"{url}/readyz", timeout=30)
    finally:
        assert procs.stop() == [0]
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
    assert resp.headers["retry-after"] == "1"
    assert ready.status_code == 503 and ready.json()["reason"].startswith("redis")
