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

from facestream.common import stackfile
from facestream.common.settings import Settings
from facestream.common.streams.connection import redact
from facestream.control.embedded import EmbeddedRedis, free_port


class StackError(RuntimeError):
    """`up` cannot start as asked (said in one line, exit 2)."""


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
    metrics: dict[str, str] = field(default_factory=dict)  # child name -> its metrics URL
    wrote_stack_file: bool = False  # stop removes stack.json only if this stack wrote it
    _exit: ExitStack = field(default_factory=ExitStack)

    def __post_init__(self) -> None:
        # Absolute before any child sees it: redis-server changes into its --dir before it
        # opens its log file, so a relative path would be resolved twice.
        self.workdir = self.workdir.resolve()
        if self.log_dir is not None:
            self.log_dir = self.log_dir.resolve()

    @property
    def external_redis(self) -> bool:
        """A Redis named by FACESTREAM_REDIS_URL (not one found through a stack file)."""
        s = self.settings
        return "redis_url" in s.model_fields_set and not s.stack_file

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    @property
    def jsonl_path(self) -> Path:
        return self.workdir / "results.jsonl"

    def _spawn(self, name: str, args: list[str], metrics: bool = False, **env: str) -> None:
        base = {
            "FACESTREAM_REDIS_URL": self.redis_url,
            "FACESTREAM_PREFIX": self.settings.prefix,
        }
        if metrics:  # each process its own port: a scrape target per process
            port = free_port()
            base["FACESTREAM_METRICS_PORT"] = str(port)
            base["FACESTREAM_METRICS_HOST"] = "127.0.0.1"  # like the gateway: this machine only
            self.metrics[name] = f"http://127.0.0.1:{port}/metrics"
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

    def check_free(self) -> None:
        """Refuse at once what would fail later: a stack already running in this directory,
        a gateway port already taken."""
        running = stackfile.find_running(self.workdir)
        if running is not None:
            raise StackError(
                f"a stack is already running in {self.workdir} (pid {running.pid}, redis "
                f"{redact(running.redis_url)}): stop it first, or choose another --dir"
            )
        if not self.gateway:
            return
        host, port = self.settings.http_host, self.settings.http_port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise StackError(
                    f"the gateway's port {port} on {host} is not free ({exc.strerror}): "
                    "set FACESTREAM_HTTP_PORT to another port, or --no-gateway"
                ) from None

    def start(self) -> None:
        self.check_free()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.external_redis:
            self.redis_url = self.settings.redis_url
        else:
            server = EmbeddedRedis(self.workdir / "redis", persistent=True)
            self._exit.enter_context(server)
            self.redis_url = server.url
        for i in range(self.detectors):
            self._spawn(
                f"detector-{i}",
                ["-m", "facestream.detector"],
                metrics=True,
                FACESTREAM_CONSUMER=self.consumer(f"detector-{i}"),
            )
        if self.gateway:
            self._spawn(
                "gateway",
                ["-m", "facestream.ingest"],
                FACESTREAM_CONSUMER=self.consumer("gateway"),
                FACESTREAM_HTTP_HOST=self.settings.http_host,
                FACESTREAM_HTTP_PORT=str(self.settings.http_port),
            )
        if self.sink:
            self._spawn(
                "sink-jsonl",
                ["-m", "facestream.sink", "jsonl"],
                metrics=True,
                FACESTREAM_CONSUMER=self.consumer("sink-jsonl"),
                FACESTREAM_JSONL_PATH=str(self.jsonl_path),
            )

    def consumer(self, role: str) -> str:
        """`<host>-<role>`: stable across restarts of `up`, unique on this host."""
        return f"{socket.gethostname()}-{role}"

    def describe(self) -> str:
        lines = [
            f"redis      {redact(self.redis_url)}"
            + ("" if self.external_redis else f"  (embedded; data in {self.workdir / 'redis'})")
        ]
        if self.gateway:
            lines.append(f"gateway    {self.gateway_url}  (POST /v1/detect, docs at /docs)")
        if self.detectors:
            lines.append(f"detectors  {self.detectors} process(es)")
        else:
            lines.append("detectors  none (--detectors 0): events wait until one starts")
        if self.sink:
            lines.append(f"sink       jsonl -> {self.jsonl_path}")
        for name, url in self.metrics.items():
            lines.append(f"metrics    {name:<12} {url}")
        return "\n".join(lines)

    def write_stack_file(self) -> Path:
        """Tell the other commands run from here where this stack is (common/stackfile.py)."""
        self.wrote_stack_file = True
        return stackfile.write(
            self.workdir,
            stackfile.StackFile(
                redis_url=self.redis_url,
                pid=os.getpid(),
                host=socket.gethostname(),
                prefix=self.settings.prefix,
                gateway_url=self.gateway_url if self.gateway else None,
                jsonl_path=str(self.jsonl_path) if self.sink else None,
                detectors=[self.consumer(f"detector-{i}") for i in range(self.detectors)],
                sinks=[self.consumer("sink-jsonl")] if self.sink else [],
                metrics=dict(self.metrics),
            ),
        )

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
        if self.wrote_stack_file:  # never another running stack's, in the same directory
            stackfile.remove(self.workdir)
            self.wrote_stack_file = False
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
    try:
        stack.check_free()
    except StackError as exc:
        print(f"facestream up: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        stack.start()
        stack.wait_ready()
        written = stack.write_stack_file()
        print(stack.describe(), file=sys.stderr, flush=True)
        print(
            f"ready; Ctrl-C stops everything. Other commands run from {Path.cwd()} find this "
            f"stack through {written}\n(elsewhere: --dir {stack.workdir}, or "
            f"FACESTREAM_REDIS_URL={stack.redis_url})",
            file=sys.stderr,
            flush=True,
        )
        while not stopping:
            stack.check_alive()
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as exc:
        print(f"facestream up: {exc}", file=sys.stderr)
        status = 2 if isinstance(exc, StackError) else 1
    finally:
        codes = stack.stop()
        print(f"stopped ({len(codes)} processes)", file=sys.stderr)
    return status
