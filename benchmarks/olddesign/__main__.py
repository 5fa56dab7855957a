"""python -m benchmarks.olddesign --redis-url URL [--port 8090] [--workers 5] [--threads 4]

Runs the rebuilt old service in the foreground until Ctrl-C (loopback only)."""

from __future__ import annotations

import argparse
import contextlib

from benchmarks.olddesign.launch import THREADS, WORKERS, old_service


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.olddesign", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    with (
        contextlib.suppress(KeyboardInterrupt),
        old_service(args.redis_url, args.port, args.workers, args.threads) as proc,
    ):
        print(f"old design on http://127.0.0.1:{args.port}/face-detection", flush=True)
        proc.wait()


if __name__ == "__main__":
    main()
