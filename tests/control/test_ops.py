"""`facestream ops` against real Redis state: status, pending, claim, dead letters, pruning."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD
from facestream.control.cli import main
from facestream.ingest.publisher import make_event

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64


@pytest.fixture
def ops(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    monkeypatch.setenv("FACESTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("FACESTREAM_PREFIX", prefix)
    # main() configures logging for a real process; inside pytest it must not bind the loggers
    # to this test's captured (and later closed) stderr.
    monkeypatch.setattr("facestream.control.cli.configure", lambda settings: None)

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main(["ops", *args]) == 0
        return capsys.readouterr().out

    return run


def stuck(r: redis.Redis, keys: Keys, consumer: str, n: int) -> list[str]:
    r.xgroup_create(keys.images, "detectors", id="0", mkstream=True)
    ids = [
        r.xadd(keys.images, {EVENT_FIELD: make_event(JPEG, f"e{i}").to_wire()}).decode()
        for i in range(n)
    ]
    r.xreadgroup("detectors", consumer, {keys.images: ">"})
    return ids


def test_status_json(ops: Any, prefix: str, r: redis.Redis) -> None:
    keys = Keys(prefix)
    stuck(r, keys, "dead-1", 3)
    r.set(keys.consumer_claim("detectors", "live-1"), "token")
    r.xgroup_createconsumer(keys.images, "detectors", "live-1")
    r.hset(keys.cache("a" * 64, "m-1"), "faces", b"\x90")
    r.xadd(keys.dlq, {"event": b"x", "reason": "max_deliveries"})
    report = json.loads(ops("status", "--json"))
    images = report["streams"]["images"]
    assert images["length"] == 3 and report["streams"]["dlq"]["length"] == 1
    [group] = images["groups"]
    assert group["name"] == "detectors" and group["pending"] == 3 and group["lag"] == 0
    alive = {c["name"]: c["alive"] for c in group["consumers"]}
    assert alive == {"dead-1": False, "live-1": True}
    assert report["cache"]["entries"] == 1
    assert "redis" in ops("status")  # the table form prints too


def test_pending_and_claim(ops: Any, prefix: str, r: redis.Redis) -> None:
    keys = Keys(prefix)
    ids = stuck(r, keys, "dead-1", 3)
    rows = json.loads(ops("pending", "--json"))
    assert [row["entry"] for row in rows] == ids and {row["consumer"] for row in rows} == {"dead-1"}
    assert json.loads(ops("pending", "--json", "--idle", "600000")) == []
    assert "claimed 3 entries for rescuer" in ops("claim", "--min-idle", "0", "--to", "rescuer")
    rows = json.loads(ops("pending", "--json", "--consumer", "rescuer"))
    assert [row["entry"] for row in rows] == ids


def test_dlq_list_replay_purge(ops: Any, prefix: str, r: redis.Redis) -> None:
    keys = Keys(prefix)
    event = make_event(JPEG, "dead-one").to_wire()
    r.xadd(
        keys.dlq,
        {
            "event": event,
            "reason": "max_deliveries",
            "consumer": "c1",
            "deliveries": 5,
            "entry": "1-0",
        },
    )
    r.xadd(
        keys.dlq,
        {
            "result": msgpack.packb({"v": 1, "id": "r1"}),
            "reason": "HTTP 400",
            "sink": "webhook",
            "consumer": "h1",
            "entry": "2-0",
        },
    )
    rows = json.loads(ops("dlq", "list", "--json"))
    assert [(x["kind"], x["id"], x["reason"]) for x in rows] == [
        ("event", "dead-one", "max_deliveries"),
        ("result", "r1", "HTTP 400"),
    ]
    assert "replay: 1" in ops("dlq", "replay", "--id", rows[0]["dlq_entry"])
    [(_, fields)] = r.xrange(keys.images)
    assert fields[b"event"] == event  # back on the images stream as it was
    assert r.xlen(keys.dlq) == 1
    assert "purge: 1" in ops("dlq", "purge")
    assert r.xlen(keys.dlq) == 0


def test_prune_moves_entries_before_deleting(ops: Any, prefix: str, r: redis.Redis) -> None:
    keys = Keys(prefix)
    ids = stuck(r, keys, "dead-1", 2)
    r.set(keys.consumer_claim("detectors", "live-1"), "token")
    r.xgroup_createconsumer(keys.images, "detectors", "live-1")  # live, nothing pending
    out = ops("consumers", "prune", "--idle", "0", "--to", "rescuer")
    assert "pruned dead-1: 2 pending entries moved to rescuer" in out
    names = {c["name"].decode() for c in r.xinfo_consumers(keys.images, "detectors")}
    assert names == {"live-1", "rescuer"}  # the live one stays
    pending = r.xpending_range(keys.images, "detectors", "-", "+", 10, consumername="rescuer")
    assert [p["message_id"].decode() for p in pending] == ids
