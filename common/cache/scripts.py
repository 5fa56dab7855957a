"""Typed calls of the result cache's Lua scripts (common/cache/lua/*.lua; each file's header is
its contract). Each call queues EVALSHA on a pipeline when given one, else runs at once on a
client (common/streams/scripts.py `Scripts.call`)."""

from __future__ import annotations

from typing import Any

from facestream.common.streams.scripts import Scripts, ScriptTarget


def lookup_or_lock(
    scripts: Scripts,
    pipe: ScriptTarget,
    cache_key: str,
    lock_key: str,
    token: str,
    ttl_ms: int,
    check_cache: bool,
    owner: str,
) -> Any:
    return scripts.call(
        "lookup_or_lock",
        pipe,
        [cache_key, lock_key],
        [token, ttl_ms, "1" if check_cache else "0", owner],
    )


def cache_put(
    scripts: Scripts,
    pipe: ScriptTarget,
    cache_key: str,
    lock_key: str,
    token: str,
    ttl_ms: int,
    faces: bytes,
    width: int,
    height: int,
    model: str,
    created_ms: int,
) -> Any:
    return scripts.call(
        "cache_put",
        pipe,
        [cache_key, lock_key],
        [token, ttl_ms, faces, width, height, model, created_ms],
    )


def bloom_check(scripts: Scripts, pipe: ScriptTarget, key: str, k: int, offsets: list[int]) -> Any:
    return scripts.call("bloom_check", pipe, [key], [k, *offsets])


def bloom_add(
    scripts: Scripts, pipe: ScriptTarget, key: str, k: int, ttl_ms: int, offsets: list[int]
) -> Any:
    return scripts.call("bloom_add", pipe, [key], [k, ttl_ms, *offsets])


def cached_answers(scripts: Scripts, pipe: ScriptTarget, keys: list[str], args: list[Any]) -> Any:
    """KEYS and ARGV as cached_answers.lua's header lays them out; built by
    common/cache/lookup.py `lookup_and_publish`, the one caller."""
    return scripts.call("cached_answers", pipe, keys, args)
