"""Argument parsing and dispatch for `facestream ops ...`."""

from __future__ import annotations

import argparse
from typing import Any

from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.common.streams.types import SyncClient
from facestream.control import locate, ops


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("ops", help="see and repair stuck work (docs/operations.md)")
    cmds = parser.add_subparsers(dest="ops", required=True, metavar="OPS")

    status = cmds.add_parser("status", help="streams, groups, lag, pending, consumers, DLQ, cache")
    status.add_argument("--json", action="store_true")

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--stream", choices=["images", "results"], default="images")
        p.add_argument("--group", help="default: the detectors' group (or sink-jsonl on results)")
        partition(p)

    def partition(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--partition", type=int, help="only this partition (default: every partition)"
        )

    pending = cmds.add_parser("pending", help="pending entries (XPENDING)")
    where(pending)
    pending.add_argument("--idle", type=int, help="only entries idle at least this many ms")
    pending.add_argument("--consumer")
    pending.add_argument("--count", type=int, default=100)
    pending.add_argument("--json", action="store_true")

    claim = cmds.add_parser("claim", help="move idle pending entries to a consumer")
    where(claim)
    claim.add_argument("--min-idle", type=int, required=True, help="ms")
    claim.add_argument("--to", required=True, help="the consumer that takes them")

    dlq = cmds.add_parser("dlq", help="the dead-letter stream")
    dlq.add_argument("action", choices=["list", "replay", "purge"])
    dlq.add_argument("--id", action="append", dest="ids", help="only these DLQ entries")
    dlq.add_argument("--count", type=int, default=100)
    dlq.add_argument("--json", action="store_true")
    partition(dlq)

    consumers = cmds.add_parser("consumers", help="consumers of a group")
    consumers.add_argument("action", choices=["prune"])
    where(consumers)
    consumers.add_argument("--idle", type=int, help="ms idle (default: the claim idle time)")
    consumers.add_argument("--to", required=True, help="who takes a pruned consumer's entries")
    for command in (status, pending, claim, dlq, consumers):
        locate.add_dir_option(command)


def run(args: argparse.Namespace, settings: Settings) -> int:
    r = sync_client(settings)
    try:
        return _run(args, settings, r)
    finally:
        r.close()


def _group(args: argparse.Namespace, settings: Settings) -> str:
    if args.group:
        return str(args.group)
    return settings.detector_group if args.stream == "images" else "sink-jsonl"


def _run(args: argparse.Namespace, settings: Settings, r: SyncClient) -> int:
    if args.ops == "status":
        report = ops.status(settings, r)
        ops.dump(report) if args.json else ops.print_status(report)
        return 0
    if args.ops == "dlq":
        if args.action == "list":
            rows = ops.dlq_list(settings, r, args.count, args.partition)
            if args.json:
                ops.dump(rows)
            if not rows and not args.json:
                print("no dead letters")
            for row in [] if args.json else rows:
                print(
                    f"{row['partition']}/{row['dlq_entry']}  {row['kind']:<6} id={row['id']} "
                    f"reason={row['reason']} consumer={row['consumer']} "
                    f"deliveries={row['deliveries']} sink={row['sink']}"
                )
            return 0
        act = ops.dlq_replay if args.action == "replay" else ops.dlq_purge
        done = act(settings, r, args.ids, args.partition)
        print(f"{args.action}: {done} dead letter(s)")
        return 0
    streams = ops.stream_keys(settings, args.stream, args.partition)
    group = _group(args, settings)
    if args.ops == "pending":
        rows = []
        for stream in streams:
            found = ops.pending(settings, r, stream, group, args.idle, args.consumer, args.count)
            rows += [{"stream": stream, **row} for row in found]
        if args.json:
            ops.dump(rows)
        if not rows and not args.json:
            print(f"no pending entries in group {group}")
        for row in [] if args.json else rows:
            print(
                f"{row['stream']}  {row['entry']}  {row['consumer']:<32} "
                f"idle {row['idle_ms']} ms  deliveries {row['deliveries']}"
            )
        return 0
    if args.ops == "claim":
        moved = sum(ops.claim(r, stream, group, args.min_idle, args.to) for stream in streams)
        print(f"claimed {moved} entries for {args.to}")
        return 0
    idle = args.idle if args.idle is not None else settings.claim_idle_ms
    pruned = [
        p
        for stream in streams
        for p in ops.prune_consumers(settings, r, stream, group, idle, args.to)
    ]
    for p in pruned:
        print(f"pruned {p['consumer']}: {p['moved']} pending entries moved to {args.to}")
    if not pruned:
        print("no consumer to prune")
    return 0
