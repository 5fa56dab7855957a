"""What the Redis server can do, read from INFO (newer stream features are switched on only
where the server has them)."""

from __future__ import annotations

from typing import Any


def version_of(info: dict[str, Any]) -> tuple[int, ...]:
    raw = str(info.get("redis_version", "0"))
    parts = []
    for piece in raw.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def has_idempotent_xadd(info: dict[str, Any]) -> bool:
    """XADD ... IDMP producer iid (Redis 8.6): a retried XADD returns the first entry's id.
    Forks that report an old redis_version (Valkey says 7.2.4) do not have it."""
    return version_of(info) >= (8, 6) and "valkey_version" not in info


def idempotent_xadd_from_hello(reply: Any) -> bool:
    """`has_idempotent_xadd` from a HELLO reply (server name and version), which every user may
    ask for: the ingest user may not read INFO."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    if isinstance(reply, list):  # RESP2 without redis-py's callback: a flat list of pairs
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    fields = {text(k): v for k, v in dict(reply or {}).items()}
    if "server" not in fields and fields:  # a cluster client's per-node answers
        return idempotent_xadd_from_hello(next(iter(fields.values())))
    info = {"redis_version": text(fields.get("version", "0"))}
    if text(fields.get("server", "redis")).lower() != "redis":
        info["valkey_version"] = info["redis_version"]  # a fork: no IDMP whatever it reports
    return has_idempotent_xadd(info)
