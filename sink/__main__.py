"""`python -m sink <kind>` / `facestream sink <kind>`: run one sink member."""

from __future__ import annotations

import argparse
import asyncio
import sys

from facestream.common.heap import freeze_startup_heap
from facestream.common.log import configure, get_logger
from facestream.common.settings import SinkSettings
from facestream.common.streams.connection import async_client
from facestream.common.streams.member import stop_on_signals
from facestream.sink import metrics
from facestream.sink.files import JsonlSink, StdoutSink
from facestream.sink.runner import Sink, SinkRunner
from facestream.sink.webhook import WebhookSink

KINDS = ("jsonl", "webhook", "stdout")
log = get_logger("sink")


def make_sink(kind: str, settings: SinkSettings) -> Sink:
    if kind == "jsonl":
        return JsonlSink(settings.jsonl_path, settings.jsonl_durability, settings.dedupe_window)
    if kind == "webhook":
        return WebhookSink(settings)
    return StdoutSink()


async def serve(kind: str, settings: SinkSettings) -> int:
    metrics.serve(settings.metrics_port, settings.metrics_host)
    client = async_client(settings)
    runner = SinkRunner(settings, client, make_sink(kind, settings))
    stop_on_signals(runner.stop.set, f"sink {kind}")
    log.info("sink_starting", kind=kind, frozen_objects=freeze_startup_heap())
    try:
        c = await runner.run()
    finally:
        await client.aclose()
    print(
        f"sink {kind} {settings.consumer}: {c.read} read, {c.written} written, "
        f"{c.dead} dead-lettered, {c.skipped} duplicates skipped",
        file=sys.stderr,
    )
    if runner.member.failed:
        print(f"sink {kind}: task {runner.member.failed} kept failing", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facestream sink")
    parser.add_argument("kind", choices=KINDS)
    args = parser.parse_args(argv)
    settings = SinkSettings()
    configure(settings)
    return asyncio.run(serve(args.kind, settings))


if __name__ == "__main__":
    sys.exit(main())
