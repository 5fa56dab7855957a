"""The published scenario: closed-loop HTTP clients with `wait=true` at concurrency 10 / 50 /
100 / 200, repeats drawn Zipf-like from a growing pool of distinct photos so the hit rate lands
near the published table's, beside the published rows; and the CPU each process spent per
request (where the time goes)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from benchmarks.common import ROOT, detector_env, detectors, photos, reset, table, unique_jpeg
from facestream.control.embedded import free_port

PUBLISHED = {
    10: (23.5, 425, 92.3),
    50: (27.8, 1798, 95.1),
    100: (35.2, 2840, 96.7),
    200: (48.9, 4087, 97.8),
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn workers)."""
    total = cpu_seconds(pid)
    for child in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True
    ).stdout.split():
        total += tree_cpu(int(child))
    return total


@contextmanager
def gateway(url: str, workers: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream.ingest"],
        cwd=ROOT,
        env=detector_env(
            url,
            FACESTREAM_HTTP_PORT=port,
            FACESTREAM_HTTP_WORKERS=workers,
            FACESTREAM_MAX_LAG=0,
            FACESTREAM_CONSUMER="bench-gw",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker up
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


class Workload:
    """Request bodies: a new photo with probability 1 - hit rate, else a Zipf-like repeat of
    one already sent (popular photos come back often, as real traffic does)."""

    def __init__(self, bases: list[bytes], seed: int = 1) -> None:
        self.bases = bases
        self.sent: list[bytes] = []
        self.rng = random.Random(seed)

    def next(self, hit_rate: float) -> bytes:
        if not self.sent or self.rng.random() > hit_rate:
            n = len(self.sent)
            self.sent.append(unique_jpeg(self.bases[n % len(self.bases)], n))
            return self.sent[-1]
        rank = min(int(self.rng.paretovariate(1.1)) - 1, len(self.sent) - 1)
        return self.sent[-1 - rank]


async def user(
    port: int,
    work: Workload,
    hit_rate: float,
    stop_at: float,
    latencies: list[float],
    hits: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            body = work.next(hit_rate)
            head = (
                f"POST /v1/detect?wait=true&timeout_ms=60000 HTTP/1.1\r\nHost: b\r\n"
                f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            hits.append(1 if b'"cached":true' in payload else 0)
            if b" 200 " not in status:
                raise RuntimeError(f"{status!r} {payload[:200]!r}")
    finally:
        writer.close()


async def closed_loop(
    port: int, work: Workload, users: int, hit_rate: float, seconds: float
) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    hits: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(user(port, work, hit_rate, started + seconds, latencies, hits) for _ in range(users))
    )
    return latencies, hits, time.perf_counter() - started


def bench_published_scenario(
    url: str, seconds: float = 8.0, gateway_workers: int = 2, detector_processes: int = 1
) -> str:
    reset(url)
    work = Workload(photos(40))
    rows, cpu_rows = [], []
    with (
        detectors(url, detector_processes, FACESTREAM_INTRA_OP_THREADS=1) as dets,
        gateway(url, gateway_workers) as (port, gw),
    ):
        # redis-server retitles itself "redis-server 127.0.0.1:<port>"
        title = f"redis-server 127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}"
        found = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True)
        redis_pid = int(found.stdout.split()[0])
        for users, (p_mean, p_qps, p_hit) in PUBLISHED.items():
            asyncio.run(closed_loop(port, work, users, p_hit / 100, 1.0))  # warm the level
            before = {
                "redis": cpu_seconds(redis_pid),
                "gateway": tree_cpu(gw.pid),
                "detectors": sum(cpu_seconds(d.pid) for d in dets),
                "load generator": cpu_seconds(os.getpid()),
            }
            lat, hits, elapsed = asyncio.run(closed_loop(port, work, users, p_hit / 100, seconds))
            after = {
                "redis": cpu_seconds(redis_pid),
                "gateway": tree_cpu(gw.pid),
                "detectors": sum(cpu_seconds(d.pid) for d in dets),
                "load generator": cpu_seconds(os.getpid()),
            }
            ms = np.array(lat) * 1000
            qps = len(lat) / elapsed
            rows.append(
                [
                    users,
                    f"{ms.mean():.1f}",
                    f"{np.percentile(ms, 50):.1f}",
                    f"{np.percentile(ms, 99):.1f}",
                    f"{qps:,.0f}",
                    f"{100 * sum(hits) / len(hits):.1f}",
                    f"{p_mean} / {p_qps:,} / {p_hit}",
                ]
            )
            cpu_rows.append(
                [users] + [f"{(after[k] - before[k]) / len(lat) * 1e6:.0f}" for k in before]
            )
    a = table(
        f"Published scenario: closed-loop HTTP users with wait=true, {seconds:.0f} s per row, "
        f"{gateway_workers} gateway workers, {detector_processes} detector process(es), "
        "load generator on the same machine",
        ["users", "mean ms", "p50 ms", "p99 ms", "QPS", "hit %", "published mean ms / QPS / hit %"],
        rows,
    )
    b = table(
        "Where the time goes: CPU microseconds per request, by process",
        ["users", "redis", "gateway", "detectors", "load generator"],
        cpu_rows,
    )
    return a + "\n" + b
