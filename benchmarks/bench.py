"""facestream benchmarks: prints tables (not a timed test). From the repository root:

    python -m benchmarks.bench [--only http,openloop,hit,miss,misses,burst,scaling,cluster]
                               [--out FILE]
    python -m benchmarks.bench --only overload --overload-capacity OLD,NEW

Each run starts its own redis-server; run on an otherwise idle machine and compare ratios
within one run. `http` runs facestream and the old design rebuilt (benchmarks/olddesign) side
by side in a closed loop; `openloop` finds each one's capacity at a latency bound with Poisson
arrivals (benchmarks/capacity.py), then runs each at 1.5x its capacity and back at 0.8x
(benchmarks/overload.py; `--no-overload` leaves it out, `--only overload` runs it alone at given
capacities). Either draws benchmarks/out/http.png (--plot elsewhere), with the points beside it
as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from benchmarks import capacity, overload, overload_report, sidebyside, stream
from benchmarks.common import machine, redis_server
from benchmarks.loadgen import Workload
from benchmarks.openloop import ClientOptions

SCENARIOS = ["http", "openloop", "hit", "miss", "misses", "burst", "scaling", "cluster"]
ALONE = ["overload"]  # not in the default: it needs capacities (openloop runs it after its search)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", help="also write the tables to this file")
    http_opts = sidebyside.Options()
    group = parser.add_argument_group("http (side by side with the old design)")
    group.add_argument("--seconds", type=float, default=http_opts.seconds, help="per point")
    group.add_argument("--warmup", type=float, default=http_opts.warmup_s, help="s per point")
    group.add_argument("--users", default=",".join(map(str, http_opts.users)))
    group.add_argument("--gateway-workers", type=int, default=http_opts.gateway_workers)
    group.add_argument(
        "--detectors",
        type=int,
        default=http_opts.detector_processes,
        help="facestream detector processes (default: one per core, as `facestream up`)",
    )
    group.add_argument(
        "--facestream-model",
        default=http_opts.model,
        help="facestream's FACESTREAM_MODEL (the old design keeps its fp32 model)",
    )
    group.add_argument("--model-dir", default=None, help="FACESTREAM_MODEL_DIR for that model")
    group.add_argument(
        "--endpoint",
        choices=["v1", "compat"],
        default=http_opts.endpoint,
        help="facestream's raw-body /v1/detect?wait=true or its multipart /face-detection",
    )
    group.add_argument("--old-workers", type=int, default=http_opts.old_workers)
    group.add_argument("--old-threads", type=int, default=http_opts.old_threads)
    group.add_argument(
        "--rounds",
        type=int,
        default=http_opts.rounds,
        help="rounds per point, the two systems' order swapped each round; medians reported",
    )
    group.add_argument("--plot", type=Path, default=http_opts.plot, help="PNG to write")
    _openloop_args(parser)
    _overload_args(parser)
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS) - set(ALONE)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.rate_start <= 0 or args.rate_step <= 0:
        parser.error("--rate-start and --rate-step must be positive")
    given = _capacities(parser, args.overload_capacity)
    if "overload" in chosen and not given:
        parser.error("--only overload needs --overload-capacity OLD,NEW (0 leaves one out)")
    header = (
        f"facestream benchmark, {datetime.date.today()}, {machine()}\n"
        f"command: python -m benchmarks.bench {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(header, flush=True)
    tables = [header]
    closed: list[sidebyside.Point] = []
    rates: list[capacity.RatePoint] = []
    overloads: list[overload.Result] = []
    with redis_server() as url:
        for name in chosen:
            if name in ("http", "openloop", "overload"):
                opts = sidebyside.Options(
                    seconds=args.seconds,
                    warmup_s=args.warmup,
                    users=tuple(int(u) for u in args.users.split(",")),
                    gateway_workers=args.gateway_workers,
                    detector_processes=args.detectors,
                    endpoint=args.endpoint,
                    old_workers=args.old_workers,
                    old_threads=args.old_threads,
                    rounds=args.rounds,
                    plot=args.plot,
                    model=args.facestream_model,
                    model_dir=args.model_dir,
                )
                over = _overload_options(args, given, opts)
                if name == "http":
                    text, closed = sidebyside.run(url, opts)
                elif name == "overload":
                    text, found = overload.run(url, over)
                    overloads += found
                else:
                    found = []
                    then = None if args.no_overload else _after_search(over, found)
                    text, rates = capacity.run(url, _openloop_options(args, opts), then)
                    if found:
                        text += "\n" + overload_report.report(found, over)
                    overloads += found
                tables.append(text)
            elif name == "hit":
                tables.append(stream.bench_hit_path(url))
            elif name == "miss":
                tables.append(stream.bench_miss_path(url))
            elif name == "misses":
                from benchmarks import misses

                tables.append(misses.bench_cheaper_misses(url))
            elif name == "cluster":
                from benchmarks import cluster

                tables.append(cluster.bench_cluster())
            elif name == "burst":
                tables.append(stream.bench_single_flight(url))
            else:
                tables.append(stream.bench_scaling(url))
    if closed or rates or overloads:
        bound = _openloop_options(args).bound
        sidebyside.save(closed, args.plot, rates, bound, overload.to_json(overloads))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(tables) + "\n")
    return 0


def _openloop_args(parser: argparse.ArgumentParser) -> None:
    d = capacity.Options()
    group = parser.add_argument_group(
        "openloop (capacity at a latency bound, Poisson arrivals; also uses the http group's "
        "system options)"
    )
    group.add_argument("--rate-start", type=float, default=d.start, help="first rate, per s")
    group.add_argument("--rate-step", type=float, default=d.step, help="added per step")
    group.add_argument("--rate-max", type=float, default=d.max_rate, help="stop here")
    group.add_argument(
        "--rate-refine",
        type=int,
        default=d.refine,
        help="halvings between the last rate held and the first failed",
    )
    group.add_argument("--rate-seconds", type=float, default=d.seconds, help="per step")
    group.add_argument("--rate-warmup", type=float, default=d.warmup_s, help="s per step")
    group.add_argument("--new-pct", type=float, default=d.new_pct, help="never-sent photos, %%")
    group.add_argument("--bound-p99-ms", type=float, default=d.bound.p99_ms)
    group.add_argument("--bound-new-p99-ms", type=float, default=d.bound.new_p99_ms)
    group.add_argument(
        "--max-late-pct",
        type=float,
        default=d.bound.max_late_pct,
        help="a step whose client sent more of its requests late does not hold",
    )
    group.add_argument("--late-ms", type=float, default=d.client.late_ms)
    group.add_argument("--max-connections", type=int, default=d.client.max_connections)


def _openloop_options(
    args: argparse.Namespace, systems: sidebyside.Options | None = None
) -> capacity.Options:
    return capacity.Options(
        start=args.rate_start,
        step=args.rate_step,
        max_rate=args.rate_max,
        refine=args.rate_refine,
        seconds=args.rate_seconds,
        warmup_s=args.rate_warmup,
        new_pct=args.new_pct,
        bound=capacity.Bound(args.bound_p99_ms, args.bound_new_p99_ms, args.max_late_pct),
        client=ClientOptions(args.max_connections, args.late_ms),
        systems=systems or sidebyside.Options(),
    )


def _overload_args(parser: argparse.ArgumentParser) -> None:
    d = overload.Options()
    group = parser.add_argument_group(
        "overload and recovery (after openloop's search, or alone with --only overload)"
    )
    group.add_argument("--no-overload", action="store_true", help="openloop: the search only")
    group.add_argument(
        "--overload-capacity",
        metavar="OLD,NEW",
        help="capacities (requests/s) of the old design and facestream to run at, instead of "
        "the search's; 0 leaves a system out",
    )
    group.add_argument("--overload-factor", type=float, default=d.factor, help="x capacity")
    group.add_argument("--overload-seconds", type=float, default=d.seconds)
    group.add_argument("--recover-factor", type=float, default=d.recover_factor)
    group.add_argument("--recover-seconds", type=float, default=d.recover_s)
    group.add_argument("--recover-window", type=float, default=d.window_s, help="seconds")
    group.add_argument(
        "--overload-warmup",
        type=float,
        default=d.warmup_s,
        help="seconds at the recovery rate before the overload, on the same connections",
    )
    group.add_argument(
        "--overload-settle", type=float, default=d.settle_s, help="idle seconds before that"
    )
    group.add_argument(
        "--deadline-ms",
        type=float,
        default=d.deadline_ms,
        help="facestream's v1 timeout_ms in these runs (0: the search's 60000)",
    )


def _capacities(parser: argparse.ArgumentParser, text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        old, new = (float(x) for x in text.split(","))
    except ValueError:
        parser.error(f"--overload-capacity wants OLD,NEW in requests/s, not {text!r}")
    return {k: v for k, v in ((sidebyside.OLD, old), (sidebyside.NEW, new)) if v > 0}


def _overload_options(
    args: argparse.Namespace, given: dict[str, float], systems: sidebyside.Options
) -> overload.Options:
    search = _openloop_options(args, systems)
    return overload.Options(
        factor=args.overload_factor,
        seconds=args.overload_seconds,
        recover_factor=args.recover_factor,
        recover_s=args.recover_seconds,
        warmup_s=args.overload_warmup,
        settle_s=args.overload_settle,
        window_s=args.recover_window,
        deadline_ms=args.deadline_ms or None,
        new_pct=args.new_pct,
        seed=search.seed,
        bound=search.bound,
        client=search.client,
        systems=systems,
        capacities=given,
    )


def _after_search(opts: overload.Options, into: list[overload.Result]) -> capacity.Then:
    """The overload run for each system right after its search, at its capacity (or the one
    given), into `into`."""

    def then(system: sidebyside.System, work: Workload, found: capacity.RatePoint | None) -> None:
        rate = opts.capacities.get(system.name) or (found.offered if found else 0.0)
        if not rate:
            print(f"{system.name}: no capacity found, no overload run", flush=True)
            return
        into.append(overload.measure(system, work, rate, opts))

    return then


if __name__ == "__main__":
    sys.exit(main())
