"""Sinks through a real redis-server: fan-out, shared groups, jsonl durability, webhook."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Face, Result
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.sink.files import JsonlSink
from facestream.sink.runner import Sink, SinkRunner
from facestream.sink.webhook import WebhookSink
from tests.support.acl import as_role
from tests.support.procs import ROOT

MakeSettings = Callable[..., Settings]


def result(i: int) -> Result:
    face = Face([1.0, 2.0, 30.0, 40.0], 0.99, [[5.0, 5.0]] * 5)
    return Result(
        id=f"r{i}",
        model="m-1",
        consumer="det",
        entry=f"{1000 + i}-0",
        done_ms=i,
        sha256=f"{i:064x}",
        width=64,
        height=48,
        faces=[face],
    )


def publish_results(r: redis.Redis, prefix: str, n: int, start: int = 0) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(Keys(prefix).results, {"result": result(i).to_wire()})
    pipe.execute()


def run_sinks(
    members: list[tuple[Settings, Sink]],
    until: Callable[[list[SinkRunner]], bool],
    timeout_s: float = 30,
) -> list[SinkRunner]:
    async def main() -> list[SinkRunner]:
        # As each sink's own ACL user under `make test-acl` (tests/support/acl.py).
        logins = [(as_role(s, f"sink-{sink.kind}"), sink) for s, sink in members]
        clients = [async_client(s) for s, _ in logins]
        runners = [SinkRunner(s, c, sink) for (s, sink), c in zip(logins, clients, strict=True)]
        tasks = [asyncio.create_task(r.run()) for r in runners]
        deadline = time.monotonic() + timeout_s
        while not until(runners) and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a predicate)
            await asyncio.sleep(0.02)
        for r in runners:
            r.stop.set()
        await asyncio.gather(*tasks)
        for c in clients:
            await c.aclose()
        return runners

    return asyncio.run(main())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def jsonl(path: Path, settings: Settings) -> JsonlSink:
    return JsonlSink(str(path), settings.jsonl_durability, settings.dedupe_window)


def test_fan_out_every_group_gets_every_result(
    make_settings: MakeSettings, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    publish_results(r, prefix, 50)
    a = make_settings(sink_group="archive")
    b = make_settings(sink_group="audit")
    run_sinks(
        [(a, jsonl(tmp_path / "a.jsonl", a)), (b, jsonl(tmp_path / "b.jsonl", b))],
        lambda rs: all(x.counters.written == 50 for x in rs),
    )
    for name in ("a", "b"):
        assert sorted(x["id"] for x in lines(tmp_path / f"{name}.jsonl")) == sorted(
            f"r{i}" for i in range(50)
        )
    assert r.xpending(Keys(prefix).results, "archive")["pending"] == 0


def test_members_of_one_group_split_the_work(
    make_settings: MakeSettings, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    publish_results(r, prefix, 300)
    one = make_settings(sink_group="shared", read_count=10, consumer="m1")
    two = make_settings(sink_group="shared", read_count=10, consumer="m2")
    runners = run_sinks(
        [(one, jsonl(tmp_path / "1.jsonl", one)), (two, jsonl(tmp_path / "2.jsonl", two))],
        lambda rs: sum(x.counters.written for x in rs) == 300,
    )
    first = [x["id"] for x in lines(tmp_path / "1.jsonl")]
    second = [x["id"] for x in lines(tmp_path / "2.jsonl")]
    assert len(first) + len(second) == 300
    assert set(first).isdisjoint(second) and len(set(first) | set(second)) == 300
    assert all(x.counters.written > 0 for x in runners)  # both took part


def test_jsonl_restart_never_writes_a_result_twice(
    make_settings: MakeSettings, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    settings = make_settings(sink_group="files", consumer="writer-1")
    path = tmp_path / "out.jsonl"
    publish_results(r, prefix, 20)
    r.xgroup_create(keys.results, "files", id="0")
    # A previous life read all 20, wrote 12 of them (the last one torn) and died before acking.
    r.xreadgroup("files", "writer-1", {keys.results: ">"}, count=100)
    written = [json.dumps(result(i).to_dict()) + "\n" for i in range(12)]
    path.write_text("".join(written)[:-10])
    publish_results(r, prefix, 5, start=20)  # and new ones arrived meanwhile
    runners = run_sinks(
        [(settings, jsonl(path, settings))],
        lambda rs: r.xpending(keys.results, "files")["pending"] == 0 and rs[0].counters.read >= 25,
    )
    ids = [x["id"] for x in lines(path) if x]
    assert sorted(ids) == sorted(f"r{i}" for i in range(25))  # each exactly once
    assert runners[0].counters.skipped == 11  # the 11 whole lines found at start


class Hook(BaseHTTPRequestHandler):
    plan: ClassVar[list[int]] = []
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = type(self).plan.pop(0) if type(self).plan else 200
        if status == 200:
            type(self).received.append(body)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"nope")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("H", (Hook,), {"plan": [], "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()


def test_webhook_retries_then_delivers(
    make_settings: MakeSettings, prefix: str, r: redis.Redis, hook: Any
) -> None:
    url, handler = hook
    handler.plan = [503, 500]  # fails twice, then succeeds
    settings = make_settings(
        webhook_url=url, webhook_backoff_ms=10, webhook_retries=3, webhook_concurrency=1
    )
    publish_results(r, prefix, 1)
    runners = run_sinks([(settings, WebhookSink(settings))], lambda rs: rs[0].counters.written == 1)
    assert [b["id"] for b in handler.received] == ["r0"]
    assert handler.received[0]["faces"][0]["kps"] == [[5.0, 5.0]] * 5
    assert runners[0].counters.dead == 0 and r.xlen(Keys(prefix).dlq) == 0


@pytest.mark.parametrize(
    ("plan", "reason"),
    [([500] * 10, "gave up after 3 attempts"), ([400], "permanent failure: HTTP 400")],
)
def test_webhook_failures_go_to_the_dead_letter_stream(
    make_settings: MakeSettings,
    prefix: str,
    r: redis.Redis,
    hook: Any,
    plan: list[int],
    reason: str,
) -> None:
    url, handler = hook
    handler.plan = list(plan)
    settings = make_settings(
        webhook_url=url, webhook_backoff_ms=5, webhook_retries=2, sink_group="hooks", consumer="h1"
    )
    publish_results(r, prefix, 1)
    run_sinks([(settings, WebhookSink(settings))], lambda rs: rs[0].counters.dead == 1)
    [(_, dead)] = r.xrange(Keys(prefix).dlq)
    assert dead[b"reason"].decode().startswith(reason)
    assert dead[b"sink"] == b"webhook" and dead[b"group"] == b"hooks"
    assert (
        dead[b"consumer"] == b"h1"
        and json.loads(json.dumps(__import__("msgpack").unpackb(dead[b"result"])))["id"] == "r0"
    )
    assert r.xpending(Keys(prefix).results, "hooks")["pending"] == 0
    assert handler.received == []


def test_stdout_sink_as_a_process(redis_url: str, prefix: str, r: redis.Redis) -> None:
    publish_results(r, prefix, 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream.sink", "stdout"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={
            "PATH": "/usr/bin:/bin",
            "FACESTREAM_REDIS_URL": redis_url,
            "FACESTREAM_PREFIX": prefix,
            "FACESTREAM_BLOCK_MS": "100",
        },
    )
    assert proc.stdout is not None
    got = [json.loads(proc.stdout.readline()) for _ in range(3)]
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert [g["id"] for g in got] == ["r0", "r1", "r2"]
    assert "3 written" in err.decode().splitlines()[-1]


class BrokenSink:
    """A sink whose destination always fails (say, a full disk)."""

    kind = "broken"

    async def open(self) -> None:
        return None

    async def write(self, items: list[Any]) -> Any:
        raise OSError("no space left on device")

    async def close(self) -> None:
        return None


def test_a_result_that_never_writes_is_dead_lettered(
    make_settings: MakeSettings, prefix: str, r: redis.Redis
) -> None:
    settings = make_settings(max_deliveries=3, sink_group="broken", consumer="b1")
    publish_results(r, prefix, 2)
    runners = run_sinks(
        [(settings, BrokenSink())], lambda rs: rs[0].counters.dead == 2, timeout_s=20
    )
    assert runners[0].counters.dead == 2
    letters = r.xrange(Keys(prefix).dlq)
    assert [f[b"reason"].decode().split(":")[0] for _, f in letters] == ["max_deliveries"] * 2
    assert r.xpending(Keys(prefix).results, "broken")["pending"] == 0


def test_a_sink_dead_letter_is_one_step_with_its_ack(
    make_settings: MakeSettings, r: redis.Redis
) -> None:
    """Acknowledge and dead-letter together, only if the acknowledgement counted: an entry
    another member settled meanwhile is not dead-lettered a second time."""
    from facestream.common.streams.ack_gated import SinkDeadLetter
    from facestream.common.streams.scripts import Scripts

    settings = make_settings()
    # On a cluster the script needs a partition's streams (one slot); one server takes either.
    part = Keys(settings.prefix, 2).parts[0] if settings.cluster else Keys(settings.prefix).parts[0]
    r.xgroup_create(part.results, "g", id="0", mkstream=True)
    first = r.xadd(part.results, {"result": b"1"}).decode()
    second = r.xadd(part.results, {"result": b"2"}).decode()
    r.xreadgroup("g", "m1", {part.results: ">"})
    r.xack(part.results, "g", first)  # settled by someone else already
    letters = SinkDeadLetter(
        part.results, part.dlq, "g", "jsonl", "m1", [(first, b"1", "late"), (second, b"2", "bad")]
    )
    answers = letters.queue(Scripts(r), r)
    assert answers == [0, 1]
    [(_, letter)] = r.xrange(part.dlq)
    assert letter[b"entry"].decode() == second and letter[b"reason"] == b"bad"
    assert letter[b"sink"] == b"jsonl" and letter[b"consumer"] == b"m1"
    assert r.xpending(part.results, "g")["pending"] == 0


def _deep(levels: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for _ in range(levels):
        meta = {"a": meta}
    return meta


def _items(n: int, bad: int) -> list[Any]:
    from facestream.sink.runner import Item

    out = []
    for i in range(n):
        result = Result(f"r{i}", "m", "c", f"1-{i}", 1, sha256="0" * 64, faces=[]).to_dict()
        if i == bad:
            result["meta"] = _deep(5000)  # past json's recursion limit
        out.append(Item(f"1-{i}", b"", result))
    return out


def test_one_unserialisable_result_costs_only_itself(tmp_path: Path) -> None:
    import io

    from facestream.sink.files import StdoutSink

    async def main() -> tuple[Any, Any]:
        sink = JsonlSink(str(tmp_path / "out.jsonl"), "fsync", 100)
        await sink.open()
        jsonl = await sink.write(_items(7, bad=3))
        await sink.close()
        out = StdoutSink(io.BytesIO())
        return jsonl, await out.write(_items(7, bad=3))

    for outcome in asyncio.run(main()):
        assert [i.entry for i in outcome.written] == [f"1-{i}" for i in (0, 1, 2, 4, 5, 6)]
        assert [(i.entry, r.split(":")[0]) for i, r in outcome.dead] == [
            ("1-3", "unserialisable result")
        ]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r4", "r5", "r6"]


def test_webhook_gives_up_an_unserialisable_result_without_retrying() -> None:
    sink = WebhookSink(Settings(webhook_url="http://127.0.0.1:9/never", webhook_retries=3))

    async def main() -> Any:
        await sink.open()
        try:
            return await sink.write(_items(1, bad=0))
        finally:
            await sink.close()

    outcome = asyncio.run(main())
    assert not outcome.written and outcome.dead[0][1].startswith("unserialisable result")
