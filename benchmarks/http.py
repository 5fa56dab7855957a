"""The published scenario over HTTP: the table's rows, facestream's gateway as a benchmark
process and CPU accounting per process, for the side-by-side runs against the old design
(benchmarks/sidebyside.py and benchmarks/capacity.py; clients in benchmarks/loadgen.py and
benchmarks/openloop.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.common import ROOT, detector_env
from facestream.control.embedded import free_port

# users: (mean ms, QPS, hit %) of the published table
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
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker up
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
