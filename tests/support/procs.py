"""Real service processes for end-to-end tests: detectors, the gateway, sinks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Procs:
    """Started processes, each logging to its own file; stopped with SIGTERM at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env={**os.environ, **self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.running)

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
