"""Hostile and careless input against a real gateway (uvicorn process) with a real detector:
the hand-made cases of issue #16. No request gets a 500 or a plain-text error, and every
waiting request gets its own event's answer."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.control.embedded import free_port
from tests.support.procs import Procs, base_env, gateway_ready

pytestmark = pytest.mark.slow
MAX_IMAGE = 2_000_000


def deep(levels: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        meta = {"a": meta}
    return meta


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prefix = f"ho{np.random.randint(1 << 30)}"
    port = free_port()
    procs = Procs(tmp_path_factory.mktemp("hostile"), base_env(redis_url, prefix))
    procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="ho-det")
    procs.start(
        "gateway",
        ["-m", "facestream.ingest"],
        FACESTREAM_HTTP_PORT=str(port),
        FACESTREAM_MAX_IMAGE_BYTES=str(MAX_IMAGE),
        FACESTREAM_HTTP_HEADER_TIMEOUT_S="1",
        FACESTREAM_HTTP_BODY_TIMEOUT_S="1",
        FACESTREAM_CONSUMER="ho-gw",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        found = re.search(r'"reply_stream": ?"([^"]+)"', procs.logs())
        assert found, procs.logs()
        yield {"url": url, "port": port, "prefix": prefix, "reply": found.group(1), "procs": procs}
    finally:
        codes = procs.stop()
        assert codes == [0, 0], procs.logs()


def json_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"], resp.text


def test_bad_reply_entries_do_not_kill_waiting(
    stack: dict[str, Any], r: redis.Redis, photo_png: dict[str, bytes]
) -> None:
    for junk in (msgpack.packb([1, 2]), b"\xc1", msgpack.packb({"id": 5}), b""):
        r.xadd(stack["reply"], {"result": junk})
    r.xadd(stack["reply"], {"other": b"x"})  # no result field at all
    time.sleep(0.5)
    assert httpx.get(f"{stack['url']}/readyz").status_code == 200
    resp = httpx.post(
        f"{stack['url']}/v1/detect",
        params={"wait": "true", "id": "after-junk"},
        content=photo_png["astronaut"],
        timeout=30,
    )
    assert resp.status_code == 200 and resp.json()["id"] == "after-junk", resp.text
    compat = httpx.post(f"{stack['url']}/face-detection", content=photo_png["astronaut"])
    assert compat.status_code == 200, compat.text
    metrics = httpx.get(f"{stack['url']}/metrics").text
    assert re.search(r"^facestream_bad_replies_total [5-9]", metrics, re.M), metrics


def test_same_id_and_image_each_get_their_own_answer(
    stack: dict[str, Any], photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    image = photo_png["camera"]

    async def ask(client: httpx.AsyncClient, who: str) -> dict[str, Any]:
        resp = await client.post(
            f"{stack['url']}/v1/detect",
            params={"wait": "true", "id": "shared", "source": who, "meta": json.dumps({"w": who})},
            content=image,
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(ask(client, f"c{i}") for i in range(8)))

    answers = asyncio.run(main())
    assert [a["meta"]["w"] for a in answers] == [f"c{i}" for i in range(8)]
    assert [a["source"] for a in answers] == [f"c{i}" for i in range(8)]
    # Each answer is its own: those through the detectors each from its own event, the rest
    # (sharing an earlier request's wait, ingest/http/shared_waits.py) copies the gateway made
    # for them.
    through_detectors = [a["entry"] for a in answers if a["entry"]]
    assert len(set(through_detectors)) == len(through_detectors) >= 1
    assert all(a["consumer"].startswith("gateway:") for a in answers if not a["entry"])
    # And one result each on the results stream, whoever produced it.
    published = [
        msgpack.unpackb(f[b"result"])
        for _, f in r.xrange(Keys(stack["prefix"]).results)
        if msgpack.unpackb(f[b"result"])["id"] == "shared"
    ]
    assert sorted(p["source"] for p in published) == sorted(f"c{i}" for i in range(8))


@pytest.mark.parametrize(
    "meta",
    [
        json.dumps(deep(40)),
        json.dumps(deep(300)),  # past orjson's depth, with wait=true
        "[" * 1000 + "]" * 1000,
        '{"a":' * 1000 + "1" + "}" * 1000,  # RecursionError in json.loads
        json.dumps({"n": 2**64}),
        json.dumps({"n": -(2**63) - 1}),
        '{"x": NaN}',
        '{"x": 1e400}',
    ],
)
@pytest.mark.parametrize("form", [False, True])
def test_bad_meta_is_a_clear_400(
    stack: dict[str, Any], photo_png: dict[str, bytes], meta: str, form: bool
) -> None:
    url = f"{stack['url']}/v1/detect"
    if form:
        resp = httpx.post(
            url + "?wait=true&timeout_ms=5000",
            files={"image": ("a.png", photo_png["astronaut"], "image/png")},
            data={"meta": meta},
            timeout=30,
        )
    else:
        resp = httpx.post(
            url,
            params={"wait": "true", "timeout_ms": "5000", "meta": meta},
            content=photo_png["astronaut"],
            timeout=30,
        )
    json_error(resp, 400)


def test_meta_at_the_limits_still_works(stack: dict[str, Any], photo_png: dict[str, bytes]) -> None:
    meta = {"d": deep(30), "big": 2**64 - 1, "small": -(2**63)}
    resp = httpx.post(
        f"{stack['url']}/v1/detect",
        params={"wait": "true", "meta": json.dumps(meta)},
        content=photo_png["astronaut"],
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["meta"] == meta


def test_a_chunked_multipart_upload_is_cut_at_the_limit(stack: dict[str, Any]) -> None:
    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        chunk = b"\x89PNG" + b"\0" * (256 * 1024 - 4)
        for _ in range(80):  # 20 MB, past the gateway's limit
            yield chunk
        yield b"\r\n--b--\r\n"

    try:
        resp = httpx.post(
            f"{stack['url']}/v1/detect",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
            timeout=30,
        )
        json_error(resp, 413)
    except httpx.TransportError:
        pass  # the server answered 413 and closed while we were still sending


def test_the_multipart_reader_stops_reading_at_the_limit() -> None:
    """What the gateway reads of a chunked multipart upload: no more than the limit (and its
    overhead) before the 413, where the form parser used to spool all of it to disk."""
    from starlette.requests import Request

    from facestream.common.settings import Settings
    from facestream.ingest.http.request_input import MULTIPART_OVERHEAD, read_request
    from facestream.ingest.publisher import ImageTooLarge

    chunk = b"\x89PNG" + b"\0" * (64 * 1024 - 4)
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        if read == 1:
            head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
            return {"type": "http.request", "body": head, "more_body": True}
        return {"type": "http.request", "body": chunk, "more_body": read < 5000}  # 300 MB

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/detect",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "query_string": b"",
    }
    settings = Settings(max_image_bytes=1_000_000)
    with pytest.raises(ImageTooLarge):
        asyncio.run(read_request(Request(scope, receive), settings))
    assert read * len(chunk) <= 1_000_000 + MULTIPART_OVERHEAD + 2 * len(chunk)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_half_sent_requests_are_cut(stack: dict[str, Any]) -> None:
    port = stack["port"]
    headers = socket.create_connection(("127.0.0.1", port))
    headers.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Le")
    body = socket.create_connection(("127.0.0.1", port))
    body.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n\x89PNG")
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        assert _closed_within(headers, 5), "half-sent headers held open"
        assert _closed_within(body, 5), "half-sent body held open"
        assert _closed_within(idle, 5), "a silent connection held open"
    finally:
        for s in (headers, body, idle):
            s.close()
    assert httpx.get(f"{stack['url']}/healthz").status_code == 200


def test_queue_byte_budget_refuses_with_503(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, photo_png: dict[str, bytes]
) -> None:
    """No detector: the images stream only grows, until the byte budget refuses."""
    port = free_port()
    prefix = f"hb{np.random.randint(1 << 30)}"
    procs = Procs(tmp_path_factory.mktemp("budget"), base_env(redis_url, prefix))
    procs.start(
        "gateway",
        ["-m", "facestream.ingest"],
        FACESTREAM_HTTP_PORT=str(port),
        FACESTREAM_MAX_QUEUE_BYTES=str(2_000_000),
        FACESTREAM_BACKPRESSURE_CHECK_MS="0",
    )
    url = f"http://127.0.0.1:{port}"
    image = photo_png["astronaut"]  # ~0.5 MB of PNG
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        codes = [
            httpx.post(f"{url}/v1/detect", content=image, timeout=30).status_code for _ in range(12)
        ]
        refused = httpx.post(f"{url}/v1/detect", content=image, timeout=30)
    finally:
        assert procs.stop() == [0], procs.logs()
    accepted = codes.count(202)
    assert 1 <= accepted * len(image) <= 2_000_000 + len(image), codes
    json_error(refused, 503)
    assert refused.json()["error"]["code"] == "overloaded" and refused.headers["retry-after"]
