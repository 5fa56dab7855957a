"""Overload and recovery (issue 27's targets): what a system does offered more than its capacity,
and how soon it holds the bound again once the load is back under it.

For a system and its capacity C (found by the search in the same run, benchmarks/capacity.py,
or given), one open-loop run on one connection pool, the phases back to back with no pause:

- before: `warmup_s` at `recover_factor` x C (judged as a capacity step: the "before" state);
- phase A: `seconds` at `factor` x C (default 10 s at 1.5x);
- phase B: `recover_s` at `recover_factor` x C (default 15 s at 0.8x).

facestream's v1 requests carry `timeout_ms` = `deadline_ms` (default: the new-photo bound), the
deadline its admission control refuses against (503 `overloaded`); the old design has no such
parameter and gets the same traffic. Every request of phases A and B is recorded (arrival time,
class, status, error code, latency; benchmarks/openloop.py Record).

Phase A: goodput = answers (200) within their bound (the p99 bound, 100 ms, for hits and joined
requests; the new-photo bound, 250 ms, for new photos) per second of the phase, counted by
arrival time, and as % of C; refusals per second and their latency; other errors by kind;
per-class p50 / p99 of the answers.

Phase B, per window of `window_s` by arrival time: the window holds when every request in it was
answered 200 (a refusal at 0.8x, after an overload, is a backlog not yet gone; an error or a
dropped send is a failure) with the answers' p99 and the new photos' p99 within the bound: the
capacity search's rule for a step, less its client clause (a window is too short for it). The
recovery time is the start t of the first window from which the bound holds again: no refusal
or error in any window from t on, and the answers that arrived from t to the end of the phase,
taken together, within the bound (`recovery_s` says why not every window alone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from benchmarks.capacity import Bound, RatePoint, judge
from benchmarks.classes import NEW, ClassStats
from benchmarks.common import photos
from benchmarks.loadgen import Workload, deadline_ms, with_deadline
from benchmarks.olddesign.launch import old_service
from benchmarks.openloop import ClientOptions, Phase, Record, StepOutcome, open_loop_phases
from benchmarks.overload_report import recovery_text, report
from benchmarks.sidebyside import NEW as FACESTREAM
from benchmarks.sidebyside import OLD, System, facestream_stack, old_system
from benchmarks.sidebyside import Options as SystemOptions
from facestream.control.embedded import free_port

REFUSED = "503 overloaded"  # what facestream's admission control answers


@dataclass
class Options:
    factor: float = 1.5  # phase A's rate, x C
    seconds: float = 10.0  # phase A
    recover_factor: float = 0.8  # phase B's rate (and the warm-up's), x C
    recover_s: float = 15.0  # phase B
    warmup_s: float = 5.0  # before phase A, at the recovery rate, on the same pool
    settle_s: float = 5.0  # idle before the warm-up (after the search's last, failed, step)
    window_s: float = 1.0
    deadline_ms: float | None = 250.0  # facestream's v1 timeout_ms; None: the target's own
    new_pct: float = 2.2
    seed: int = 1
    bound: Bound = field(default_factory=Bound)
    client: ClientOptions = field(default_factory=ClientOptions)
    systems: SystemOptions = field(default_factory=SystemOptions)
    capacities: dict[str, float] = field(default_factory=dict)  # given: system -> C (run())


def outcome(r: Record) -> str:
    """'200', '503 overloaded', '504 timeout', ... or the client's cause when no answer came
    ('timeout', 'connection', 'dropped')."""
    if not r.status:
        return r.cause
    return f"{r.status} {r.code}" if r.code else str(r.status)


def limit_ms(kind: str, bound: Bound) -> float:
    """The latency a request of this class must be answered within to count."""
    return bound.new_p99_ms if kind == NEW else bound.p99_ms


def in_time(r: Record, bound: Bound) -> bool:
    return r.status == 200 and 1000 * r.latency_s <= limit_ms(r.kind, bound)


def _p(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q)) if ms else 0.0


@dataclass
class Overload:
    """Phase A."""

    offered: float
    seconds: float
    capacity: float
    scheduled: int
    sent: int
    achieved: float
    late: int  # sends more than ClientOptions.late_ms behind their arrival
    answered: int
    good: int  # answered within the bound of its class
    refused: int
    refused_p50_ms: float
    refused_p99_ms: float
    errors: dict[str, int]  # every other failure, by kind (outcome()), dropped sends included
    classes: dict[str, ClassStats]  # the answers'
    peak_connections: int

    @property
    def goodput(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def goodput_pct(self) -> float:
        return 100 * self.goodput / self.capacity if self.capacity else 0.0


def overload_phase(out: StepOutcome, capacity: float, bound: Bound) -> Overload:
    records = out.records or []
    refused = [1000 * r.latency_s for r in records if outcome(r) == REFUSED]
    errors: dict[str, int] = {}
    for r in records:
        if r.status != 200 and outcome(r) != REFUSED:
            errors[outcome(r)] = errors.get(outcome(r), 0) + 1
    return Overload(
        out.offered,
        out.seconds,
        capacity,
        out.scheduled,
        out.sent,
        out.achieved,
        out.late,
        sum(r.status == 200 for r in records),
        sum(in_time(r, bound) for r in records),
        len(refused),
        _p(refused, 50),
        _p(refused, 99),
        errors,
        out.by_class.stats(),
        out.peak_connections,
    )


@dataclass
class Window:
    """One window of phase B, its requests by arrival time."""

    start_s: float
    arrivals: int
    answered: int
    p99_ms: float  # the answers'
    new: int  # new photos answered
    new_p99_ms: float
    refused: int
    errors: int  # other failures
    failed: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.failed


def windows(records: list[Record], seconds: float, window_s: float, bound: Bound) -> list[Window]:
    """Phase B cut into windows of `window_s` from its start (the last one shorter when
    `seconds` is not a multiple), each judged by the bound."""
    n = max(1, math.ceil(seconds / window_s - 1e-9))
    cut: list[list[Record]] = [[] for _ in range(n)]
    for r in records:
        cut[min(max(int(r.at_s // window_s), 0), n - 1)].append(r)
    out = []
    for i, mine in enumerate(cut):
        answered = [1000 * r.latency_s for r in mine if r.status == 200]
        new = [1000 * r.latency_s for r in mine if r.status == 200 and r.kind == NEW]
        refused = sum(outcome(r) == REFUSED for r in mine)
        w = Window(
            i * window_s,
            len(mine),
            len(answered),
            _p(answered, 99),
            len(new),
            _p(new, 99),
            refused,
            len(mine) - len(answered) - refused,
        )
        if w.refused:
            w.failed.append(f"{w.refused} refused")
        if w.errors:
            kinds: dict[str, int] = {}
            for r in mine:
                if r.status != 200 and outcome(r) != REFUSED:
                    kinds[outcome(r)] = kinds.get(outcome(r), 0) + 1
            w.failed.append("errors " + ", ".join(f"{k} x{v}" for k, v in kinds.items()))
        if answered and w.p99_ms > bound.p99_ms:
            w.failed.append(f"p99 {w.p99_ms:,.0f} ms")
        if new and w.new_p99_ms > bound.new_p99_ms:
            w.failed.append(f"new p99 {w.new_p99_ms:,.0f} ms")
        out.append(w)
    return out


def recovery_s(records: list[Record], ws: list[Window], bound: Bound) -> float | None:
    """The start t of the first window from which the bound holds again: every request that
    arrived from t on was answered 200 (no refusal, no error), and those answers, taken
    together, have their p99 and their new photos' p99 within the bound, as a capacity step's
    are judged. One 1-s window's p99 is its tenth-worst answer at 1,000/s (~20 new photos):
    judged alone, a window fails now and then at any steady rate; a backlog left by the
    overload fails every tail that starts before it is gone. None: not within the phase."""
    for i, w in enumerate(ws):
        if any(later.refused or later.errors for later in ws[i:]):
            continue
        tail = [r for r in records if r.at_s >= w.start_s and r.status == 200]
        answered = [1000 * r.latency_s for r in tail]
        new = [1000 * r.latency_s for r in tail if r.kind == NEW]
        if answered and _p(answered, 99) > bound.p99_ms:
            continue
        if new and _p(new, 99) > bound.new_p99_ms:
            continue
        return w.start_s
    return None


@dataclass
class Result:
    system: str
    capacity: float
    deadline_ms: int | None  # the timeout_ms sent; None: the route has no such parameter
    before: RatePoint | None  # the warm-up at the recovery rate
    overload: Overload
    after: RatePoint  # phase B as a whole
    windows: list[Window]
    recovery_s: float | None
    window_s: float
    elapsed_s: float = 0.0  # the whole run, the drain of what was in flight included


def measure(system: System, work: Workload, capacity: float, opts: Options) -> Result:
    """The warm-up and phases A and B against a running system, with the workload it has been
    sent so far (its classes know what the system has cached)."""
    target = with_deadline(system.target, opts.deadline_ms)
    low, high = opts.recover_factor * capacity, opts.factor * capacity
    phases = [Phase(low, opts.warmup_s)] if opts.warmup_s > 0 else []
    phases += [Phase(high, opts.seconds, records=True), Phase(low, opts.recover_s, records=True)]
    print(
        f"{system.name}: overload at {high:,.0f}/s for {opts.seconds:g} s, then "
        f"{low:,.0f}/s for {opts.recover_s:g} s (C = {capacity:,.0f}/s)",
        flush=True,
    )
    time.sleep(opts.settle_s)
    started = time.perf_counter()
    outs = open_loop_phases(target, work, phases, opts.new_pct / 100, opts.seed + 77, opts.client)
    elapsed = time.perf_counter() - started
    before = judge(system.name, outs[0], opts.bound) if opts.warmup_s > 0 else None
    a, b = outs[-2], outs[-1]
    ws = windows(b.records or [], b.seconds, opts.window_s, opts.bound)
    result = Result(
        system.name,
        capacity,
        deadline_ms(target),
        before,
        overload_phase(a, capacity, opts.bound),
        judge(system.name, b, opts.bound),
        ws,
        recovery_s(b.records or [], ws, opts.bound),
        opts.window_s,
        elapsed,
    )
    print(progress(result), flush=True)
    return result


def progress(r: Result) -> str:
    a = r.overload
    return (
        f"{r.system}: goodput {a.goodput:,.0f}/s ({a.goodput_pct:.0f} % of C), refused "
        f"{a.refused / a.seconds:,.0f}/s (p99 {a.refused_p99_ms:.1f} ms); recovered: "
        f"{recovery_text(r)}"
    )


def run(url: str, opts: Options) -> tuple[str, list[Result]]:
    """Alone, with given capacities (`opts.capacities`): each system started fresh, the old
    design first; the warm-up fills its cache."""
    bases = photos(40)
    results = []
    for name in (OLD, FACESTREAM):
        if opts.capacities.get(name):
            with _started(name, url, opts.systems) as system:
                work = Workload(bases, opts.seed, 7 * 10**8 + (5 * 10**7 if name == OLD else 0))
                results.append(measure(system, work, opts.capacities[name], opts))
    return report(results, opts), results


@contextmanager
def _started(name: str, url: str, sysopts: SystemOptions) -> Iterator[System]:
    if name == FACESTREAM:
        with facestream_stack(url, sysopts) as system:
            yield system
        return
    port = free_port()
    with old_service(url, port, sysopts.old_workers, sysopts.old_threads) as master:
        yield old_system(url, port, master.pid)


def to_json(results: list[Result]) -> list[dict[str, object]]:
    """Without the requests' records (tens of thousands); with each verdict spelled out."""
    out = []
    for r in results:
        d = asdict(r)
        d["overload"].update(goodput=r.overload.goodput, goodput_pct=r.overload.goodput_pct)
        for w, wd in zip(r.windows, d["windows"], strict=True):
            wd["held"] = w.held
        for key, point in (("before", r.before), ("after", r.after)):
            if point is not None:
                d[key]["held"] = point.held
        out.append(d)
    return out
