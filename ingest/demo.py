"""`facestream demo`: the whole path on one machine, for a first look.

Starts a local redis-server (unless FACESTREAM_REDIS_URL is set) and detector processes,
publishes the sample photos (or the given files) with a reply stream, prints one JSON line per
image as its result arrives, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgpack
import redis

from common.connection import redact
from common.embedded import EmbeddedRedis
from common.keys import Keys
from common.schema import RESULT_FIELD
from common.settings import Settings
from ingest.publisher import Publisher, make_event
from ingest.samples import sample_photos


def load_inputs(paths: list[str]) -> dict[str, bytes]:
    if not paths:
        return sample_photos()
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return {str(f): f.read_bytes() for f in files}


def start_detectors(settings: Settings, url: str, n: int, logs: Path) -> list[Any]:
    procs = []
    for i in range(n):
        env = dict(
            os.environ,
            FACESTREAM_REDIS_URL=url,
            FACESTREAM_PREFIX=settings.prefix,
            FACESTREAM_CONSUMER=f"{settings.consumer}-demo-{i}",
        )
        with (logs / f"detector-{i}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "detector"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_replies(
    client: redis.Redis, stream: str, want: set[str], timeout_s: float, procs: list[Any]
) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    last = "0"
    deadline = time.monotonic() + timeout_s
    while want - set(got) and time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            raise RuntimeError("every detector process exited; see their logs")
        reply: Any = client.xread({stream: last}, count=100, block=500)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                result = msgpack.unpackb(fields[RESULT_FIELD])
                if result["id"] in want and result["id"] not in got:
                    got[result["id"]] = result
                    print_result(result)
    return got


def print_result(result: dict[str, Any]) -> None:
    print(json.dumps(result, separators=(",", ":")), flush=True)


def run_demo(settings: Settings, paths: list[str], detectors: int, timeout_s: float) -> int:
    inputs = load_inputs(paths)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facestream-")))
        url = settings.redis_url
        if "redis_url" not in settings.model_fields_set:
            server = stack.enter_context(EmbeddedRedis(work / "redis"))
            url = server.url
            print(f"embedded redis-server ({server.binary}) on {url}", file=sys.stderr)
        else:
            print(f"using redis at {redact(url)}", file=sys.stderr)
        procs = start_detectors(settings, url, detectors, work)
        stack.callback(stop_all, procs)
        client = redis.Redis.from_url(url, socket_timeout=settings.socket_timeout_s)
        stack.callback(client.close)
        keys = Keys(settings.prefix)
        reply = keys.reply_stream(f"demo-{uuid.uuid4().hex[:8]}")
        stack.callback(client.delete, reply)
        ids = {name: f"{Path(name).name}-{uuid.uuid4().hex[:6]}" for name in inputs}
        Publisher(settings, client).publish_many(
            [
                make_event(data, ids[name], source=name, reply_to=reply)
                for name, data in inputs.items()
            ]
        )
        got = wait_replies(client, reply, set(ids.values()), timeout_s, procs)
        failed = [n for n, i in ids.items() if i not in got or "error" in got[i]]
        for name, event_id in ids.items():
            what = describe(got.get(event_id))
            print(f"{name:>40}  {what}", file=sys.stderr)
        return 1 if failed else 0


def describe(result: dict[str, Any] | None) -> str:
    if result is None:
        return "no answer"
    if "error" in result:
        return f"error {result['error']['code']}: {result['error']['message']}"
    return f"{len(result['faces'])} face(s)" + (" (cached)" if result["cached"] else "")


def stop_all(procs: list[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
