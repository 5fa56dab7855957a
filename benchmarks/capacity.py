"""Capacity at a latency bound: the open-loop client (benchmarks/openloop.py) walks the offered
rate upward until a step breaks the bound, for the old design and then facestream in the same
run, with the same mix and the same client, and reports each one's capacity and their ratio.

A step holds when its overall p99 and its new photos' p99 are within the bound, nothing failed
(errors, timeouts), and the client kept pace (no send dropped, at most `max_late_pct` of sends
late): a rate the client could not deliver is not credited to the system. The capacity is the
highest rate that held before the first step that did not; with `refine`, the gap between the
two is halved that many times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from benchmarks.classes import NEW as NEW_PHOTO
from benchmarks.classes import ClassStats, summarize
from benchmarks.common import photos, table
from benchmarks.http import cpu_seconds
from benchmarks.loadgen import Workload
from benchmarks.olddesign.launch import old_service
from benchmarks.openloop import ClientOptions, StepOutcome, open_loop
from benchmarks.sidebyside import NEW, OLD, System, facestream_stack, old_system
from benchmarks.sidebyside import Options as SystemOptions
from benchmarks.stages import StageStats, breakdown, breakdown_table, scrape
from facestream.control.embedded import free_port


@dataclass(frozen=True)
class Bound:
    p99_ms: float = 100.0
    new_p99_ms: float = 250.0
    max_late_pct: float = 1.0  # sends more than ClientOptions.late_ms behind their arrival


@dataclass
class Options:
    start: float = 250.0
    step: float = 250.0
    max_rate: float = 20_000.0
    refine: int = 0
    seconds: float = 10.0
    warmup_s: float = 2.0
    settle_s: float = 1.0  # idle between steps
    new_pct: float = 2.2  # the published 200-user mix
    seed: int = 1
    bound: Bound = field(default_factory=Bound)
    client: ClientOptions = field(default_factory=ClientOptions)
    systems: SystemOptions = field(default_factory=SystemOptions)


@dataclass
class RatePoint:
    system: str
    offered: float
    achieved: float
    seconds: float
    scheduled: int
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    classes: dict[str, ClassStats]
    errors: dict[str, int]
    dropped: int
    late: int
    lag_p99_ms: float
    peak_connections: int
    cached: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)  # process group -> % of one core
    failed: list[str] = field(default_factory=list)  # why the bound did not hold
    # Where the time went, from the system's own stage histograms (benchmarks/stages.py).
    stages: list[StageStats] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.failed


def judge(system: str, out: StepOutcome, bound: Bound) -> RatePoint:
    overall = summarize(out.by_class.all())
    classes = out.by_class.stats()
    point = RatePoint(
        system,
        out.offered,
        out.achieved,
        out.seconds,
        out.scheduled,
        out.sent,
        overall.n,
        overall.p50_ms,
        overall.p99_ms,
        classes,
        out.errors,
        out.dropped,
        out.late,
        out.lag_p99_ms,
        out.peak_connections,
        out.cached,
    )
    if out.errors:
        point.failed.append("errors " + ", ".join(f"{n}x{k}" for k, n in out.errors.items()))
    if out.dropped:
        point.failed.append(f"client: {out.dropped} sends dropped, every connection busy")
    late_pct = 100 * out.late / out.sent if out.sent else 0.0
    if late_pct > bound.max_late_pct:
        point.failed.append(
            f"client: {late_pct:.1f} % of sends late, achieved {out.achieved:,.0f}/s"
        )
    if overall.n and overall.p99_ms > bound.p99_ms:
        point.failed.append(f"p99 {overall.p99_ms:,.0f} ms")
    new = classes[NEW_PHOTO]
    if new.n and new.p99_ms > bound.new_p99_ms:
        point.failed.append(f"new p99 {new.p99_ms:,.0f} ms")
    return point


def search(step_at: Callable[[float], RatePoint], opts: Options) -> list[RatePoint]:
    """Every step run, in order: start, start + step, ... up to the first that fails (or
    max_rate), then `refine` halvings between the last held rate and the first failed one."""
    if opts.start <= 0 or opts.step <= 0:
        raise ValueError(f"rates must be positive (start {opts.start}, step {opts.step})")
    points: list[RatePoint] = []
    held: float | None = None
    failed: float | None = None
    rate = opts.start
    while rate <= opts.max_rate:
        points.append(step_at(rate))
        if not points[-1].held:
            failed = rate
            break
        held = rate
        rate += opts.step
    for _ in range(opts.refine):
        if held is None or failed is None:
            break
        mid = (held + failed) / 2
        points.append(step_at(mid))
        if points[-1].held:
            held = mid
        else:
            failed = mid
    return points


def capacity(points: list[RatePoint]) -> RatePoint | None:
    """The highest rate that held below every rate that failed."""
    lowest_failed = min((p.offered for p in points if not p.held), default=float("inf"))
    held = [p for p in points if p.held and p.offered < lowest_failed]
    return max(held, key=lambda p: p.offered, default=None)


def stepper(system: System, work: Workload, opts: Options) -> Callable[[float], RatePoint]:
    probes = {"system": system.probes, "client": {"client": lambda: cpu_seconds(os.getpid())}}

    def step_at(rate: float) -> RatePoint:
        scraped = scrape(system.metrics)  # outside the CPU probes: the scrape is not the load
        before = {g: sum(f() for f in p.values()) for g, p in probes.items()}
        started = time.perf_counter()
        out = open_loop(
            system.target,
            work,
            rate,
            opts.seconds,
            opts.warmup_s,
            opts.new_pct / 100,
            seed=opts.seed + int(rate),
            opts=opts.client,
        )
        elapsed = time.perf_counter() - started
        point = judge(system.name, out, opts.bound)
        point.cpu_pct = {
            g: 100 * (sum(f() for f in p.values()) - before[g]) / elapsed for g, p in probes.items()
        }
        point.stages = breakdown(scrape(system.metrics), scraped) if system.metrics else []
        print(_progress(point), flush=True)  # steps are long: say where the search is
        time.sleep(opts.settle_s)
        return point

    return step_at


# Called with each system still running after its search, the workload it was sent and its
# capacity point (None: not even the first step held): the overload run (benchmarks/overload.py).
Then = Callable[[System, Workload, "RatePoint | None"], None]


def run(url: str, opts: Options, then: Then | None = None) -> tuple[str, list[RatePoint]]:
    """Both systems, the old design first, each on a flushed Redis and a fresh workload (same
    seed: the same sequence of new photos and repeats, photos new to each)."""
    bases = photos(40)
    points: list[RatePoint] = []
    sysopts = opts.systems
    port = free_port()
    with old_service(url, port, sysopts.old_workers, sysopts.old_threads) as master:
        old = old_system(url, port, master.pid)
        work = Workload(bases, opts.seed, 8 * 10**8)
        mine = search(stepper(old, work, opts), opts)
        points += mine
        if then:
            then(old, work, capacity(mine))
    with facestream_stack(url, sysopts) as system:
        work = Workload(bases, opts.seed, 8 * 10**8 + 5 * 10**7)
        mine = search(stepper(system, work, opts), opts)
        points += mine
        if then:
            then(system, work, capacity(mine))
    return report(points, opts), points


def _row(p: RatePoint) -> list[object]:
    errors = sum(p.errors.values())
    return [
        p.system,
        f"{p.offered:,.0f}",
        f"{p.scheduled / p.seconds:,.0f} / {p.achieved:,.0f}" if p.seconds else "-",
        f"{p.p50_ms:.1f} / {p.p99_ms:.1f}",
        p.classes["hit"].cell(),
        p.classes["new"].cell(),
        p.classes["joined"].cell(),
        f"{errors} / {p.dropped} / {p.late}",
        f"{p.lag_p99_ms:.1f}",
        f"{p.peak_connections:,}",
        " / ".join(f"{v:.0f}" for v in p.cpu_pct.values()) or "-",
        _verdict(p),
    ]


def _progress(p: RatePoint) -> str:
    return (
        f"{p.system} {p.offered:,.0f}/s (achieved {p.achieved:,.0f}/s): p99 {p.p99_ms:.1f} ms, "
        f"new p99 {p.classes[NEW_PHOTO].p99_ms:.1f} ms: {_verdict(p)}"
    )


def _verdict(p: RatePoint) -> str:
    return "held" if p.held else "; ".join(p.failed)


def summary(points: list[RatePoint], opts: Options) -> tuple[list[list[object]], str]:
    rows: list[list[object]] = []
    found: dict[str, float] = {}
    for name in (OLD, NEW):
        mine = [p for p in points if p.system == name]
        if not mine:
            continue
        cap = capacity(mine)
        found[name] = cap.offered if cap else 0.0
        above = [p for p in mine if not p.held]
        first_failed = min(above, key=lambda p: p.offered) if above else None
        rows.append(
            [
                name,
                f"{cap.offered:,.0f}/s" if cap else f"< {opts.start:,.0f}/s",
                f"{cap.p99_ms:.1f} / {cap.classes[NEW_PHOTO].p99_ms:.1f}" if cap else "-",
                (
                    f"{first_failed.offered:,.0f}/s: {_verdict(first_failed)}"
                    if first_failed
                    else f"none failed up to {opts.max_rate:,.0f}/s (a floor, not the capacity)"
                ),
            ]
        )
    ratio = ""
    if found.get(OLD) and NEW in found:
        ratio = f"facestream / old design at the bound: {found[NEW] / found[OLD]:.2f}x"
    return rows, ratio


def report(points: list[RatePoint], opts: Options) -> str:
    b, s = opts.bound, opts.systems
    setup = (
        f"Poisson arrivals, {opts.new_pct:g} % never-sent photos, the rest Zipf repeats; rate "
        f"from {opts.start:,.0f}/s up by {opts.step:,.0f}/s"
        + (f", {opts.refine} halvings after the first failure" if opts.refine else "")
        + f"; {opts.seconds:g} s per step after {opts.warmup_s:g} s of warm-up; bound: p99 <= "
        f"{b.p99_ms:g} ms, new photos p99 <= {b.new_p99_ms:g} ms, no errors, client late "
        f"(> {opts.client.late_ms:g} ms) <= {b.max_late_pct:g} % of sends; old design: gunicorn "
        f"{s.old_workers} x {s.old_threads}; facestream: {s.gateway_workers} gateway workers, "
        f"{s.detector_processes} detector process(es), model {s.model}, endpoint {s.endpoint}"
    )
    steps = table(
        f"Open loop, every step ({setup}). Latency from the scheduled arrival to the whole "
        "answer, per class 'p50 / p99 ms (answers)'; drawn: the Poisson schedule's own rate, "
        "sent: what the client got out; late: sends more than the late margin behind; CPU in "
        "% of one core",
        [
            "system",
            "offered/s",
            "drawn / sent /s",
            "p50 / p99 ms",
            "hit",
            "new",
            "joined",
            "errors / dropped / late",
            "client lag p99 ms",
            "connections",
            "CPU system / client",
            "bound",
        ],
        [_row(p) for p in points],
    )
    rows, ratio = summary(points, opts)
    cap = table(
        "Capacity at the bound",
        ["system", "capacity", "p99 / new p99 ms there", "first step that failed"],
        rows,
    )
    if ratio:
        print(ratio, flush=True)
    return "\n".join([steps, cap] + ([ratio] if ratio else []) + breakdowns(points, opts))


def breakdowns(points: list[RatePoint], opts: Options) -> list[str]:
    """Where a request's time went, per class, at each system's capacity point and at the first
    step that failed (what gave way), for the systems that measure it (facestream)."""
    out = []
    for name in (OLD, NEW):
        mine = [p for p in points if p.system == name and p.stages]
        cap = capacity(mine)
        failed = min((p for p in mine if not p.held), key=lambda p: p.offered, default=None)
        for point, what in ((cap, "capacity point"), (failed, "first step that failed")):
            if point is None:
                continue
            title = (
                f"Where a request's time goes, {name} at {point.offered:,.0f}/s ({what}): its "
                "stage histograms over the step, warm-up included (docs/performance.md); ms, "
                "p50 / p99 estimated from the buckets"
            )
            out.append(breakdown_table(title, point.stages, point.classes))
    return out


def to_json(points: list[RatePoint]) -> list[dict[str, object]]:
    return [{**asdict(p), "held": p.held} for p in points]
