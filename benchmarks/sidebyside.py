"""The published scenario, facestream against the old design rebuilt (benchmarks/olddesign),
back to back at each concurrency with the same closed-loop client, photo pool and miss rate.

Per point: the old design's Redis is flushed (its cache, Bloom filter and counter); facestream
gets a flushed Redis and freshly started detectors and gateway (its streams, groups, cache and
Bloom filter are all cold). Every request body is either a never-sent photo (probability: one
minus the published hit rate) or a repeat of one sent earlier in the same point.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis

from benchmarks.bound import MissFloor, bound_table, measure_floor
from benchmarks.classes import CLASSES, ClassStats, cell, merge_rounds
from benchmarks.common import detectors, photos, reset, table
from benchmarks.http import PUBLISHED, cpu_seconds, gateway, tree_cpu
from benchmarks.loadgen import (
    Outcome,
    Target,
    Workload,
    closed_loop,
    compat_target,
    send_each,
    v1_target,
)
from benchmarks.olddesign.app import Config
from benchmarks.olddesign.launch import old_service
from facestream.control.embedded import free_port

if TYPE_CHECKING:
    from benchmarks.capacity import Bound, RatePoint

OLD = "old design"
NEW = "facestream"
ALL_HITS_USERS = (10, 200)
ALL_HITS_POOL = 40
TARGET = 2.5  # facestream's QPS over the old design's, at every concurrency (issue #15)


@dataclass
class Options:
    seconds: float = 10.0
    warmup_s: float = 2.0
    users: tuple[int, ...] = tuple(PUBLISHED)
    gateway_workers: int = 2
    detector_processes: int = os.cpu_count() or 1  # what `facestream up` starts
    intra_op_threads: int = 1  # onnxruntime threads per detector's model call
    endpoint: str = "v1"  # or "compat": facestream's drop-in POST /face-detection
    old_workers: int = 5
    old_threads: int = 4
    # Rounds per point, the two systems' order swapped each round: on a machine whose speed
    # drifts (a shared host), one back-to-back pair can favour either; the report takes medians.
    rounds: int = 1
    plot: Path = Path(__file__).parent / "out" / "http.png"
    # facestream's model (FACESTREAM_MODEL; the old design keeps its fp32 one): `builtin-int8`
    # needs `facestream model quantize builtin` into `model_dir` first.
    model: str = "builtin"
    model_dir: str | None = None


@dataclass
class System:
    name: str
    target: Target
    probes: dict[str, Callable[[], float]]  # process -> CPU seconds so far
    inferences: Callable[[], int] | None = None  # model runs so far, where the system counts
    pids: dict[str, list[int]] = field(default_factory=dict)  # process group -> its pids
    metrics: list[str] = field(default_factory=list)  # its /metrics pages (benchmarks/stages.py)


@dataclass
class Point:
    scenario: str
    system: str
    users: int
    miss_pct: float
    qps: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    hit_pct: float | None
    errors: dict[int, int]
    cpu_us: dict[str, float] = field(default_factory=dict)
    # hit / new / joined (benchmarks/classes.py), as the client classed each request
    classes: dict[str, ClassStats] = field(default_factory=dict)


def redis_pid(url: str) -> int:
    # redis-server retitles itself "redis-server 127.0.0.1:<port>"
    title = f"redis-server 127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}"
    found = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def measure(
    system: System, scenario: str, users: int, miss: float, work: Workload, opts: Options
) -> Point:
    if opts.warmup_s:
        closed_loop(system.target, work, users, miss, opts.warmup_s)
    probes = {**system.probes, "client": lambda: cpu_seconds(os.getpid())}
    before = {k: f() for k, f in probes.items()}
    runs_before = system.inferences() if system.inferences else 0
    out: Outcome = closed_loop(system.target, work, users, miss, opts.seconds)
    after = {k: f() for k, f in probes.items()}
    n = max(1, len(out.latencies))
    ms = np.array(out.latencies or [0.0]) * 1000
    if system.inferences:
        hit: float | None = 100 * (1 - (system.inferences() - runs_before) / n)
    elif system.target.multipart:
        hit = None  # the old answer shape does not say whether it came from the cache
    else:
        hit = 100 * out.cached / n
    return Point(
        scenario,
        system.name,
        users,
        100 * miss,
        len(out.latencies) / out.elapsed,
        float(ms.mean()),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        hit,
        out.errors,
        {k: (after[k] - before[k]) / n * 1e6 for k in probes},
        out.by_class.stats(),
    )


@contextmanager
def facestream_stack(url: str, opts: Options) -> Iterator[System]:
    """`facestream up`'s processes on a flushed Redis: detectors (one onnxruntime thread each)
    and the gateway; the jsonl sink is left out (it is not on the request path)."""
    reset(url)
    rpid = redis_pid(url)
    ports = [free_port() for _ in range(opts.detector_processes)]
    with (
        detectors(
            url,
            opts.detector_processes,
            metrics_ports=ports,
            FACESTREAM_INTRA_OP_THREADS=opts.intra_op_threads,
            FACESTREAM_MODEL=opts.model,
            **({"FACESTREAM_MODEL_DIR": opts.model_dir} if opts.model_dir else {}),
        ) as dets,
        gateway(url, opts.gateway_workers) as (port, gw),
    ):
        target = v1_target(port) if opts.endpoint == "v1" else compat_target(port)
        yield System(
            NEW,
            target,
            {
                "gateway": lambda: tree_cpu(gw.pid),
                "detectors": lambda: sum(cpu_seconds(d.pid) for d in dets),
                "redis": lambda: cpu_seconds(rpid),
            },
            pids={"gateway": [gw.pid], "detectors": [d.pid for d in dets], "redis": [rpid]},
            # The gateway's page sums its workers' (ingest/http/serve.py).
            metrics=[f"http://127.0.0.1:{p}/metrics" for p in [port, *ports]],
        )


def old_system(url: str, port: int, master_pid: int) -> System:
    """The running old service, its Redis flushed."""
    client = redis.Redis.from_url(url)
    client.flushall()
    rpid = redis_pid(url)

    def inferences() -> int:
        return int(client.get(Config(url).inferences_key) or 0)

    return System(
        OLD,
        compat_target(port),
        {"workers": lambda: tree_cpu(master_pid), "redis": lambda: cpu_seconds(rpid)},
        inferences,
    )


def run(url: str, opts: Options) -> tuple[str, list[Point]]:
    floor = measure_floor()  # first, on the idle machine
    bases = photos(ALL_HITS_POOL)
    points: list[Point] = []
    port = free_port()
    with old_service(url, port, opts.old_workers, opts.old_threads) as master:
        for i, users in enumerate(opts.users):
            miss = 1 - PUBLISHED[users][2] / 100 if users in PUBLISHED else 0.05
            for r in range(opts.rounds):
                # Same seed for both systems in a round: the same sequence of new / repeat
                # draws; labels keep every round's photos new to both.
                seed, label = users + 1000 * r, i * 10**7 + r * 4 * 10**5
                for name in (OLD, NEW) if r % 2 == 0 else (NEW, OLD):
                    work = Workload(bases, seed, label + (0 if name == OLD else 2 * 10**5))
                    with _maybe_stack(
                        url,
                        opts,
                        (lambda: old_system(url, port, master.pid)) if name == OLD else None,
                    ) as sut:
                        points.append(measure(sut, "published", users, miss, work, opts))
        label = len(opts.users) * 10**7
        for system_of in (lambda: old_system(url, port, master.pid), None):
            with _maybe_stack(url, opts, system_of) as system:
                work = Workload(bases, 1, label)
                label += 10**6
                send_each(system.target, [work.fresh() for _ in range(ALL_HITS_POOL)])
                work.classes.answered.update(range(len(work.sent)))
                for users in ALL_HITS_USERS:
                    points.append(measure(system, "all hits", users, 0.0, work, opts))
    return report(points, opts, floor), points


@contextmanager
def _maybe_stack(
    url: str, opts: Options, system_of: Callable[[], System] | None
) -> Iterator[System]:
    if system_of is not None:
        yield system_of()
        return
    with facestream_stack(url, opts) as system:
        yield system


def _pair(points: list[Point], scenario: str, users: int) -> tuple[Point, Point]:
    found = {p.system: p for p in points if p.scenario == scenario and p.users == users}
    return found[OLD], found[NEW]


def medians(points: list[Point]) -> list[Point]:
    """One point per scenario, system and users: each figure the median of its rounds
    (errors summed)."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.scenario, p.system, p.users), []).append(p)
    out = []
    for (scenario, system, users), group in groups.items():
        hits = [p.hit_pct for p in group if p.hit_pct is not None]
        errors: dict[int, int] = {}
        for p in group:
            for status, n in p.errors.items():
                errors[status] = errors.get(status, 0) + n
        out.append(
            Point(
                scenario,
                system,
                users,
                group[0].miss_pct,
                med([p.qps for p in group]),
                med([p.mean_ms for p in group]),
                med([p.p50_ms for p in group]),
                med([p.p99_ms for p in group]),
                med(hits) if hits else None,
                errors,
                {k: med([p.cpu_us[k] for p in group]) for k in group[0].cpu_us},
                merge_rounds([p.classes for p in group]),
            )
        )
    return out


