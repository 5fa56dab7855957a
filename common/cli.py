"""The `facestream` command: one entry point, a subcommand per service or tool."""

from __future__ import annotations

import argparse
import os
import sys

from common.log import configure
from common.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream",
        description="Face detection over Redis Streams. Settings come from FACESTREAM_* "
        "environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("detector", help="run one detector process (same as python -m detector)")
    demo = sub.add_parser(
        "demo",
        help="run a local redis-server and detectors, detect faces in photos, print results",
    )
    demo.add_argument("paths", nargs="*", help="image files or directories (default: samples)")
    demo.add_argument("--detectors", type=int, default=1, help="detector processes (default 1)")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "detector":
        from detector.__main__ import main as detector_main

        return detector_main()
    settings = Settings()
    configure(settings)
    if args.command == "demo":
        from ingest.demo import run_demo

        os.environ.setdefault("FACESTREAM_LOG_FORMAT", "json")
        return run_demo(settings, args.paths, max(1, args.detectors), args.timeout)
    return 2


if __name__ == "__main__":
    sys.exit(main())
