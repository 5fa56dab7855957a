"""The address file a running `facestream up` leaves in its directory (`stack.json`).

`up` starts its embedded redis-server on a free port; the file is how a second terminal, a
script or the Python publisher run from the same directory find it without any export (the
way `ray start` leaves an address for `ray.init()`). It is written once everything is ready
and removed when `up` stops; a file whose `up` process is gone (killed -9, machine rebooted)
is ignored, so a stale one never points a command at a dead or foreign server.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE_NAME = "stack.json"
DEFAULT_DIR = ".facestream"


@dataclass(frozen=True)
class StackFile:
    redis_url: str
    pid: int
    host: str
    prefix: str
    gateway_url: str | None = None
    jsonl_path: str | None = None
    detectors: list[str] = field(default_factory=list)  # their consumer names
    sinks: list[str] = field(default_factory=list)
    # name -> Prometheus metrics URL of each detector and sink process
    metrics: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        """True while the `up` that wrote this file runs (on this host)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process: it exists
        return True


def path_in(directory: Path | str) -> Path:
    return Path(directory) / FILE_NAME


def write(directory: Path, stack: StackFile) -> Path:
    """Atomically (a reader never sees half a file)."""
    target = path_in(directory)
    tmp = target.with_suffix(".tmp")
    # Owner-only: an external FACESTREAM_REDIS_URL may carry a password.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(stack), indent=2) + "\n")
    tmp.replace(target)
    return target


def remove(directory: Path) -> None:
    path_in(directory).unlink(missing_ok=True)


def read(directory: Path | str) -> StackFile | None:
    """The stack file in `directory`, or None when there is none or it cannot be read."""
    try:
        raw = json.loads(path_in(directory).read_text(encoding="utf-8"))
        return StackFile(**raw)
    except (OSError, ValueError, TypeError):
        return None


def find_running(directory: Path | str) -> StackFile | None:
    """The stack file of a `facestream up` that still runs, or None."""
    stack = read(directory)
    return stack if stack is not None and stack.alive() else None
