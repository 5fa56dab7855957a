"""`facestream up`: the whole stack on this machine, as child processes.

An embedded redis-server (unless FACESTREAM_REDIS_URL is set) with its data in the work dir,
the HTTP gateway, N detectors and a jsonl sink. Children get their settings through the
environment, exactly as they would in containers; Ctrl-C / SIGTERM stops them all cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from facestream.common.settings import Settings
from facestream.common.streams.connection import redact
from facestream.control.embedded import EmbeddedRedis


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


@dataclass
class Stack:
    settings: Settings
    workdir: Path
    detectors: int
    gateway: bool = True
    sink: bool = True
    log_dir: Path | None = None  # None: children log to this terminal
    children: list[Child] = field(default_factory=list)
    redis_url: str = ""
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    @property
    def jsonl_path(self) -> Path:
        return self.workdir / "results.jsonl"

    def _spawn(self, name: str, args: list[str], **env: str) -> None:
        base = {
            "FACESTREAM_REDIS_URL": self.redis_url,
            "FACESTREAM_PREFIX": self.settings.prefix,
        }
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            out = self._exit.enter_context((self.log_dir / f"{name}.log").open("ab"))
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **base, **env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
        self.children.append(Child(name, proc))

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if "redis_url" in self.settings.model_fields_set:
            self.redis_url = self.settings.redis_url
        else:
            server = EmbeddedRedis(self.workdir / "redis", persistent=True)
            self._exit.enter_context(server)
            self.redis_url = server.url
        host = socket.gethostname()
        for i in range(self.detectors):
            self._spawn(
                f"detector-{i}",
                ["-m", "facestream.detector"],
                FACESTREAM_CONSUMER=f"{host}-detector-{i}",
            )
        if self.gateway:
            self._spawn(
                "gateway",
                ["-m", "facestream.ingest"],
                FACESTREAM_CONSUMER=f"{host}-gateway",
                FACESTREAM_HTTP_HOST=self.settings.http_host,
                FACESTREAM_HTTP_PORT=str(self.settings.http_port),
            )
        if self.sink:
            self._spawn(
                "sink-jsonl",
                ["-m", "facestream.sink", "jsonl"],
                FACESTREAM_CONSUMER=f"{host}-sink-jsonl",
                FACESTREAM_JSONL_PATH=str(self.jsonl_path),
            )

    def describe(self) -> str:
        embedded = "redis_url" not in self.settings.model_fields_set
        lines = [
            f"redis      {redact(self.redis_url)}"
            + (f"  (embedded; data in {self.workdir / 'redis'})" if embedded else "")
        ]
        if self.gateway:
            lines.append(f"gateway    {self.gateway_url}  (POST /v1/detect, docs at /docs)")
        lines.append(f"detectors  {self.detectors} process(es)")
        if self.sink:
            lines.append(f"sink       jsonl -> {self.jsonl_path}")
        return "\n".join(lines)

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until every detector has joined the group (and the gateway answers)."""
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    consumers = client.xinfo_consumers(
                        f"{self.settings.prefix}:images", self.settings.detector_group
                    )
                except redis.ResponseError:
                    consumers = []
                if len(consumers) >= self.detectors and self._gateway_up():
                    return
                time.sleep(0.1)
        finally:
            client.close()
        raise TimeoutError("the stack did not become ready in time")

    def _gateway_up(self) -> bool:
        if not self.gateway:
            return True
        try:
            with socket.create_connection(
                (self.settings.http_host, self.settings.http_port), timeout=0.5
            ):
                return True
        except OSError:
            return False

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise RuntimeError(f"{child.name} exited with status {code}")

    def stop(self) -> list[int]:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        codes = []
        for child in self.children:
            try:
                codes.append(child.proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                codes.append(child.proc.wait())
        self.children.clear()
        self._exit.close()  # the embedded server last: children acked before it goes
        return codes


def run_up(stack: Stack) -> int:
    """Start, report, and run until a signal or a child's death; then stop everything."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    stack.start()
    status = 0
    try:
        stack.wait_ready()
        print(stack.describe(), file=sys.stderr, flush=True)
        print("ready; Ctrl-C stops everything", file=sys.stderr, flush=True)
        while not stopping:
            stack.check_alive()
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as exc:
        print(f"facestream up: {exc}", file=sys.stderr)
        status = 1
    finally:
        codes = stack.stop()
        print(f"stopped ({len(codes)} processes)", file=sys.stderr)
    return status
