"""Real service processes for end-to-end tests: detectors, the gateway, sinks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from facestream.common.settings import Settings
from facestream.control.embedded import free_port
from tests.support import acl

ROOT = Path(__file__).resolve().parents[2]


def settings_of(env: dict[str, str]) -> Settings:
    """The Settings a process started with `env` would build (FACESTREAM_* only)."""
    fields = Settings.model_fields
    return Settings(
        **{
            k[11:].lower(): v
            for k, v in env.items()
            if k.startswith("FACESTREAM_") and k[11:].lower() in fields
        }
    )


class Procs:
    """Started processes, each logging to its own file; stopped with SIGTERM at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.stopped: list[Path] = []  # logs of processes already stopped, for failure reports

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        merged = {**self.env, **env}
        role = acl.role_of(args)
        if role and acl.ON and "FACESTREAM_REDIS_USERNAME" not in merged:
            # Under `make test-acl`: the service logs in as its own generated user.
            merged.update(acl.env_for(settings_of(merged), role))
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env={**os.environ, **merged},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append((proc, log))
        return proc

    def logs(self) -> str:
        """The tail of every process's log: the running ones, and those stop() ended."""
        paths = [log for _, log in self.running] + self.stopped
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in paths)

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc, log in self.running:
                if proc.poll() is not None:
                    raise AssertionError(f"{log.name} exited {proc.returncode}:\n{self.logs()}")
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()}")

    def stop(self) -> list[int]:
        for proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc, _ in self.running:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        self.stopped += [log for _, log in self.running]
        self.running.clear()
        return codes


def gateway_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

    return check


def base_env(redis_url: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {
        "FACESTREAM_REDIS_URL": redis_url,
        "FACESTREAM_PREFIX": prefix,
        "FACESTREAM_LOG_FORMAT": "json",
        "FACESTREAM_BLOCK_MS": "200",
        "FACESTREAM_INTRA_OP_THREADS": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def detector_and_gateway(
    redis_url: str,
    tmp: Path,
    name: str,
    detector_env: dict[str, str] | None = None,
    **gateway_env: str,
) -> Iterator[tuple[str, str, Procs]]:
    """A detector and a gateway as processes on their own key prefix, until the block ends:
    (the gateway's URL, the prefix, the processes), once the gateway is ready and sees the
    detector alive (a waiting request before that is answered 503 no_detector). Both must
    stop cleanly."""
    prefix = f"{name}{random.randrange(1 << 30)}"
    port = free_port()
    procs = Procs(tmp, base_env(redis_url, prefix))
    procs.start(
        "detector",
        ["-m", "facestream.detector"],
        FACESTREAM_CONSUMER=f"{name}-det",
        **(detector_env or {}),
    )
    procs.start(
        "gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port), **gateway_env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        procs.wait_for(
            lambda: httpx.get(f"{url}/v1/status", timeout=2).json()["detectors"] == 1,
            "the detector advertised",
        )
        yield url, prefix, procs
    finally:
        codes = procs.stop()
        assert codes == [0, 0], f"exit codes {codes}\n{procs.logs()}"
