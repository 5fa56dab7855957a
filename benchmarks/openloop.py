"""The open-loop client: the serving field's server scenario (MLPerf Inference's `Server`,
Triton perf_analyzer's `--request-rate-range`). Requests arrive as a Poisson process at a
given rate and each is sent at its arrival time whether or not earlier ones were answered: a
slow system is not sent less, its queue grows (the closed loop in benchmarks/loadgen.py waits
instead, and so measures the workload as much as the system).

Each request in flight needs its own keep-alive connection; the pool opens one when none is
idle, up to `max_connections`. A request's latency runs from its scheduled arrival to the last
byte of its answer, so neither the client's lag nor a connection set-up is left out. A client
that cannot keep pace says so: every step reports the rate it achieved, the sends that left
more than `late_ms` after their arrival time, and those dropped because every connection was
busy (benchmarks/capacity.py counts either against the step rather than close the loop).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.classes import ByClass
from benchmarks.loadgen import Target, Workload, exchange

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def poisson_arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Arrival times in [0, seconds): exponential gaps of mean 1 / rate."""
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


@dataclass(frozen=True)
class ClientOptions:
    max_connections: int = 4096
    late_ms: float = 10.0  # a send this far behind its arrival time is late
    timeout_s: float = 60.0  # no answer by then: an error ("timeout")


@dataclass
class StepOutcome:
    """One rate, its measured window only (warm-up arrivals are sent, not counted)."""

    offered: float
    seconds: float
    scheduled: int = 0  # arrivals in the window
    sent: int = 0
    dropped: int = 0  # not sent: every connection busy
    late: int = 0  # sent more than late_ms after the arrival time
    lag_ms: list[float] = field(default_factory=list)  # the client's own delay per send
    last_send: float = 0.0  # seconds from the window's start
    by_class: ByClass = field(default_factory=ByClass)  # answered (200) only
    cached: int = 0  # answers that said "cached": true
    errors: dict[str, int] = field(default_factory=dict)  # status or cause -> count
    peak_connections: int = 0

    @property
    def achieved(self) -> float:
        """Sends a second over the window (longer when sends spilled past it)."""
        return self.sent / max(self.seconds, self.last_send) if self.seconds else 0.0

    @property
    def lag_p99_ms(self) -> float:
        return float(np.percentile(self.lag_ms, 99)) if self.lag_ms else 0.0

    def error(self, cause: str) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1


class Full(Exception):
    """Every connection the client may open is busy."""


class Pool:
    """Idle keep-alive connections, the most recently used first (the server's idle timeout
    closes the cold ones, which are then dropped here)."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.idle: list[Connection] = []
        self.open = 0
        self.peak = 0

    async def get(self) -> tuple[Connection, bool]:
        """A connection and whether it was reused."""
        while self.idle:
            conn = self.idle.pop()
            if not conn[0].at_eof():
                return conn, True
            self.discard(conn)
        if self.open >= self.limit:
            raise Full
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            return await asyncio.open_connection("127.0.0.1", self.port), False
        except OSError:
            self.open -= 1
            raise

    def put(self, conn: Connection) -> None:
        self.idle.append(conn)

    def discard(self, conn: Connection) -> None:
        self.open -= 1
        conn[1].close()

    def close(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())


class _Step:
    def __init__(
        self,
        target: Target,
        work: Workload,
        new_share: float,
        out: StepOutcome,
        opts: ClientOptions,
    ) -> None:
        self.target = target
        self.work = work
        self.new_share = new_share
        self.out = out
        self.opts = opts
        self.pool = Pool(target.port, opts.max_connections)

    async def send(self, due: float, window_start: float, measured: bool) -> None:
        out = self.out
        started = time.perf_counter()
        lag = started - due
        image, body = self.work.pick(self.new_share)
        if measured:
            out.lag_ms.append(lag * 1000)
            out.late += lag * 1000 > self.opts.late_ms
        try:
            conn, reused = await self.pool.get()
        except Full:
            out.dropped += measured
            return
        except OSError:
            if measured:
                out.sent += 1
                out.error("connection")
            return
        kind = self.work.classes.send(image)
        if measured:
            out.sent += 1
            out.last_send = time.perf_counter() - window_start
        status, payload = 0, b""
        try:
            async with asyncio.timeout(self.opts.timeout_s):  # no extra task, unlike wait_for
                status, payload = await self._exchange(conn, reused, self.target.request(body))
        except TimeoutError:
            cause = "timeout"
        except Full:
            cause = "dropped"
        except (OSError, asyncio.IncompleteReadError):
            cause = "connection"
        else:
            cause = str(status)
        self.work.classes.done(image, answered=status == 200)
        if not measured:
            return
        if status != 200:
            out.error(cause)
            return
        # From the arrival time; from the send where a coarse timer let it leave a little early.
        out.by_class.add(kind, time.perf_counter() - max(due, started))
        out.cached += b'"cached":true' in payload

    async def _exchange(self, conn: Connection, reused: bool, data: bytes) -> tuple[int, bytes]:
        try:
            answer = await exchange(*conn, data)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.pool.discard(conn)
            if not reused:
                raise
            # Closed by the server while idle: once more on a new connection (one is free:
            # this one was just given up).
            conn, _ = await self.pool.get()
            return await self._exchange(conn, False, data)
        except BaseException:
            self.pool.discard(conn)
            raise
        self.pool.put(conn)
        return answer


async def _run(
    target: Target,
    work: Workload,
    rate: float,
    seconds: float,
    warmup_s: float,
    new_share: float,
    rng: random.Random,
    opts: ClientOptions,
) -> StepOutcome:
    out = StepOutcome(rate, seconds)
    step = _Step(target, work, new_share, out, opts)
    arrivals = poisson_arrivals(rate, warmup_s + seconds, rng)
    out.scheduled = sum(t >= warmup_s for t in arrivals)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.01
    window_start = start + warmup_s
    try:
        for t in arrivals:
            due = start + t
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(step.send(due, window_start, t >= warmup_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        for task in tasks:
            task.cancel()
        out.peak_connections = step.pool.peak
        step.pool.close()
    return out


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop  # the gateway's own loop; it keeps the client's lag low
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_in_loop(coro: Coroutine[Any, Any, StepOutcome]) -> StepOutcome:
    with _loop_runner() as runner:
        return runner.run(coro)


def open_loop(
    target: Target,
    work: Workload,
    rate: float,
    seconds: float,
    warmup_s: float = 0.0,
    new_share: float = 0.022,
    seed: int = 1,
    opts: ClientOptions | None = None,
) -> StepOutcome:
    """Poisson arrivals at `rate` a second for `warmup_s` + `seconds`; only the arrivals after
    the warm-up are counted, and every request sent is waited for (up to opts.timeout_s)."""
    rng = random.Random(seed)
    return run_in_loop(
        _run(target, work, rate, seconds, warmup_s, new_share, rng, opts or ClientOptions())
    )
