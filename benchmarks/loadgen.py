"""The closed-loop HTTP client both systems are measured with: each user keeps one keep-alive
connection, sends a request, waits for the whole answer, and sends the next at once."""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field, replace

from benchmarks.classes import ByClass, Classifier
from benchmarks.common import unique_jpeg

BOUNDARY = "facestreambenchboundary"


@dataclass(frozen=True)
class Target:
    """Where and how to send an image: a raw body (`POST /v1/detect?wait=true`) or the old
    service's multipart form with the image in field `image` (`POST /face-detection`)."""

    port: int
    path: str
    multipart: bool

    def request(self, body: bytes) -> bytes:
        if self.multipart:
            body = (
                (
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
                    f'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
                ).encode()
                + body
                + f"\r\n--{BOUNDARY}--\r\n".encode()
            )
            kind = f"multipart/form-data; boundary={BOUNDARY}"
        else:
            kind = "image/jpeg"
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


def v1_target(port: int) -> Target:
    return Target(port, "/v1/detect?wait=true&timeout_ms=60000", multipart=False)


DEADLINE = re.compile(r"timeout_ms=(\d+)")


def with_deadline(target: Target, ms: float | None) -> Target:
    """The same target with the wait it asks for set to `ms` (`timeout_ms`, a request's deadline
    for facestream's admission control), where its route has that parameter: facestream's v1
    route does; the old design and facestream's drop-in route have none (returned as given)."""
    if ms is None or not DEADLINE.search(target.path):
        return target
    return replace(target, path=DEADLINE.sub(f"timeout_ms={max(1, round(ms))}", target.path))


def deadline_ms(target: Target) -> int | None:
    """The `timeout_ms` the target sends, if any."""
    found = DEADLINE.search(target.path)
    return int(found.group(1)) if found else None


def compat_target(port: int) -> Target:
    return Target(port, "/face-detection", multipart=True)


class Workload:
    """Request bodies: a new, never-sent photo with probability `miss`, else a Zipf-like repeat
    of one already sent (recent and popular photos come back often, as real traffic does).
    `label` keeps the bytes of different workloads apart (other sha256s). `classes` knows which
    photos were answered and which are in flight (benchmarks/classes.py)."""

    def __init__(self, bases: list[bytes], seed: int = 1, label: int = 0) -> None:
        self.bases = bases
        self.sent: list[bytes] = []
        self.new = 0
        self.rng = random.Random(seed)
        self.label = label
        self.classes = Classifier()

    def fresh(self) -> bytes:
        n = len(self.sent)
        self.sent.append(unique_jpeg(self.bases[n % len(self.bases)], self.label + n))
        self.new += 1
        return self.sent[-1]

    def next(self, miss: float) -> bytes:
        return self.pick(miss)[1]

    def pick(self, miss: float) -> tuple[int, bytes]:
        """The next body and its photo's index in `sent` (what `classes` is keyed by)."""
        if not self.sent or self.rng.random() < miss:
            body = self.fresh()
            return len(self.sent) - 1, body
        rank = min(int(self.rng.paretovariate(1.1)) - 1, len(self.sent) - 1)
        return len(self.sent) - 1 - rank, self.sent[-1 - rank]


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    cached: int = 0  # answers that said "cached": true (the v1 result only)
    errors: dict[int, int] = field(default_factory=dict)  # status -> count
    elapsed: float = 0.0
    by_class: ByClass = field(default_factory=ByClass)  # the same latencies, per class


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, bytes]:
    writer.write(data)
    status = await reader.readline()
    if not status:
        raise ConnectionResetError("closed by the server")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return int(status.split()[1]), await reader.readexactly(length)


async def user(target: Target, work: Workload, miss: float, stop_at: float, out: Outcome) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        while time.perf_counter() < stop_at:
            image, body = work.pick(miss)
            data = target.request(body)
            kind = work.classes.send(image)
            started = time.perf_counter()
            try:
                status, payload = await exchange(reader, writer, data)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A server that closed an idle keep-alive connection: reconnect, not a result.
                work.classes.done(image, answered=False)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                continue
            work.classes.done(image, answered=status == 200)
            if status != 200:
                out.errors[status] = out.errors.get(status, 0) + 1
                continue
            latency = time.perf_counter() - started
            out.latencies.append(latency)
            out.by_class.add(kind, latency)
            out.cached += b'"cached":true' in payload
    finally:
        writer.close()


async def _closed_loop(
    target: Target, work: Workload, users: int, miss: float, seconds: float
) -> Outcome:
    out = Outcome()
    started = time.perf_counter()
    await asyncio.gather(*(user(target, work, miss, started + seconds, out) for _ in range(users)))
    out.elapsed = time.perf_counter() - started
    return out


def closed_loop(target: Target, work: Workload, users: int, miss: float, seconds: float) -> Outcome:
    return asyncio.run(_closed_loop(target, work, users, miss, seconds))


async def _send_each(target: Target, bodies: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        for body in bodies:
            status, payload = await exchange(reader, writer, target.request(body))
            if status != 200:
                raise RuntimeError(f"{status}: {payload[:200]!r}")
    finally:
        writer.close()


def send_each(target: Target, bodies: list[bytes]) -> None:
    """Each body once, one after another (to fill a cache before an all-hits run)."""
    asyncio.run(_send_each(target, bodies))
