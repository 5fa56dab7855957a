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

A run can be several phases back to back on one connection pool, each at its own rate (the
overload and recovery run, benchmarks/overload.py); a phase asked to keeps a Record per request.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from benchmarks.classes import ByClass
from benchmarks.loadgen import Target, Workload, exchange

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class Record:
    """One request of a phase that keeps records."""

    at_s: float  # its arrival time, from the phase's start
    kind: str  # hit / new / joined (benchmarks/classes.py), when it arrived
    status: int  # the HTTP status; 0 when none came (`cause` says why)
    cause: str  # the status as text, or "timeout", "connection", "dropped"
    code: str  # an error answer's JSON `code` ("overloaded"), else ""
    latency_s: float  # arrival -> the whole answer (or the failure)


@dataclass(frozen=True)
class Phase:
    rate: float
    seconds: float
    measured: bool = True  # False: sent, not counted (a warm-up)
    records: bool = False  # keep a Record per request (StepOutcome.records)


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
    peak_connections: int = 0  # open at once while this phase's requests were sent
    records: list[Record] | None = None  # per request, where the phase asked for them

    @property
    def achieved(self) -> float:
        """Sends a second over the window (longer when sends spilled past it)."""
        return self.sent / max(self.seconds, self.last_send) if self.seconds else 0.0

    @property
    def lag_p99_ms(self) -> float:
        return float(np.percentile(self.lag_ms, 99)) if self.lag_ms else 0.0

    def error(self, cause: str) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1


CODE = re.compile(rb'"code"\s*:\s*"([^"]{1,64})"')


def error_code(payload: bytes) -> str:
    """The `code` of a JSON error answer ({"error": {"code", "message"}}), else ""."""
    found = CODE.search(payload, 0, 512)
    return found.group(1).decode() if found else ""


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
        self, target: Target, work: Workload, new_share: float, opts: ClientOptions
    ) -> None:
        self.target = target
        self.work = work
        self.new_share = new_share
        self.opts = opts
        self.pool = Pool(target.port, opts.max_connections)

    async def send(self, due: float, phase_start: float, out: StepOutcome | None) -> None:
        """One request arriving at `due`, counted in `out` (None: a warm-up's, not counted)."""
        started = time.perf_counter()
        lag = started - due
        image, body = self.work.pick(self.new_share)
        if out is not None:
            out.lag_ms.append(lag * 1000)
            out.late += lag * 1000 > self.opts.late_ms
        try:
            conn, reused = await self.pool.get()
        except Full:
            if out is not None:
                out.dropped += 1
                self._unsent(out, due, phase_start, image, "dropped")
            return
        except OSError:
            if out is not None:
                out.sent += 1
                out.error("connection")
                self._unsent(out, due, phase_start, image, "connection")
            return
        kind = self.work.classes.send(image)
        if out is not None:
            out.sent += 1
            out.last_send = time.perf_counter() - phase_start
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
        if out is None:
            return
        # From the arrival time; from the send where a coarse timer let it leave a little early.
        latency = time.perf_counter() - max(due, started)
        if out.records is not None:
            out.records.append(
                Record(
                    due - phase_start,
                    kind,
                    status,
                    cause,
                    error_code(payload) if status != 200 else "",
                    latency,
                )
            )
        if status != 200:
            out.error(cause)
            return
        out.by_class.add(kind, latency)
        out.cached += b'"cached":true' in payload

    def _unsent(
        self, out: StepOutcome, due: float, phase_start: float, image: int, cause: str
    ) -> None:
        """The record of a request that got no connection."""
        if out.records is not None:
            kind = self.work.classes.kind(image)
            latency = time.perf_counter() - due
            out.records.append(Record(due - phase_start, kind, 0, cause, "", latency))

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


def schedule(
    phases: list[Phase], rng: random.Random
) -> tuple[list[tuple[float, int]], list[float]]:
    """Every arrival as (time from the run's start, its phase's index), in order, and each
    phase's start: each phase its own Poisson process, from where the one before ended."""
    arrivals: list[tuple[float, int]] = []
    starts: list[float] = []
    offset = 0.0
    for i, phase in enumerate(phases):
        starts.append(offset)
        arrivals += [(offset + t, i) for t in poisson_arrivals(phase.rate, phase.seconds, rng)]
        offset += phase.seconds
    return arrivals, starts


async def _run(
    target: Target,
    work: Workload,
    phases: list[Phase],
    new_share: float,
    rng: random.Random,
    opts: ClientOptions,
) -> list[StepOutcome]:
    """One outcome per measured phase, in order."""
    arrivals, offsets = schedule(phases, rng)
    outs: list[StepOutcome | None] = [
        StepOutcome(p.rate, p.seconds, records=[] if p.records else None) if p.measured else None
        for p in phases
    ]
    for _, i in arrivals:
        counted = outs[i]
        if counted is not None:
            counted.scheduled += 1
    step = _Step(target, work, new_share, opts)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.01
    starts = [start + o for o in offsets]
    current = 0
    try:
        for t, i in arrivals:
            if i != current:  # the phase before has sent all it had: its peak is known
                _close_phase(outs[current], step.pool)
                current = i
            due = start + t
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(step.send(due, starts[i], outs[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        _close_phase(outs[current], step.pool)
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        for task in tasks:
            task.cancel()
        step.pool.close()
    return [out for out in outs if out is not None]


def _close_phase(out: StepOutcome | None, pool: Pool) -> None:
    if out is not None:
        out.peak_connections = pool.peak
    pool.peak = pool.open  # the next phase's peak starts from what is open now


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop  # the gateway's own loop; it keeps the client's lag low
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_in_loop(coro: Coroutine[Any, Any, T]) -> T:
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
    phases = [Phase(rate, warmup_s, measured=False)] if warmup_s > 0 else []
    phases.append(Phase(rate, seconds))
    return open_loop_phases(target, work, phases, new_share, seed, opts)[0]


def open_loop_phases(
    target: Target,
    work: Workload,
    phases: list[Phase],
    new_share: float = 0.022,
    seed: int = 1,
    opts: ClientOptions | None = None,
) -> list[StepOutcome]:
    """The phases back to back on one connection pool, with no pause between them; one outcome
    per measured phase. Every request sent is waited for (up to opts.timeout_s)."""
    rng = random.Random(seed)
    return run_in_loop(_run(target, work, phases, new_share, rng, opts or ClientOptions()))
