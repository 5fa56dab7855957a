"""A gateway's memory around a burst of `/v1/draw`: its RSS before, at the peak and a few
seconds after 40 concurrent draws of a 4.9 KB 6300 x 6300 1-bit PNG (40 MP at full size).

Not a test and not timed: a measurement for docs/reliability.md. It starts its own
redis-server, one detector and one gateway (processes, on loopback), and prints one line per
pixel budget. Run: `.venv/bin/python -m benchmarks.draw_memory [--budget PIXELS ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from facestream.control.embedded import EmbeddedRedis, free_port

SIDE = 6300


def bilevel_png() -> bytes:
    """A 1-bit PNG: a few kilobytes that decode to 40 MP (120 MB as RGB)."""
    img = Image.new("1", (SIDE, SIDE), 1)
    pen = ImageDraw.Draw(img)
    for i in range(0, SIDE, 700):
        pen.rectangle((i, i, i + 300, i + 300), fill=0)
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Peak(threading.Thread):
    """The highest RSS of a process, sampled every 20 ms while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)


async def burst(url: str, image: bytes, n: int) -> dict[int, int]:
    async with httpx.AsyncClient(timeout=300) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/v1/draw", content=image) for _ in range(n))
        )
    counts: dict[int, int] = {}
    for a in answers:
        counts[a.status_code] = counts.get(a.status_code, 0) + 1
    return counts


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/v1/status", timeout=2)
            if status.status_code == 200 and status.json().get("detectors") == 1:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway or the detector did not come up")


def measure(redis_url: str, budget: int, image: bytes, n: int, settle_s: float) -> str:
    port = free_port()
    env = {
        **os.environ,
        "FACESTREAM_REDIS_URL": redis_url,
        "FACESTREAM_PREFIX": f"drawmem{budget}",
        "FACESTREAM_INTRA_OP_THREADS": "1",
        "FACESTREAM_LOG_LEVEL": "warning",
        "FACESTREAM_HTTP_PORT": str(port),
        "FACESTREAM_DRAW_MAX_PIXELS": str(budget),
        "FACESTREAM_WAIT_TIMEOUT_MS": "120000",
    }
    py, quiet = sys.executable, subprocess.DEVNULL
    detector = subprocess.Popen([py, "-m", "facestream.detector"], env=env, stderr=quiet)
    gateway = subprocess.Popen([py, "-m", "facestream.ingest"], env=env, stderr=quiet)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        # One draw first: the detector's answer cached, the gateway's code paths warm.
        warm = httpx.post(f"{url}/v1/draw", content=image, timeout=300)
        assert warm.status_code == 200, warm.text
        time.sleep(settle_s)
        before = rss_mib(gateway.pid)
        peak = Peak(gateway.pid)
        peak.start()
        counts = asyncio.run(burst(url, image, n))
        time.sleep(settle_s)
        after = rss_mib(gateway.pid)
        peak.done.set()
        peak.join()
        return (
            f"budget {budget or 'none':>11} px: {n} draws -> {counts}; gateway RSS "
            f"before {before:.0f} MiB, peak {peak.peak:.0f} MiB, after {after:.0f} MiB"
        )
    finally:
        for proc in (gateway, detector):
            proc.terminate()
        for proc in (gateway, detector):
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, action="append", help="pixels (0: no budget)")
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--settle-s", type=float, default=3.0)
    args = parser.parse_args()
    image = bilevel_png()
    print(f"image: {len(image)} bytes, {SIDE} x {SIDE}")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        for budget in args.budget or [0, 64_000_000]:
            print(measure(server.url, budget, image, args.draws, args.settle_s), flush=True)


if __name__ == "__main__":
    main()
