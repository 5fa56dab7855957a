"""Start the rebuilt old service under gunicorn (gthread workers) and wait until every worker
has its model loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What performance-anchors.md measured the old design with on these 2-core machines.
WORKERS = 5
THREADS = 4


def gunicorn_args(port: int, workers: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--bind",
        f"127.0.0.1:{port}",
        # Closed-loop clients keep their connections; gunicorn's 2 s default would close the
        # ones that wait longer than that for a free thread under 200 users.
        "--keep-alive",
        "30",
        "--backlog",
        "2048",
        "--log-level",
        "warning",
        "benchmarks.olddesign.app:create_app()",
    ]


@contextmanager
def old_service(
    redis_url: str,
    port: int,
    workers: int = WORKERS,
    threads: int = THREADS,
    prefix: str = "face_detection:",
    log: Path | None = None,
    timeout_s: float = 180,
) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryDirectory(prefix="olddesign-") as ready:
        env = {
            **os.environ,
            "OLD_REDIS_URL": redis_url,
            "OLD_KEY_PREFIX": prefix,
            "OLD_READY_DIR": ready,
            "OMP_NUM_THREADS": "1",
        }
        out = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            gunicorn_args(port, workers, threads), cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + timeout_s
            while len(os.listdir(ready)) < workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(os.listdir(ready))} of {workers} workers ready")
                time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if log and out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
