"""A small cluster on loopback for chaos tests: its own redis-server (append-only file,
fsync always) that the test may kill, stop and restart, and detector processes to do the same
to. Every scenario ends with the same figures, printed and returned."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import redis
from PIL import Image

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, RESULT_FIELD, ImageEvent
from facestream.control.embedded import find_server_binary, free_port
from facestream.control.samples import sample_pixels
from facestream.ingest.publisher import make_event

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "chaos"


def distinct_images(n: int, size: int = 160) -> list[bytes]:
    """n different JPEGs of a real face (the astronaut), each with its own corner pixels."""
    face = sample_pixels()["astronaut"][20:260, 140:380]
    base = np.asarray(Image.fromarray(face).resize((size, size)))
    out = []
    for i in range(n):
        px = base.copy()
        px[:4, :4] = np.frombuffer(i.to_bytes(48, "little"), np.uint8).reshape(4, 4, 3)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "PNG")  # lossless: the marked pixels survive
        out.append(buf.getvalue())
    return out


@dataclass
class Cluster:
    tmp: Path
    detectors: int = 3
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def keys(self) -> Keys:
        return Keys(PREFIX)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    # --- redis ------------------------------------------------------------------------------
    def start_redis(self) -> None:
        data = self.tmp / "redis"
        data.mkdir(exist_ok=True)
        self.redis_proc = subprocess.Popen(
            [
                find_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--logfile",
                str(data / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def signal_redis(self, sig: int) -> None:
        assert self.redis_proc is not None
        self.redis_proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.redis_proc.wait()

    # --- detectors --------------------------------------------------------------------------
    def start_detector(self, i: int) -> None:
        env = {
            **os.environ,
            "FACESTREAM_REDIS_URL": self.url,
            "FACESTREAM_PREFIX": PREFIX,
            "FACESTREAM_CONSUMER": f"chaos-{i}",
            "FACESTREAM_LOG_FORMAT": "json",
            "FACESTREAM_LOG_LEVEL": "debug",
            "FACESTREAM_INTRA_OP_THREADS": "1",
            "FACESTREAM_BLOCK_MS": "200",
            "FACESTREAM_READ_COUNT": "16",
            "FACESTREAM_LOCK_TTL_MS": "1000",
            "FACESTREAM_CLAIM_IDLE_MS": "1500",
            "FACESTREAM_CLAIM_EVERY_MS": "300",
            "FACESTREAM_CONSUMER_CLAIM_TTL_MS": "1000",
            "FACESTREAM_SOCKET_TIMEOUT_S": "3",
            "FACESTREAM_SOCKET_CONNECT_TIMEOUT_S": "1",
            **self.env,
        }
        with (self.tmp / f"detector-{i}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "facestream.detector"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        self.start_redis()
        for i in range(self.detectors):
            self.start_detector(i)
        self.wait_consumers(self.detectors)

    def wait_consumers(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.client().xinfo_consumers(self.keys.images, "detectors")) >= n:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"detectors did not join:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}"
            for p in sorted(self.tmp.glob("detector-*.log"))
        )

    def stop(self) -> list[int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.send_signal(signal.SIGCONT)
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=30)
        return codes

    # --- traffic and figures ----------------------------------------------------------------
    def publish(self, events: list[ImageEvent], give_up_s: float = 30) -> list[str]:
        """XADD each event, retrying while Redis is away; returns the ids whose XADD returned
        (the ones the promise covers)."""
        client = self.client()
        done = []
        for event in events:
            deadline = time.monotonic() + give_up_s
            while True:
                try:
                    client.xadd(self.keys.images, {EVENT_FIELD: event.to_wire()})
                    done.append(event.id)
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        client.close()
        return done

    def results(self) -> list[dict[str, Any]]:
        entries = self.client().xrange(self.keys.results)
        return [msgpack.unpackb(f[RESULT_FIELD], raw=False) for _, f in entries]

    def wait_answered(self, ids: list[str], timeout_s: float = 90) -> float:
        """Seconds until every id has a result (or the timeout)."""
        started = time.monotonic()
        want = set(ids)
        while time.monotonic() - started < timeout_s:
            try:
                if want <= {r["id"] for r in self.results()}:
                    break
            except redis.RedisError:
                pass
            time.sleep(0.2)
        return time.monotonic() - started

    def figures(self, name: str, published: list[str], recover_s: float) -> dict[str, Any]:
        results = self.results()
        ids = Counter(r["id"] for r in results)
        wanted = set(published)
        figures = {
            "events_in": len(published),
            "results_out": len(results),
            "distinct_answered": len(wanted & set(ids)),
            "lost": len(wanted - set(ids)),
            "duplicates": sum(n - 1 for i, n in ids.items() if i in wanted and n > 1),
            "inferences": sum(1 for r in results if "faces" in r and not r["cached"]),
            "errors": sum(1 for r in results if "error" in r),
            "recover_s": round(recover_s, 2),
        }
        print(f"\nchaos {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
        return figures


def events(images: list[bytes], tag: str) -> list[ImageEvent]:
    return [make_event(image, f"{tag}-{i}") for i, image in enumerate(images)]
