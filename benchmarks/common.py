"""Shared parts of the benchmarks: a private redis-server, detector processes, test images."""

from __future__ import annotations

import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import redis
from PIL import Image

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, RESULT_FIELD
from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control.embedded import EmbeddedRedis
from facestream.control.samples import sample_pixels
from facestream.ingest.publisher import make_event

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bench"


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def unique_jpeg(base: bytes, n: int) -> bytes:
    """The same photo with a JPEG comment segment naming it n: other bytes, another sha256 (so
    a cache miss and a real inference), the same pixels, and no encoding cost."""
    text = f"facestream bench {n}".encode()
    return base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]


def photos(n: int, size: tuple[int, int] = (640, 480), quality: int = 85) -> list[bytes]:
    """n distinct JPEG photos with faces (the sample photos, resized), as different bytes."""
    bases = []
    for name, px in sample_pixels().items():
        if name == "coffee":
            continue
        rgb = np.stack([px] * 3, axis=-1) if px.ndim == 2 else px
        buf = io.BytesIO()
        Image.fromarray(rgb).resize(size).save(buf, "JPEG", quality=quality)
        bases.append(buf.getvalue())
    return [unique_jpeg(bases[i % len(bases)], i) for i in range(n)]


@contextmanager
def redis_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="facestream-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def detector_env(url: str, **extra: object) -> dict[str, str]:
    env = {
        **os.environ,
        "FACESTREAM_REDIS_URL": url,
        "FACESTREAM_PREFIX": PREFIX,
        "FACESTREAM_LOG_LEVEL": "warning",
        "FACESTREAM_LOG_FORMAT": "json",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def detectors(
    url: str,
    n: int,
    ready_on: str | None = None,
    metrics_ports: list[int] | None = None,
    **extra: object,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """n detector processes, yielded once all of them are members of the group on `ready_on`
    (default: this benchmark's images stream); `metrics_ports`: each one's Prometheus port on
    127.0.0.1 (default: none); `extra`: FACESTREAM_* settings."""
    ports = metrics_ports or [0] * n
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "facestream.detector"],
            cwd=ROOT,
            env=detector_env(
                url,
                FACESTREAM_CONSUMER=f"bench-{i}",
                FACESTREAM_METRICS_PORT=ports[i],
                FACESTREAM_METRICS_HOST="127.0.0.1",
                **extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    client = sync_client(Settings(redis_url=url))  # a cluster URL too
    stream = ready_on or Keys(PREFIX).images
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(client.xinfo_consumers(stream, "detectors")) >= n:
                    break
            except redis.ResponseError:
                pass
            time.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        client.close()


def publish(url: str, images: list[bytes], tag: str, chunk: int = 500) -> float:
    """XADD one event per image in pipelined chunks; returns the publish time in seconds."""
    client = redis.Redis.from_url(url)
    keys = Keys(PREFIX)
    events = [make_event(img, f"{tag}-{i}").to_wire() for i, img in enumerate(images)]
    started = time.perf_counter()
    for i in range(0, len(events), chunk):
        pipe = client.pipeline(transaction=False)
        for payload in events[i : i + chunk]:
            pipe.xadd(keys.images, {EVENT_FIELD: payload})
        pipe.execute()
    client.close()
    return time.perf_counter() - started


def wait_results(url: str, n: int, timeout_s: float = 600) -> float:
    """Seconds until the results stream holds n entries."""
    client = redis.Redis.from_url(url)
    keys = Keys(PREFIX)
    started = time.perf_counter()
    while client.xlen(keys.results) < n:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{client.xlen(keys.results)} of {n} results")
        time.sleep(0.005)
    client.close()
    return time.perf_counter() - started


def results(url: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    out = [msgpack.unpackb(f[RESULT_FIELD]) for _, f in client.xrange(Keys(PREFIX).results)]
    client.close()
    return out


def reset(url: str) -> None:
    redis.Redis.from_url(url).flushall()


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        f"\n{title}",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) + " |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text
