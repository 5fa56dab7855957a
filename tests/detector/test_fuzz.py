"""Hostile input: random and mutated events and images never get past the error codes, and a
detector fed a stream of them answers every entry and stays up."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import (
    EVENT_FIELD,
    ErrorCode,
    ImageEvent,
    Limits,
    SchemaError,
    decode_event,
)
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.worker import Detector
from tests.support.helpers import wait_results, with_detector

LIMITS = Limits(max_event_bytes=2_000_000, max_image_bytes=1_000_000, max_meta_bytes=4096)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = []
    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()
INT64 = st.integers(-(2**63), 2**63 - 1)  # what msgpack can carry


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


mutations = st.tuples(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
    st.one_of(st.none(), st.integers(0, 4000)),
)


def check_image(data: bytes) -> None:
    try:
        image = decode_image(
            data, max_bytes=1_000_000, max_pixels=1_000_000, max_side=640, upscale=False
        )
    except SchemaError as err:
        # too_complex: a mutated BMP header can claim run-length encoding (budget.py).
        assert err.code in {
            ErrorCode.UNDECODABLE,
            ErrorCode.TOO_MANY_PIXELS,
            ErrorCode.TOO_LARGE,
            ErrorCode.TOO_COMPLEX,
        }
        return
    assert image.pixels.ndim == 3 and image.pixels.shape[2] == 3
    assert image.width * image.height <= 1_000_000


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_events(data: bytes) -> None:
    try:
        decode_event(data, LIMITS)
    except SchemaError as err:
        assert err.code in {ErrorCode.BAD_EVENT, ErrorCode.TOO_LARGE}


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "image", "sha256", "source", "ts_ms", "meta", "reply_to", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            INT64,
            st.floats(),
            st.text(max_size=200),
            st.binary(max_size=200),
            st.lists(INT64, max_size=5),
            st.dictionaries(st.text(max_size=5), INT64, max_size=5),
        ),
        max_size=9,
    )
)
def test_structured_garbage_events(body: dict[str, Any]) -> None:
    try:
        event = decode_event(msgpack.packb(body, use_bin_type=True), LIMITS)
    except SchemaError as err:
        assert err.code in {ErrorCode.BAD_EVENT, ErrorCode.TOO_LARGE}
        return
    assert isinstance(event.id, str) and isinstance(event.image, bytes) and event.image


@FUZZ
@given(mutations)
def test_mutated_images(mutation: tuple[bytes, list[tuple[int, int]], int | None]) -> None:
    check_image(mutate(*mutation))


@FUZZ
@given(st.sampled_from(SEEDS), st.binary(min_size=1, max_size=2000))
def test_polyglots_and_trailing_garbage(seed: bytes, tail: bytes) -> None:
    check_image(seed + tail)  # e.g. a JPEG with a zip appended
    check_image(seed[:8] + tail)  # a valid signature on garbage


MakeSettings = Callable[..., Settings]


@pytest.mark.slow
def test_detector_answers_every_hostile_event(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    rng = np.random.default_rng(11)
    payloads: list[bytes] = []
    for i in range(120):
        kind = i % 4
        if kind == 0:
            payloads.append(rng.bytes(int(rng.integers(1, 300))))
        elif kind == 1:
            flips = [(int(rng.integers(0, 5000)), int(rng.integers(0, 255))) for _ in range(8)]
            image = mutate(SEEDS[i % 4], flips, None)
            payloads.append(ImageEvent(id=f"mut-{i}", image=image).to_wire())
        elif kind == 2:
            payloads.append(msgpack.packb({"v": 1, "id": f"odd-{i}", "image": i}))
        else:
            payloads.append(ImageEvent(id=f"good-{i}", image=photo_png["camera"]).to_wire())
    s = make_settings(max_image_bytes=1_000_000, max_pixels=1_000_000)

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        pipe = client.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(keys.images, {EVENT_FIELD: payload})
        await pipe.execute()
        return await wait_results(client, keys, len(payloads), wait_s=60)

    got = with_detector(s, builtin_model, scenario)
    assert len(got) == len(payloads)
    good = [g for g in got if g["id"].startswith("good-")]
    assert len(good) == 30 and all(len(g["faces"]) == 1 for g in good)
    mutated = [g for g in got if g["id"].startswith("mut-")]
    assert len(mutated) == 30  # each answered: faces or an error code, never silence
    rest = [g for g in got if not g["id"].startswith(("good-", "mut-"))]
    assert len(rest) == 60 and all(g["error"]["code"] == "bad_event" for g in rest)
