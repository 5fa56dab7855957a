"""Memory stays bounded: the images stream filled to the lag limit with large photos while no
detector reads, then drained by one detector process; Redis's used_memory and the detector's
RSS before, at the peak and after. `pytest -s` prints the figures docs/reliability.md quotes."""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.groups import ensure_group_sync
from facestream.control.embedded import EmbeddedRedis
from facestream.ingest.publisher import Overloaded, Publisher, make_event
from tests.support.procs import Procs, base_env

pytestmark = pytest.mark.slow
MAX_LAG = 40
SIZE = (3000, 2000)  # 6 MP photos, ~2.5 MB each as noisy JPEGs


def _photos(n: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (SIZE[1] // 4, SIZE[0] // 4, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(base).resize(SIZE, Image.Resampling.BILINEAR))
    out = []
    for i in range(n):
        px = big.copy()
        px[i % SIZE[1], :, :] ^= 0xFF  # one line differs: n distinct images, no cache hits
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_fill_to_the_lag_limit_and_drain(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    prefix = f"mem{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=server.url, prefix=prefix, max_lag=MAX_LAG)
    keys = Keys(prefix, 1)
    r = redis.Redis.from_url(server.url)
    procs = Procs(tmp_path, base_env(server.url, prefix, FACESTREAM_MAX_LAG=MAX_LAG))
    try:
        ensure_group_sync(r, keys.images, settings.detector_group, "0")
        used = {"before": int(r.info("memory")["used_memory"])}
        photos = _photos(MAX_LAG + 10)
        publisher = Publisher(settings, r)
        published = 0
        for i, photo in enumerate(photos):
            try:
                publisher.publish(make_event(photo, f"m{i}"))
                published += 1
            except Overloaded:
                break
        assert MAX_LAG <= published < len(photos), published  # the door closed at the limit
        used["full"] = int(r.info("memory")["used_memory"])
        detector = procs.start("detector", ["-m", "facestream.detector"])
        peak_rss, samples = 0.0, []
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak_rss
            while not stop.is_set():
                rss = _rss_mib(detector.pid)
                samples.append(rss)
                peak_rss = max(peak_rss, rss)
                used["peak"] = max(used.get("peak", 0), int(r.info("memory")["used_memory"]))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        procs.wait_for(lambda: r.xlen(keys.results) >= published, "all answered", 300)
        drained_s = time.monotonic() - started
        procs.wait_for(lambda: r.xlen(keys.images) == 0, "answered images deleted", 60)
        time.sleep(1.0)
        stop.set()
        sampler.join()
        rss_after = _rss_mib(detector.pid)
        used["after"] = int(r.info("memory")["used_memory"])
        mib = {k: round(v / 1024**2, 1) for k, v in used.items()}
        total_mib = sum(map(len, photos[:published])) / 1024**2
        print(
            f"\nmemory: {published} images of {SIZE[0]}x{SIZE[1]} ({total_mib:.0f} MiB) at "
            f"max_lag={MAX_LAG}; redis used_memory MiB {mib}; detector RSS MiB "
            f"first {samples[0]:.0f}, peak {peak_rss:.0f}, after {rss_after:.0f}; "
            f"drained in {drained_s:.1f} s"
        )
        # Redis gives the images back once answered: what is left is results and bookkeeping.
        assert used["after"] - used["before"] < 0.1 * (used["full"] - used["before"])
        # The detector holds a bounded number of images, not the queue.
        assert peak_rss < 2048, peak_rss
    finally:
        procs.stop()
        r.close()
        server.stop()
