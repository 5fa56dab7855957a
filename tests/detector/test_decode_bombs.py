"""The decode budget (issue #25): images cheap to send and expensive to decode are refused from
their structure before decoding, in the detector and in the gateway's own decodes (crops,
/v1/draw), while real photos of the same formats still decode."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import ErrorCode, SchemaError
from facestream.common.imaging.budget import MAX_SEGMENTS
from facestream.common.imaging.drawing import draw_faces
from facestream.common.imaging.photo import PhotoError, open_oriented
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image, image_size
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.conftest import encode
from tests.support.bombs import (
    jpeg_scans,
    png_chunk,
    png_with_chunk_before_iend,
    rle4_bmp,
    rle8_bmp,
    scan_bomb,
)
from tests.support.helpers import publish, wait_results, with_detector

BIG = 1 << 30


def decode(data: bytes, max_scans: int = 100) -> Any:
    return decode_image(
        data, max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=False, max_scans=max_scans
    )


def refused(data: bytes, max_scans: int = 100) -> SchemaError:
    started = time.perf_counter()
    with pytest.raises(SchemaError) as info:
        decode(data, max_scans)
    assert time.perf_counter() - started < 0.5  # from the structure, before any decoding
    return info.value


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return scan_bomb()


def test_a_scan_bomb_is_refused_before_decoding(bomb: bytes) -> None:
    assert len(bomb) < 400_000 and jpeg_scans(bomb) > 20_000
    # It is a valid JPEG: Pillow opens it and would decode every scan (about 30 s here).
    assert Image.open(io.BytesIO(bomb)).size == (2000, 1500)
    err = refused(bomb)
    assert err.code == ErrorCode.TOO_COMPLEX
    assert "more than 100 scans" in err.message
    # Reading its size decodes nothing, so the scans do not matter there.
    assert image_size(bomb) == (2000, 1500)


def test_the_gateways_decodes_refuse_it_too(bomb: bytes, photo_png: dict[str, bytes]) -> None:
    """Crops (common/imaging/align.py) and /v1/draw open images through open_oriented."""
    for attempt in (lambda: open_oriented(bomb, BIG), lambda: draw_faces(bomb, [], BIG)):
        started = time.perf_counter()
        with pytest.raises(PhotoError) as info:
            attempt()
        assert time.perf_counter() - started < 0.5
        assert info.value.code == ErrorCode.TOO_COMPLEX
    assert open_oriented(photo_png["astronaut"], BIG).size == (512, 512)


def test_real_progressive_jpegs_are_within_the_limit(photos: dict[str, np.ndarray]) -> None:
    # Noise makes the entropy-coded data full of stuffed 0xFF00 bytes, and a restart marker
    # after every MCU puts RSTn markers in it: neither may be mistaken for a scan.
    noise = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for pixels in (photos["astronaut"], noise):
        data = encode(pixels, "JPEG", progressive=True, restart_marker_blocks=1)
        assert b"\xff\x00" in data and b"\xff\xd0" in data
        scans = jpeg_scans(data)
        assert scans == 10  # libjpeg's default progression for colour
        assert decode(data, max_scans=scans).pixels.shape[2] == 3
        assert refused(data, max_scans=scans - 1).code == ErrorCode.TOO_COMPLEX
    grey = encode(photos["camera"], "JPEG", progressive=True)
    assert decode(grey).width == 512


def test_a_flood_of_marker_segments_is_refused(photos: dict[str, np.ndarray]) -> None:
    """Pillow reads each segment before the first scan in Python: 5 million empty comments
    (20 MB) cost it about 4 s."""
    jpeg = encode(photos["astronaut"], "JPEG")
    flood = jpeg[:2] + b"\xff\xfe\x00\x02" * (MAX_SEGMENTS + 1) + jpeg[2:]
    err = refused(flood)
    assert err.code == ErrorCode.TOO_COMPLEX and "marker segments" in err.message
    fine = jpeg[:2] + b"\xff\xfe\x00\x02" * 1000 + jpeg[2:]
    assert decode(fine).width == 512


def test_a_flood_of_png_chunks_is_refused(photo_png: dict[str, bytes]) -> None:
    """Pillow reads PNG chunks in Python too: 1.5 million tiny ones cost it about 5 s."""
    png = photo_png["astronaut"]
    flood = png_with_chunk_before_iend(png, png_chunk(b"abCd"), MAX_SEGMENTS)
    err = refused(flood)
    assert err.code == ErrorCode.TOO_COMPLEX and "chunks" in err.message
    fine = png_with_chunk_before_iend(png, png_chunk(b"abCd"), 1000)
    assert decode(fine).width == 512


@pytest.mark.parametrize("make", [rle8_bmp, rle4_bmp])
def test_run_length_encoded_bmp_is_refused(make: Callable[[], bytes]) -> None:
    data = make()
    img = Image.open(io.BytesIO(data))
    img.load()  # a valid image Pillow would decode, in pure Python
    assert img.size == (64, 64)
    err = refused(data)
    assert err.code == ErrorCode.TOO_COMPLEX and "run-length-encoded BMP" in err.message
    with pytest.raises(PhotoError) as info:
        open_oriented(data, BIG)
    assert info.value.code == ErrorCode.TOO_COMPLEX


def test_uncompressed_bmp_still_decodes(photos: dict[str, np.ndarray]) -> None:
    for pixels in (photos["astronaut"], photos["camera"]):
        assert decode(encode(pixels, "BMP")).width == 512


def test_a_detector_answers_the_bomb_at_once_and_a_photo_beside_it(
    make_settings: Callable[..., Settings],
    builtin_model: Any,
    photo_png: dict[str, bytes],
    bomb: bytes,
) -> None:
    """The issue's case: the bomb held a decode thread for ~40 s. Sent together with a real
    photo, both are answered within 2 s, the bomb with an error result."""
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        # A first photo answered: the detector is up and warm before the clock starts.
        await publish(client, keys, make_event(photo_png["coffee"], "warm"))
        await wait_results(client, keys, 1)
        started = time.monotonic()
        await publish(
            client,
            keys,
            make_event(bomb, "bomb"),
            make_event(photo_png["astronaut"], "photo"),
        )
        got = await wait_results(client, keys, 3, wait_s=10)
        return got, time.monotonic() - started

    got, took = with_detector(settings, builtin_model, scenario)
    by_id = {r["id"]: r for r in got}
    assert set(by_id) == {"warm", "bomb", "photo"}, got
    assert took < 2.0
    assert by_id["bomb"]["error"]["code"] == "too_complex"
    assert "scans" in by_id["bomb"]["error"]["message"]
    assert len(by_id["photo"]["faces"]) == 1
