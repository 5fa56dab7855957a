"""Typed calls of the result cache's Lua scripts (common/cache/lua/*.lua; each file's header is
its contract). Each call queues EVALSHA on a pipeline when given one, else runs at once on a
client (common/streams/scripts.py `Scripts.call`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facestream.common.streams.scripts import Scripts, ScriptTarget
from facestream.common.streams.types import AsyncClient


@dataclass(frozen=True, slots=True)
class FilterAsk:
    """What lookup_or_lock.lua needs to ask the Bloom filter itself (one server only: the
    filter's keys are other slots than the image's): its two generations, its mode, the image's
    sha256 (native BF.*) and its bitmap offsets (the Lua bitmap)."""

    current: str
    previous: str
    mode: str
    sha: str
    offsets: list[int]


def lookup_or_lock(
    scripts: Scripts,
    pipe: ScriptTarget,
    cache_key: str,
    lock_key: str,
    token: str,
    ttl_ms: int,
    check_cache: bool | FilterAsk,
    owner: str,
) -> Any:
    """`check_cache`: the Bloom filter's answer already known (False: never cached), or how the
    script asks the filter itself (its answer then ends the reply)."""
    keys = [cache_key, lock_key]
    if isinstance(check_cache, FilterAsk):
        ask = check_cache
        keys += [ask.current, ask.previous]
        args = [token, ttl_ms, "bloom", owner, ask.mode, ask.sha, *ask.offsets]
        return scripts.call("lookup_or_lock", pipe, keys, args)
    return scripts.call(
        "lookup_or_lock", pipe, keys, [token, ttl_ms, "1" if check_cache else "0", owner]
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


async def cached_answers(
    scripts: Scripts, client: AsyncClient, keys: list[str], args: list[Any]
) -> Any:
    """KEYS and ARGV as cached_answers.lua's header lays them out; built by
    common/cache/lookup.py `lookup_and_publish`, the one caller. Through the scripts' hotline
    where they have one: this runs once per event-loop cycle of requests at the gateway."""
    return await scripts.run_one(client, "cached_answers", keys, args)
