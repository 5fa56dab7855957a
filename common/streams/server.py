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
