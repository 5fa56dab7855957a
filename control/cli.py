"""The `facestream` command: one entry point, a subcommand per service or tool.

Settings come from FACESTREAM_* environment variables (README); options here only choose
what to run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import closing
from pathlib import Path

from facestream.common.log import configure
from facestream.common.settings import Settings
from facestream.common.streams.connection import redact, sync_client
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.serving import live_detectors
from facestream.control import locate, model_cli, ops_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facestream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("detector", help="run one detector process")
    ingest = sub.add_parser("ingest", help="the HTTP gateway")
    ingest.add_argument("action", choices=["serve"])
    sink = sub.add_parser("sink", help="run one sink member")
    sink.add_argument("kind", choices=["jsonl", "webhook", "stdout"])

    detect = sub.add_parser("detect", help="detect faces in files, directories or globs")
    detect.add_argument("paths", nargs="+")
    detect.add_argument("--table", action="store_true", help="a table instead of JSON lines")
    detect.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds without any answer before giving up (default 120)",
    )
    detect.add_argument("--source", help="the events' source field (default: the path)")
    detect.add_argument(
        "--draw",
        metavar="DIR",
        help="also write each photo with its faces drawn into DIR (<name>.faces.jpg)",
    )
    detect.add_argument(
        "--crops",
        action="store_true",
        help="ask for a 112x112 aligned JPEG per face (base64 in each face's `crop`)",
    )
    publish = sub.add_parser("publish", help="publish images without waiting; prints ids")
    publish.add_argument("paths", nargs="+")
    for command in (detect, publish):
        command.add_argument(
            "--no-wait-check",
            action="store_true",
            help="publish even when no detector is alive (by default: exit 2 at once)",
        )
    results = sub.add_parser("results", help="print results as JSON lines")
    results.add_argument("--follow", "-f", action="store_true", help="keep waiting for more")
    results.add_argument("--group", help="read as this consumer group (acknowledges)")
    results.add_argument("--from", dest="start", help="entry id to start after (0: all)")
    results.add_argument("--count", type=int, help="stop after this many")
    results.add_argument(
        "--last",
        type=int,
        metavar="N",
        help="print the newest N results still in the stream (FACESTREAM_RESULTS_KEEP "
        "stay after the sinks acknowledge them) and stop",
    )

    up = sub.add_parser("up", help="run redis, gateway, detectors and a jsonl sink here")
    up.add_argument(
        "--detectors",
        type=_count,
        default=os.cpu_count() or 1,
        help="detector processes (default: one per core; 0: none, start them elsewhere)",
    )
    up.add_argument(
        "--dir",
        default=None,
        help="data directory: Redis's files, results.jsonl, and stack.json, which tells the "
        "other commands run from here where this stack is (default .facestream; "
        "FACESTREAM_STACK_DIR)",
    )
    up.add_argument("--no-gateway", action="store_true")
    up.add_argument("--no-sink", action="store_true")
    demo = sub.add_parser(
        "demo",
        help="start the stack, detect faces in the sample photos (or PATHS), print them, stop",
    )
    demo.add_argument("paths", nargs="*")
    demo.add_argument("--detectors", type=int, default=1)
    demo.add_argument("--table", action="store_true")
    health = sub.add_parser(
        "health",
        help="exit 0 when this host's detector or sink member "
        "is alive (its heartbeat key is fresh): for container healthchecks",
    )
    health.add_argument("role", choices=["detector", "sink"])
    health.add_argument("kind", nargs="?", choices=["jsonl", "webhook", "stdout"])
    health.add_argument(
        "--consumer",
        help="the member's consumer name (default: FACESTREAM_CONSUMER, else every "
        "member of a `facestream up` running here, else the host name)",
    )
    for command in (detect, publish, results, health):
        locate.add_dir_option(command)
    ops_cli.add_parser(sub)
    model_cli.add_parser(sub)
    migrate = sub.add_parser("migrate", help="move over from the service facestream replaces")
    migrate.add_argument("action", choices=["import-cache"])
    migrate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="REDIS_URL",
        help="the old service's Redis (only read)",
    )
    migrate.add_argument("--prefix", default="face_detection:")
    migrate.add_argument(
        "--model",
        default="damofd",
        help="the model that filled the old cache (default damofd); it must "
        "be the model this facestream serves (FACESTREAM_MODEL)",
    )
    acl = sub.add_parser("acl", help="least-privilege Redis users per role, as ACL lines")
    acl.add_argument("--write", metavar="FILE", help="write an ACL file (else print)")
    acl.add_argument(
        "--secrets-dir", metavar="DIR", help="one password file per user, created when missing"
    )
    acl.add_argument(
        "--native-bloom",
        action="store_true",
        help="also grant BF.MEXISTS / BF.INSERT (the server must have them)",
    )
    samples = sub.add_parser("samples", help="write the sample photos into a directory")
    samples.add_argument("dir")
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


# Commands that talk to an existing deployment's Redis: each says which one first.
CLIENT_COMMANDS = {"detect", "publish", "results", "ops", "health"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "detector":
        from facestream.detector.__main__ import main as detector_main

        return detector_main()
    if args.command == "sink":
        from facestream.sink.__main__ import main as sink_main

        return sink_main([args.kind])
    where = getattr(args, "dir", None)
    settings = Settings(stack_dir=where) if where else Settings()
    configure(settings)
    try:
        if args.command in CLIENT_COMMANDS:
            print(locate.describe(settings), file=sys.stderr, flush=True)
        return run(args, settings)
    except locate.NotFound as exc:
        print(f"facestream {args.command}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"facestream {args.command}: {exc}", file=sys.stderr)
        return 2
    except REDIS_ERRORS as exc:
        print(
            f"facestream {args.command}: Redis at {redact(settings.redis_url)} failed: {exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "ingest":
        from facestream.ingest.http.serve import serve

        return serve(settings)
    if args.command == "samples":
        from facestream.control.samples import write_samples

        for path in write_samples(Path(args.dir)):
            print(path)
        return 0
    if args.command == "migrate":
        return migrate(args, settings)
    if args.command == "acl":
        from facestream.control.acl import acl_lines

        lines = acl_lines(
            settings, Path(args.secrets_dir) if args.secrets_dir else None, args.native_bloom
        )
        if args.write:
            Path(args.write).write_text("\n".join(lines) + "\n")
            print(f"wrote {len(lines)} ACL lines to {args.write}")
        else:
            print("\n".join(lines))
        return 0
    if args.command == "ops":
        with closing(sync_client(settings)) as client:
            locate.check(settings, client)
        return ops_cli.run(args, settings)
    if args.command == "model":
        return model_cli.run(args, settings)
    if args.command == "health":
        return health(args, settings)
    if args.command in ("up", "demo"):
        return run_stack(args, settings)

    from facestream.control import client as commands

    client = sync_client(settings)
    locate.check(settings, client)
    if args.command in ("detect", "publish"):
        paths = commands.expand(args.paths)
        problem = None if args.no_wait_check else commands.no_detector(settings, client)
        if problem is not None:
            print(f"facestream {args.command}: {problem}", file=sys.stderr)
            return 2
    if args.command == "detect":
        return commands.detect(
            settings,
            client,
            paths,
            table=args.table,
            timeout_s=args.timeout,
            source=args.source,
            draw=Path(args.draw) if args.draw else None,
            crops=args.crops,
        )
    if args.command == "publish":
        return commands.publish(settings, client, paths)
    running = locate.running_stack(settings)
    jsonl = running.jsonl_path if running else None
    if args.last is not None:
        if args.last < 1 or args.follow or args.group or args.start:
            raise ValueError("--last takes N >= 1, without --follow, --group or --from")
        return commands.last_results(settings, client, args.last, jsonl)
    return commands.results(
        settings,
        client,
        follow=args.follow,
        group=args.group,
        start=args.start,
        count=args.count,
        jsonl_path=jsonl,
    )


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import json

    import redis.asyncio as aioredis

    from facestream.common.streams.connection import async_client
    from facestream.control.migrate import ModelMismatch, import_cache
    from facestream.detector.model.loader import load_model

    spec = load_model(settings).spec

    async def go() -> dict[str, object]:
        source = aioredis.Redis.from_url(args.source, decode_responses=True)
        target = async_client(settings)
        try:
            report = await import_cache(
                settings, source, target, args.prefix, args.model, spec.name, spec.tag
            )
            return report.as_dict()
        finally:
            await source.aclose()
            await target.aclose()

    try:
        print(json.dumps(asyncio.run(go())))
    except ModelMismatch as exc:
        print(f"facestream migrate: refused: {exc}", file=sys.stderr)
        return 2
    return 0


def health(args: argparse.Namespace, settings: Settings) -> int:

    from facestream.common.contract.keys import Keys

    if args.role == "sink" and not args.kind:
        print("facestream health sink: name the sink kind", file=sys.stderr)
        return 2
    group = (
        settings.detector_group if args.role == "detector" else settings.sink_group_of(args.kind)
    )
    keys = Keys(settings.prefix, settings.partitions)
    names = health_members(args, settings)
    if not names:
        print(f"unhealthy: this `facestream up` runs no {args.role} {args.kind or ''}".rstrip())
        return 1
    client = sync_client(settings)
    try:
        # The heartbeat says the process runs; a detector's served-model entry also says its
        # background tasks do (it stops refreshing it while one is down: common/supervise.py).
        beating = {name: bool(client.exists(keys.consumer_claim(group, name))) for name in names}
        serving = (
            live_detectors(client.hgetall(keys.serving(group))) if args.role == "detector" else {}
        )
    except REDIS_ERRORS as exc:
        print(f"unhealthy: redis {redact(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    healthy = True
    for name, beats in beating.items():
        why = ""
        if not beats:
            why = " (no heartbeat: not running)"
        elif args.role == "detector" and name not in serving:
            why = " (running, but not serving: a background task is down, see its log)"
        healthy = healthy and not why
        print(f"{'unhealthy' if why else 'healthy'}: {args.role} {name} in {group}{why}")
    return 0 if healthy else 1


def health_members(args: argparse.Namespace, settings: Settings) -> list[str]:
    """Whose heartbeat to check: --consumer, FACESTREAM_CONSUMER (a container's own name),
    else the members of the `facestream up` found here, else the host name (the default
    consumer name of a member started by hand or in a container)."""
    if args.consumer:
        return [str(args.consumer)]
    running = locate.running_stack(settings)
    if "consumer" in settings.model_fields_set or running is None:
        return [settings.consumer]
    if args.role == "detector":
        return list(running.detectors)
    return [name for name in running.sinks if name.endswith(f"-sink-{args.kind}")]


def run_stack(args: argparse.Namespace, settings: Settings) -> int:
    from facestream.control.stack import Stack, run_up

    if args.command == "up":
        stack = Stack(
            settings,
            Path(args.dir or settings.stack_dir),
            args.detectors,
            gateway=not args.no_gateway,
            sink=not args.no_sink,
        )
        return run_up(stack)

    import redis

    from facestream.control import client as commands
    from facestream.control.embedded import free_port
    from facestream.control.samples import write_samples

    if "http_port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"http_port": free_port()})
    with tempfile.TemporaryDirectory(prefix="facestream-demo-") as tmp:
        work = Path(tmp)
        paths = commands.expand(args.paths) if args.paths else write_samples(work / "samples")
        stack = Stack(settings, work, max(1, args.detectors), log_dir=work)
        try:
            stack.start()
            stack.wait_ready()
            print(stack.describe(), file=sys.stderr)
            client = redis.Redis.from_url(stack.redis_url)
            status = commands.detect(settings, client, paths, table=args.table, timeout_s=120)
            client.close()
        except (RuntimeError, TimeoutError) as exc:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in work.glob("*.log"))
            print(f"facestream demo: {exc}\n{logs}", file=sys.stderr)
            status = 1
        finally:
            stack.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
