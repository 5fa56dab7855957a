"""The old design rebuilt for the side-by-side benchmark (benchmarks/olddesign) behaves as that
design did: its cache key and Hash, its TTL, and one inference for a burst of one new image."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from benchmarks.olddesign.launch import old_service
from facestream.control.embedded import free_port
from facestream.detector.imaging import decode_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("FACESTREAM_TEST_CLUSTER") == "1",
        reason="the old design used one plain Redis server",
    ),
]


def post(url: str, image: bytes) -> httpx.Response:
    return httpx.post(url, files={"image": ("photo.png", image, "image/png")}, timeout=30)


def test_cache_and_single_inference(
    redis_url: str, prefix: str, photo_png: dict[str, bytes], builtin_model: Any, tmp_path: Path
) -> None:
    keys = f"{prefix}:face_detection:"
    r = redis.Redis.from_url(redis_url)
    photo, other = photo_png["astronaut"], photo_png["grace_hopper"]
    port = free_port()
    with old_service(redis_url, port, workers=2, threads=4, prefix=keys, log=tmp_path / "g.log"):
        url = f"http://127.0.0.1:{port}/face-detection"
        first, second = post(url, photo), post(url, photo)
        assert first.status_code == second.status_code == 200, first.text
        assert first.json() == second.json()
        assert r.get(f"{keys}stats:inferences") == b"1"  # the second came from the cache

        # The same faces as facestream's own model and decode on the same bytes.
        spec = builtin_model.spec
        image = decode_image(
            photo,
            max_bytes=1 << 30,
            max_pixels=1 << 30,
            max_side=spec.input_size,
            upscale=spec.norm.upscale,
        )
        faces = builtin_model.detect([image])[0]
        assert faces and first.json()["boxes"] == [f.box for f in faces]
        assert first.json()["scores"] == [f.score for f in faces]
        assert len(first.json()["keypoints"][0]) == 10

        key = keys + base64.urlsafe_b64encode(hashlib.sha256(photo).digest()).decode()
        fields = r.hgetall(key)
        assert {k: json.loads(v) for k, v in fields.items()} == {
            b"boxes": first.json()["boxes"],
            b"keypoints": first.json()["keypoints"],
            b"scores": first.json()["scores"],
        }
        assert 24 * 3600 - 60 <= r.ttl(key) <= 24 * 3600
        assert not r.exists(f"{key}:lock")

        # A concurrent burst of one new image: every request answered, one model run.
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: post(url, other), range(48)))
        assert {a.status_code for a in answers} == {200}
        assert all(a.json() == answers[0].json() for a in answers)
        assert r.get(f"{keys}stats:inferences") == b"2"

        bad = post(url, b"not an image at all")
        assert bad.status_code == 400 and "error" in bad.json()
    r.close()
