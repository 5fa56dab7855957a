"""facestream benchmarks: prints tables (not a timed test). From the repository root:

    python -m benchmarks.bench [--only hit,miss,misses,burst,scaling,http,cluster] [--out FILE]

Each run starts its own redis-server; run on an otherwise idle machine and compare ratios
within one run. `http` runs facestream and the old design rebuilt (benchmarks/olddesign) side
by side and draws benchmarks/out/http.png (--plot elsewhere), with the points beside it as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from benchmarks import sidebyside, stream
from benchmarks.common import machine, redis_server

SCENARIOS = ["http", "hit", "miss", "misses", "burst", "scaling", "cluster"]


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
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    header = (
        f"facestream benchmark, {datetime.date.today()}, {machine()}\n"
        f"command: python -m benchmarks.bench {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(header, flush=True)
    tables = [header]
    with redis_server() as url:
        for name in chosen:
            if name == "http":
                from benchmarks import http

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
                )
                tables.append(http.bench_published_scenario(url, opts))
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
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
