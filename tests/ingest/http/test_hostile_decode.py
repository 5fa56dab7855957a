"""Images that are hostile to decode, against a real gateway and detector process (issue #25):
decode bombs answered at once with `too_complex` while other photos are answered normally, and
one orientation and depth rule across `/v1/detect`, its crops (detector's and gateway's) and
`/v1/draw`."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.bombs import rle8_bmp, scan_bomb
from tests.support.procs import detector_and_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("hostile-decode")
    with detector_and_gateway(redis_url, tmp, "hd") as (url, _, _):
        yield url


def test_a_scan_bomb_is_answered_at_once_beside_a_photo(
    gateway: str, photo_png: dict[str, bytes]
) -> None:
    bomb = scan_bomb()
    # Warm: the first request pays for connections and the first model call.
    warm = httpx.post(f"{gateway}/v1/detect?wait=true", content=photo_png["coffee"], timeout=60)
    assert warm.status_code == 200, warm.text

    async def ask(client: httpx.AsyncClient, path: str, image: bytes) -> httpx.Response:
        return await client.post(f"{gateway}{path}", content=image)

    async def main() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=60) as client:
            started = time.monotonic()
            answers = await asyncio.gather(
                ask(client, "/v1/detect?wait=true", bomb),
                ask(client, "/v1/detect?wait=true", photo_png["astronaut"]),
                ask(client, "/v1/draw", bomb),
            )
            return list(answers), time.monotonic() - started

    (detected, photo, drawn), took = asyncio.run(main())
    assert took < 2.0
    assert detected.status_code == 200, detected.text
    assert detected.json()["error"]["code"] == "too_complex"
    assert "scans" in detected.json()["error"]["message"]
    assert photo.status_code == 200 and len(photo.json()["faces"]) == 1, photo.text
    assert drawn.status_code == 422 and drawn.json()["error"]["code"] == "too_complex"


def test_an_rle_bmp_is_refused_clearly(gateway: str) -> None:
    resp = httpx.post(f"{gateway}/v1/detect?wait=true", content=rle8_bmp(), timeout=30)
    assert resp.status_code == 200 and resp.json()["error"]["code"] == "too_complex", resp.text
    assert "run-length-encoded BMP" in resp.json()["error"]["message"]
    drawn = httpx.post(f"{gateway}/v1/draw", content=rle8_bmp(), timeout=30)
    assert drawn.status_code == 422 and drawn.json()["error"]["code"] == "too_complex"


def _turned_png(upright: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}[orientation]
    buf = io.BytesIO()
    Image.fromarray(upright).transpose(turn).save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


def _crop(face: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(face["crop"])))).astype(np.int16)


@pytest.mark.parametrize("orientation", [6, 3])
def test_detect_crops_and_draw_agree_on_orientation(
    gateway: str, photos: dict[str, np.ndarray], photo_png: dict[str, bytes], orientation: int
) -> None:
    upright = photos["grace_hopper"]  # 512 x 600, one face
    data = _turned_png(upright, orientation)
    want = httpx.post(
        f"{gateway}/v1/detect?wait=true&crops=true", content=photo_png["grace_hopper"], timeout=60
    ).json()
    # The first answer is the detector's (its crops), the second a cache hit the gateway
    # answers and crops itself.
    for _ in range(2):
        got = httpx.post(f"{gateway}/v1/detect?wait=true&crops=true", content=data, timeout=60)
        body = got.json()
        assert got.status_code == 200, got.text
        assert (body["width"], body["height"]) == (512, 600)
        assert len(body["faces"]) == 1
        box, ref = body["faces"][0]["box"], want["faces"][0]["box"]
        assert max(abs(a - b) for a, b in zip(box, ref, strict=True)) < 1.0
        diff = np.abs(_crop(body["faces"][0]) - _crop(want["faces"][0])).mean()
        assert diff < 6, f"crop differs from the upright photo's by {diff:.1f} on average"
    drawn = httpx.post(f"{gateway}/v1/draw", content=data, timeout=60)
    assert drawn.status_code == 200 and drawn.headers["x-facestream-faces"] == "1"
    assert Image.open(io.BytesIO(drawn.content)).size == (512, 600)


def test_a_sixteen_bit_png_finds_the_face(gateway: str, photos: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    Image.fromarray(photos["camera"].astype(np.uint16) * 257).save(buf, "PNG")
    resp = httpx.post(f"{gateway}/v1/detect?wait=true", content=buf.getvalue(), timeout=60)
    assert resp.status_code == 200 and len(resp.json()["faces"]) == 1, resp.text
