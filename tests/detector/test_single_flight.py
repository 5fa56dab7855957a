"""Single flight across processes: 200 copies of one new image published at once to four
detector processes give exactly one inference and 200 results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, RESULT_FIELD
from facestream.ingest.publisher import make_event
from tests.conftest import encode

ROOT = Path(__file__).resolve().parents[2]


def start_detectors(url: str, prefix: str, n: int, tmp: Path) -> list[tuple[Any, Path]]:
    procs = []
    for i in range(n):
        log = tmp / f"detector-{i}.log"
        env = dict(
            os.environ,
            FACESTREAM_REDIS_URL=url,
            FACESTREAM_PREFIX=prefix,
            FACESTREAM_CONSUMER=f"proc-{i}",
            FACESTREAM_READ_COUNT="16",
            FACESTREAM_BLOCK_MS="200",
            FACESTREAM_DEFER_MIN_MS="10",
            FACESTREAM_INTRA_OP_THREADS="1",
            FACESTREAM_LOG_FORMAT="json",
        )
        with log.open("wb") as out:
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "facestream.detector"],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
    return procs


def wait_for_consumers(r: redis.Redis, keys: Keys, n: int, procs: list[Any]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for proc, log in procs:
            assert proc.poll() is None, log.read_text()
        try:
            if len(r.xinfo_consumers(keys.images, "detectors")) >= n:
                return
        except redis.ResponseError:
            pass  # group not created yet
        time.sleep(0.1)
    raise AssertionError("detectors did not start")


@pytest.mark.slow
def test_200_copies_four_processes_one_inference(
    redis_url: str, prefix: str, r: redis.Redis, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    keys = Keys(prefix)
    pixels = photos["grace_hopper"].copy()
    pixels[0, 0] = np.frombuffer(os.urandom(3), np.uint8)  # an image no cache has seen
    image = encode(pixels, "JPEG", quality=92)
    procs = start_detectors(redis_url, prefix, 4, tmp_path)
    try:
        wait_for_consumers(r, keys, 4, procs)
        pipe = r.pipeline(transaction=False)
        for i in range(200):
            pipe.xadd(keys.images, {EVENT_FIELD: make_event(image, f"copy-{i}").to_wire()})
        pipe.execute()
        deadline = time.monotonic() + 60
        while r.xlen(keys.results) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # any extra (duplicate) result would show up now
        got = [msgpack.unpackb(f[RESULT_FIELD]) for _, f in r.xrange(keys.results)]
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc, _ in procs]
    logs = [log.read_text() for _, log in procs]
    assert codes == [0, 0, 0, 0], logs
    assert all("results" in text.splitlines()[-1] for text in logs)  # one-line summary
    assert len(got) == 200
    assert {g["id"] for g in got} == {f"copy-{i}" for i in range(200)}
    inferred = [g for g in got if not g["cached"]]
    assert len(inferred) == 1, Counter(g["consumer"] for g in inferred)
    assert all(g["faces"] == inferred[0]["faces"] and len(g["faces"]) == 1 for g in got)
    print("results per detector:", dict(Counter(g["consumer"] for g in got)))
    assert r.xpending(keys.images, "detectors")["pending"] == 0