def med(values: list[float]) -> float:
    return float(np.median(values))


def round_ratios(points: list[Point], users: int) -> list[float]:
    """fs / old QPS of each round of one published point, in round order."""
    of = [p for p in points if p.scenario == "published" and p.users == users]
    old = [p.qps for p in of if p.system == OLD]
    new = [p.qps for p in of if p.system == NEW]
    return [n / o for o, n in zip(old, new, strict=True) if o]


def _hit(p: Point) -> str:
    return "-" if p.hit_pct is None else f"{p.hit_pct:.1f}"


def _errors(p: Point) -> str:
    return ", ".join(f"{n}x{s}" for s, n in sorted(p.errors.items())) or "0"


def report(points: list[Point], opts: Options, floor: MissFloor | None = None) -> str:
    path = (
        "/v1/detect?wait=true (raw body)"
        if opts.endpoint == "v1"
        else "/face-detection (multipart)"
    )
    setup = (
        f"{opts.seconds:g} s per point after {opts.warmup_s:g} s of warm-up; old design: "
        f"gunicorn {opts.old_workers} gthread workers x {opts.old_threads} threads; facestream: "
        f"{opts.gateway_workers} gateway workers, {opts.detector_processes} detector "
        f"process(es), POST {path}"
        "; one onnxruntime thread per process; client on the same machine"
    )
    if opts.rounds > 1:
        setup += (
            f"; {opts.rounds} rounds per point, the systems' order swapped each round, each "
            "figure the median of its rounds, fs / old the median of the rounds' own ratios, "
            "their range in brackets"
        )
    rows, cpu_rows, class_rows = [], [], []
    merged = medians(points)
    for users in opts.users:
        old, new = _pair(merged, "published", users)
        ratios = round_ratios(points, users)
        if len(ratios) > 1:  # each round's pair ran minutes apart at most: compare those
            ratio = f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        else:
            ratio = f"{new.qps / old.qps:.2f}x" if old.qps else "-"
        rows.append(
            [
                f"{users} ({old.miss_pct:.1f} % new)",
                f"{old.qps:,.0f} / {new.qps:,.0f}",
                ratio,
                f"{old.mean_ms:.1f} / {new.mean_ms:.1f}",
                f"{old.p50_ms:.1f} / {new.p50_ms:.1f}",
                f"{old.p99_ms:.1f} / {new.p99_ms:.1f}",
                f"{_hit(old)} / {_hit(new)}",
                f"{_errors(old)} / {_errors(new)}",
            ]
        )
        class_rows += [
            [users, p.system, *(cell(p.classes, k) for k in CLASSES)] for p in (old, new)
        ]
        cpu_rows.append(
            [
                users,
                *(f"{old.cpu_us[k]:.0f}" for k in ("workers", "redis", "client")),
                f"{sum(old.cpu_us.values()):.0f}",
                *(f"{new.cpu_us[k]:.0f}" for k in ("gateway", "detectors", "redis", "client")),
                f"{sum(new.cpu_us.values()):.0f}",
            ]
        )
    a = table(
        f"Published scenario, old design / facestream side by side ({setup})",
        [
            "users",
            "QPS old / fs",
            "fs / old",
            "mean ms",
            "p50 ms",
            "p99 ms",
            "hit %",
            "errors",
        ],
        rows,
    )
    by_class = table(
        "Latency by class, same points, 'p50 / p99 ms (answers)': hit = a photo answered before, "
        "new = a never-sent photo, joined = a photo whose earlier request was still in flight",
        ["users", "system", *CLASSES],
        class_rows,
    )
    b = table(
        "CPU microseconds per answered request, by process (same points)",
        [
            "users",
            "old: workers",
            "redis",
            "client",
            "all",
            "fs: gateway",
            "detectors",
            "redis",
            "client",
            "all",
        ],
        cpu_rows,
    )
    hits = [p for p in merged if p.scenario == "all hits"]
    c = table(
        f"All hits ({ALL_HITS_POOL} photos, each sent once before)",
        ["users", "system", "QPS", "mean ms", "p50 ms", "p99 ms", "CPU us / request", "errors"],
        [
            [
                p.users,
                p.system,
                f"{p.qps:,.0f}",
                f"{p.mean_ms:.1f}",
                f"{p.p50_ms:.1f}",
                f"{p.p99_ms:.1f}",
                f"{sum(p.cpu_us.values()):.0f}",
                _errors(p),
            ]
            for p in hits
        ],
    )
    parts = [a, by_class, b, c]
    fs_hits = [sum(p.cpu_us.values()) for p in hits if p.system == NEW]
    if floor is not None and fs_hits:
        rows_of = [_pair(merged, "published", u)[0] for u in opts.users]
        parts.append(
            bound_table(
                floor, [(p.users, p.miss_pct, p.qps) for p in rows_of], min(fs_hits), TARGET
            )
        )
    return "\n".join(parts)


def save(
    points: list[Point],
    png: Path,
    rates: list[RatePoint] | None = None,
    bound: Bound | None = None,
    overload: list[dict[str, object]] | None = None,
) -> None:
    """The picture (benchmarks/plot.py, of the rounds' medians, and the open loop's p99
    against offered rate when `rates`) and the points as JSON beside it: the closed loop's
    rounds in <name>.json, the open loop's steps in <name>.openloop.json, the overload and
    recovery runs (benchmarks/overload.py to_json) in <name>.overload.json."""
    from benchmarks.capacity import to_json
    from benchmarks.plot import plot

    png.parent.mkdir(parents=True, exist_ok=True)
    plot(medians(points), png, rates, bound)
    written = [png] if points or rates else []  # plot draws nothing without either
    if points:
        written.append(png.with_suffix(".json"))
        written[-1].write_text(json.dumps([asdict(p) for p in points], indent=1))
    if rates:
        written.append(png.with_suffix(".openloop.json"))
        written[-1].write_text(json.dumps(to_json(rates), indent=1))
    if overload:
        written.append(png.with_suffix(".overload.json"))
        written[-1].write_text(json.dumps(overload, indent=1))
    print(f"\nwrote {', '.join(map(str, written))}", flush=True)
