"""facestream benchmarks: prints tables (not a timed test). From the repository root:

    python -m benchmarks.bench [--only hit,miss,burst,scaling,http,cluster] [--out FILE]

Each run starts its own redis-server; run on an otherwise idle machine and compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import datetime
import sys

from benchmarks import stream
from benchmarks.common import machine, redis_server

SCENARIOS = ["http", "hit", "miss", "burst", "scaling", "cluster"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", help="also write the tables to this file")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    header = (
        f"facestream benchmark, {datetime.date.today()}, {machine()}\n"
        f"command: python -m benchmarks.bench --only {','.join(chosen)}"
    )
    print(header, flush=True)
    tables = [header]
    with redis_server() as url:
        for name in chosen:
            if name == "http":
                from benchmarks import http

                tables.append(http.bench_published_scenario(url))
            elif name == "hit":
                tables.append(stream.bench_hit_path(url))
            elif name == "miss":
                tables.append(stream.bench_miss_path(url))
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
