"""The open-loop benchmark (benchmarks/openloop.py, benchmarks/capacity.py): the Poisson
schedule, the per-class bookkeeping, and the capacity search run against a stub server whose
capacity is known.

The stub is a small asyncio HTTP server in a thread of its own, not facestream: the search has
to be checked against a capacity known in advance, and no real system has one (the benchmark
itself is run by hand). It answers a photo it has answered before at once ("cached": true),
makes a request for a photo in flight wait for that one's answer, and runs every other photo
for `service_s` on one of `slots` slots: `slots / service_s` new photos a second at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field

import pytest

from benchmarks.capacity import Bound, Options, RatePoint, capacity, judge, search, stepper
from benchmarks.classes import HIT, JOINED, NEW, ByClass, Classifier, ClassStats, merge_rounds
from benchmarks.common import photos
from benchmarks.loadgen import Target, Workload, closed_loop
from benchmarks.openloop import ClientOptions, StepOutcome, open_loop, poisson_arrivals
from benchmarks.sidebyside import NEW as FS
from benchmarks.sidebyside import OLD, Point, System, medians, report
from benchmarks.sidebyside import Options as SystemOptions


@dataclass
class Stub:
    slots: int
    service_s: float
    port: int = 0
    done: set[str] = field(default_factory=set)
    flight: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"ran": 0, "cached": 0, "joined": 0})

    def __post_init__(self) -> None:
        self.gate = asyncio.Semaphore(self.slots)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        gate = self.gate
        try:
            while await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                sha = hashlib.sha256(await reader.readexactly(length)).hexdigest()
                cached = sha in self.done
                if cached:
                    self.counts["cached"] += 1
                elif sha in self.flight:
                    self.counts["joined"] += 1
                    await self.flight[sha]
                else:
                    self.counts["ran"] += 1
                    self.flight[sha] = asyncio.get_running_loop().create_future()
                    async with gate:
                        await asyncio.sleep(self.service_s)
                    self.done.add(sha)
                    self.flight.pop(sha).set_result(None)
                body = b'{"faces":[],"cached":%s}' % (b"true" if cached else b"false")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def target(self) -> Target:
        return Target(self.port, "/v1/detect", multipart=False)


@contextmanager
def stub_server(slots: int, service_s: float, stub: Stub | None = None) -> Iterator[Stub]:
    """`stub` (a Stub of another kind) or a plain one, served in a thread of its own."""
    stub = stub or Stub(slots, service_s)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopped: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stopped
        stopped = asyncio.Event()
        server = await asyncio.start_server(stub.handle, "127.0.0.1", 0, backlog=1024)
        stub.port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await stopped.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield stub
    finally:
        assert stopped is not None
        loop.call_soon_threadsafe(stopped.set)
        thread.join(10)
        loop.close()


def stub_system(stub: Stub) -> System:
    return System("stub", stub.target(), {})


# --- the schedule -----------------------------------------------------------------------------


def test_poisson_arrivals_have_the_rate_asked_and_exponential_gaps() -> None:
    rate, seconds = 500.0, 40.0
    times = poisson_arrivals(rate, seconds, random.Random(7))
    expected = rate * seconds
    assert abs(len(times) - expected) < 4 * math.sqrt(expected)  # a Poisson count
    assert times == sorted(times) and times[0] >= 0 and times[-1] < seconds
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # exponential: standard deviation equal to the mean, P(gap > mean) = 1/e, no spacing floor
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.04)
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.015)
    assert sum(g < 0.1 * mean for g in gaps) / len(gaps) == pytest.approx(
        1 - math.exp(-0.1), abs=0.01
    )


def test_the_same_seed_gives_the_same_schedule() -> None:
    one = poisson_arrivals(100, 5, random.Random(3))
    assert one == poisson_arrivals(100, 5, random.Random(3))
    assert one != poisson_arrivals(100, 5, random.Random(4))


# --- the classes ------------------------------------------------------------------------------


def test_a_request_is_new_joined_or_a_hit_by_what_the_client_sent_before() -> None:
    c = Classifier()
    assert c.send(0) == NEW
    assert c.send(0) == JOINED  # the first still in flight
    c.done(0, answered=True)
    assert c.send(0) == HIT  # answered once: cached, whatever is still in flight
    c.done(0, answered=True)
    c.done(0, answered=True)
    assert c.send(1) == NEW
    c.done(1, answered=False)  # failed: nothing cached, nothing in flight
    assert c.send(1) == NEW
    c.done(1, answered=True)
    assert c.send(1) == HIT and c.in_flight == {1: 1}


def test_latency_is_kept_per_class_with_its_own_percentiles() -> None:
    by = ByClass()
    for ms in range(1, 101):  # hits: 1..100 ms
        by.add(HIT, ms / 1000)
    for ms in (200, 300):
        by.add(NEW, ms / 1000)
    stats = by.stats()
    assert astuple(stats[HIT]) == pytest.approx((100, 50.5, 99.01))
    assert astuple(stats[NEW]) == pytest.approx((2, 250.0, 299.0))
    assert stats[JOINED] == ClassStats(0, 0.0, 0.0) and stats[JOINED].cell() == "-"
    assert stats[NEW].cell() == "250.0 / 299.0 (2)"
    assert len(by.all()) == 102
    merged = merge_rounds([stats, {HIT: ClassStats(10, 3.0, 7.0)}, {}])
    assert astuple(merged[HIT]) == pytest.approx((110, 26.75, 53.005))
    assert merged[NEW].n == 2 and JOINED not in merged


def test_the_closed_loop_report_gains_latency_by_class() -> None:
    def point(system: str, hit_p99: float, new_p99: float) -> Point:
        cpu = {"workers": 1.0, "redis": 1.0, "client": 1.0}
        if system == FS:
            cpu = {"gateway": 1.0, "detectors": 1.0, "redis": 1.0, "client": 1.0}
        classes = {HIT: ClassStats(900, 5.0, hit_p99), NEW: ClassStats(20, 40.0, new_p99)}
        return Point("published", system, 200, 2.2, 1000, 10, 5, 50, 97.8, {}, cpu, classes)

    rounds = [point(OLD, 300, 480), point(FS, 27, 2600), point(FS, 29, 2400), point(OLD, 310, 500)]
    merged = {p.system: p for p in medians(rounds)}
    assert merged[FS].classes[HIT] == ClassStats(1800, 5.0, 28.0)
    text = report(rounds, SystemOptions(users=(200,), rounds=2))
    assert "Latency by class" in text
    rows = [line for line in text.splitlines() if line.startswith("| 200 ") and "(" in line]
    fs_row = next(r for r in rows if FS in r)
    assert "5.0 / 28.0 (1,800)" in fs_row and "40.0 / 2500.0 (40)" in fs_row


def test_the_client_classes_agree_with_what_the_server_did() -> None:
    """Every request the client calls new ran on the server; what it calls a hit the server
    answered from its cache; a joined one the server either joined to a run in flight or (its
    answer was still on the way back) answered from the cache."""
    with stub_server(slots=64, service_s=0.05) as stub:
        work = Workload(photos(4), seed=5, label=10**9)
        out = open_loop(stub.target(), work, rate=150, seconds=2.0, new_share=0.3, seed=5)
    stats = out.by_class.stats()
    assert not out.errors and out.dropped == 0
    assert stats[NEW].n == stub.counts["ran"] > 0
    assert 0 < stats[HIT].n <= stub.counts["cached"]
    assert stats[JOINED].n >= stub.counts["joined"] > 0
    assert stats[HIT].n + stats[JOINED].n == stub.counts["cached"] + stub.counts["joined"]
    assert out.cached == stub.counts["cached"]
    # a new photo cannot be answered before its run; a hit waits for none
    assert min(out.by_class.seconds[NEW]) >= 0.045  # (timers may fire a little early)
    assert stats[HIT].p50_ms < stats[NEW].p50_ms


def test_the_closed_loop_keeps_the_same_classes() -> None:
    with stub_server(slots=64, service_s=0.02) as stub:
        work = Workload(photos(4), seed=6, label=4 * 10**9)
        out = closed_loop(stub.target(), work, users=8, miss=0.2, seconds=1.0)
    stats = out.by_class.stats()
    assert sum(s.n for s in stats.values()) == len(out.latencies) > 0
    assert stats[NEW].n == stub.counts["ran"] > 0
    assert stats[HIT].n + stats[JOINED].n == stub.counts["cached"] + stub.counts["joined"]
    assert stats[JOINED].n >= stub.counts["joined"] > 0


# --- the client says when it cannot keep up ---------------------------------------------------


def test_a_step_the_client_could_not_deliver_does_not_hold() -> None:
    with stub_server(slots=8, service_s=0.2) as stub:
        work = Workload(photos(2), seed=1, label=2 * 10**9)
        # two connections, each busy 0.2 s: 10 requests a second can go out, 60 arrive
        out = open_loop(
            stub.target(), work, 60, 1.5, new_share=1.0, opts=ClientOptions(max_connections=2)
        )
    assert out.dropped > 30 and out.sent + out.dropped == out.scheduled
    assert out.achieved < 20
    point = judge("stub", out, Bound(p99_ms=10_000, new_p99_ms=10_000))
    assert not point.held
    assert any("dropped" in why for why in point.failed)


def test_late_sends_are_counted_against_the_step() -> None:
    out = StepOutcome(offered=100, seconds=1.0, scheduled=100, sent=100, late=5)
    out.by_class.add(HIT, 0.001)
    assert not judge("x", out, Bound(max_late_pct=1.0)).held
    assert judge("x", out, Bound(max_late_pct=10.0)).held
    out.errors["503"] = 1
    assert judge("x", out, Bound(max_late_pct=10.0)).failed == ["errors 1x503"]


# --- the search -------------------------------------------------------------------------------


def fake_point(rate: float, holds_up_to: float) -> RatePoint:
    p99 = 50.0 if rate <= holds_up_to else 500.0
    stats = {
        HIT: ClassStats(10, 1.0, p99),
        NEW: ClassStats(1, 10.0, p99),
        JOINED: ClassStats(0, 0, 0),
    }
    point = RatePoint("s", rate, rate, 1.0, 10, 10, 10, 1.0, p99, stats, {}, 0, 0, 0.1, 4)
    if p99 > 100:
        point.failed.append(f"p99 {p99:.0f} ms")
    return point


def test_the_search_walks_up_to_the_first_failure_and_can_halve_the_gap() -> None:
    steps = search(lambda r: fake_point(r, 350), Options(start=100, step=100))
    assert [p.offered for p in steps] == [100, 200, 300, 400]
    assert capacity(steps) is not None and capacity(steps).offered == 300  # type: ignore[union-attr]
    steps = search(lambda r: fake_point(r, 360), Options(start=100, step=100, refine=2))
    assert [p.offered for p in steps] == [100, 200, 300, 400, 350, 375]
    assert capacity(steps).offered == 350  # type: ignore[union-attr]
    # a rate that held above one that failed is not the capacity (the first failure bounds it)
    mixed = [fake_point(100, 1e9), fake_point(200, 0), fake_point(300, 1e9)]
    assert capacity(mixed).offered == 100  # type: ignore[union-attr]
    assert capacity([fake_point(100, 0)]) is None


def test_the_search_finds_the_capacity_of_a_server_that_has_one() -> None:
    """20 slots of 100 ms: 200 new photos a second. Below it the queue stays short; above it
    the queue grows by the excess every second, so the bound breaks within a step."""
    slots, service_s = 20, 0.1
    known = slots / service_s
    opts = Options(
        start=100,
        step=50,
        max_rate=400,
        seconds=2.5,
        warmup_s=0.5,
        settle_s=0.0,
        new_pct=100.0,  # every request a run: the stub's capacity is the system's
        bound=Bound(p99_ms=400, new_p99_ms=400, max_late_pct=5.0),
        client=ClientOptions(late_ms=50),
    )
    with stub_server(slots, service_s) as stub:
        work = Workload(photos(4), seed=3, label=3 * 10**9)
        steps = search(stepper(stub_system(stub), work, opts), opts)
    found = capacity(steps)
    assert found is not None, [p.failed for p in steps]
    assert known - opts.step <= found.offered <= known, [(p.offered, p.failed) for p in steps]
    failed = steps[-1]
    assert not failed.held and failed.offered <= known + opts.step
    assert any(why.startswith(("p99", "new p99")) for why in failed.failed), failed.failed
    for p in steps[:-1]:
        assert p.achieved == pytest.approx(p.offered, rel=0.25)
