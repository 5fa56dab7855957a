"""`facestream ops`: see and repair stuck work (docs/operations.md is the runbook)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import redis

from facestream.common.contract.keys import Keys, Partition
from facestream.common.settings import Settings
from facestream.common.streams.connection import redact
from facestream.common.streams.groups import ensure_group_sync
from facestream.common.streams.types import SyncClient


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _entries(
    r: SyncClient, stream: str, count: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    rows: Any = r.xrange(stream, count=count)
    return [(_s(entry), {_s(k): v for k, v in (fields or {}).items()}) for entry, fields in rows]


def _groups(r: SyncClient, stream: str) -> list[dict[str, Any]]:
    try:
        return [{k: _s(v) for k, v in g.items()} for g in r.xinfo_groups(stream)]
    except redis.ResponseError:
        return []  # no such stream


def _count_keys(r: SyncClient, pattern: str, limit: int = 100_000) -> tuple[int, bool]:
    """Keys matching `pattern` by SCAN (never KEYS), up to `limit`; True when cut short."""
    n = 0
    for _ in r.scan_iter(match=pattern, count=1000):
        n += 1
        if n >= limit:
            return n, True
    return n, False


def parts(settings: Settings, partition: int | None = None) -> list[Partition]:
    """Every partition, or the one asked for."""
    keys = Keys(settings.prefix, settings.partitions)
    if partition is None:
        return list(keys.parts)
    if not 0 <= partition < keys.partitions:
        raise ValueError(f"partition {partition}: there are {keys.partitions} (0..)")
    return [keys.parts[partition]]


def _label(settings: Settings, part: Partition, kind: str) -> str:
    return kind if settings.partitions == 1 else f"{kind}/{part.index}"


def status(settings: Settings, r: SyncClient) -> dict[str, Any]:
    keys = Keys(settings.prefix, settings.partitions)
    out: dict[str, Any] = {"redis": redact(settings.redis_url), "streams": {}}
    info = r.info("memory")
    out["memory"] = {
        "used": info.get("used_memory_human"),
        # maxmemory 0 is "no limit", which Redis writes as 0B
        "maxmemory": info.get("maxmemory_human") if int(info.get("maxmemory") or 0) else None,
        "policy": info.get("maxmemory_policy"),
    }
    named = [
        (_label(settings, part, kind), stream)
        for part in keys.parts
        for kind, stream in (("images", part.images), ("results", part.results), ("dlq", part.dlq))
    ]
    for name, stream in named:
        groups = []
        length = r.xlen(stream)
        for g in _groups(r, stream):
            consumers = [
                {
                    "name": _s(c["name"]),
                    "pending": int(c["pending"]),
                    "idle_ms": int(c["idle"]),
                    "alive": bool(r.exists(keys.consumer_claim(g["name"], _s(c["name"])))),
                }
                for c in r.xinfo_consumers(stream, g["name"])
            ]
            groups.append(
                {
                    "name": g["name"],
                    # Capped by the length: after an external XTRIM or DEL Redis still
                    # counts the erased entries as lag, but they will never be delivered.
                    "lag": None if g.get("lag") is None else min(int(g["lag"]), length),
                    "pending": int(g["pending"]),
                    "last_delivered": g.get("last-delivered-id"),
                    "consumers": consumers,
                }
            )
        out["streams"][name] = {"key": stream, "length": length, "groups": groups}
    cached, cut = _count_keys(r, f"{settings.prefix}:face:*")
    out["cache"] = {"entries": cached, "at_least": cut}
    bloom = []
    for key in r.scan_iter(match=f"{settings.prefix}:bloom:*", count=1000):
        kind = _s(r.type(key))
        size = r.strlen(key) if kind == "string" else r.memory_usage(key)
        bloom.append({"key": _s(key), "type": kind, "bytes": size, "ttl_s": r.ttl(key)})
    out["bloom"] = bloom
    locks, _ = _count_keys(r, f"{settings.prefix}:lock:*")
    out["locks_held"] = locks
    return out


def print_status(report: dict[str, Any]) -> None:
    print(
        f"redis {report['redis']}  memory {report['memory']['used']} of "
        f"{report['memory']['maxmemory'] or 'no limit'} ({report['memory']['policy']})"
    )
    for name, s in report["streams"].items():
        print(f"\n{name:<8} {s['key']}  length {s['length']}")
        for g in s["groups"]:
            print(
                f"  group {g['name']:<16} lag {g['lag']!s:<8} pending {g['pending']:<8} "
                f"last delivered {g['last_delivered']}"
            )
            for c in g["consumers"]:
                state = "alive" if c["alive"] else "no heartbeat"
                print(
                    f"    {c['name']:<32} pending {c['pending']:<6} idle {c['idle_ms']} ms "
                    f"({state})"
                )
    cache = report["cache"]
    print(
        f"\ncache entries {'>=' if cache['at_least'] else ''}{cache['entries']}, "
        f"locks held {report['locks_held']}"
    )
    for b in report["bloom"]:
        print(f"bloom {b['key']} ({b['type']}, {b['bytes']} bytes, ttl {b['ttl_s']} s)")


def stream_keys(settings: Settings, which: str, partition: int | None = None) -> list[str]:
    return [
        part.images if which == "images" else part.results for part in parts(settings, partition)
    ]


def pending(
    settings: Settings,
    r: SyncClient,
    stream: str,
    group: str,
    idle_ms: int | None,
    consumer: str | None,
    count: int,
) -> list[dict[str, Any]]:
    rows = r.xpending_range(
        stream, group, min="-", max="+", count=count, consumername=consumer, idle=idle_ms
    )
    return [
        {
            "entry": _s(x["message_id"]),
            "consumer": _s(x["consumer"]),
            "idle_ms": int(x["time_since_delivered"]),
            "deliveries": int(x["times_delivered"]),
        }
        for x in rows
    ]


def claim(r: SyncClient, stream: str, group: str, min_idle_ms: int, to: str) -> int:
    """Move every entry idle at least `min_idle_ms` to consumer `to`."""
    moved, cursor = 0, "0-0"
    while True:
        # No JUSTID: with it redis-py returns the ids alone and drops the cursor.
        reply: Any = r.xautoclaim(stream, group, to, min_idle_ms, start_id=cursor, count=500)
        cursor = _s(reply[0])
        moved += len(reply[1])
        if cursor == "0-0":
            return moved


def _dead_letters(
    settings: Settings, r: SyncClient, partition: int | None, count: int | None = None
) -> list[tuple[Partition, str, dict[str, Any]]]:
    return [
        (part, entry, f)
        for part in parts(settings, partition)
        for entry, f in _entries(r, part.dlq, count)
    ]


def dlq_list(
    settings: Settings, r: SyncClient, count: int, partition: int | None = None
) -> list[dict[str, Any]]:
    rows = []
    for part, entry, f in _dead_letters(settings, r, partition, count):
        payload = f.get("event") or f.get("result") or b""
        try:
            body = msgpack.unpackb(payload, raw=False)
            event_id = body.get("id") if isinstance(body, dict) else None
        except Exception:
            event_id = None
        rows.append(
            {
                "partition": part.index,
                "dlq_entry": entry,
                "kind": "event" if "event" in f else "result",
                "id": event_id,
                "reason": _s(f.get("reason")),
                "consumer": _s(f.get("consumer")),
                "deliveries": _s(f.get("deliveries")),
                "sink": _s(f.get("sink")),
                "entry": _s(f.get("entry")),
            }
        )
    return rows


def dlq_replay(
    settings: Settings, r: SyncClient, ids: list[str] | None, partition: int | None = None
) -> int:
    """Put dead letters back: events onto their partition's images stream (a fresh delivery
    count), results onto its results stream (sinks drop the copies they already have). Each
    is removed from the dead-letter stream only after its re-publish."""
    replayed = 0
    for part, entry, f in _dead_letters(settings, r, partition):
        if ids and entry not in ids:
            continue
        if "event" in f:
            r.xadd(part.images, {"event": f["event"]})
        elif "result" in f:
            r.xadd(part.results, {"result": f["result"]})
        else:
            continue
        r.xdel(part.dlq, entry)
        replayed += 1
    return replayed


def dlq_purge(
    settings: Settings, r: SyncClient, ids: list[str] | None, partition: int | None = None
) -> int:
    purged = 0
    for part in parts(settings, partition):
        if ids:
            purged += int(r.xdel(part.dlq, *ids))
        else:
            purged += int(r.xlen(part.dlq))
            r.delete(part.dlq)
    return purged


def prune_consumers(
    settings: Settings, r: SyncClient, stream: str, group: str, idle_ms: int, to: str
) -> list[dict[str, Any]]:
    """Delete consumers idle at least `idle_ms` with no live heartbeat, after moving their
    pending entries to `to` (XDELCONSUMER alone would drop those entries from the group)."""
    keys = Keys(settings.prefix, settings.partitions)
    ensure_group_sync(r, stream, group)
    pruned = []
    for c in r.xinfo_consumers(stream, group):
        name = _s(c["name"])
        if name == to or int(c["idle"]) < idle_ms or r.exists(keys.consumer_claim(group, name)):
            continue
        moved = 0
        for row in r.xpending_range(
            stream, group, min="-", max="+", count=100_000, consumername=name
        ):
            r.xclaim(stream, group, to, 0, [row["message_id"]], justid=True)
            moved += 1
        left = int(r.xgroup_delconsumer(stream, group, name))
        pruned.append({"consumer": name, "moved": moved, "dropped": left})
    return pruned


def dump(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
