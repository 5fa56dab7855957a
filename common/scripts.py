"""Lua scripts (common/lua/*.lua) registered once per client, with typed call wrappers.

Each wrapper queues onto a pipeline when given one (`pipe=`), so a batch's scripts travel in
one round trip; redis-py loads a script the server lacks (NOSCRIPT) before the pipeline runs.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

_NAMES = (
    "lookup_or_lock",
    "cache_put",
    "lock_release",
    "lock_extend",
    "emit",
    "dead_letter",
    "bloom_check",
    "bloom_add",
)


@cache
def script_source(name: str) -> str:
    return (files("common") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client (sync or asyncio redis-py client)."""

    def __init__(self, client: Any) -> None:
        self._s = {name: client.register_script(script_source(name)) for name in _NAMES}

    def _call(self, name: str, pipe: Any, keys: list[str], args: list[Any]) -> Any:
        script = self._s[name]
        if isinstance(getattr(pipe, "scripts", None), set):
            # A pipeline (sync or asyncio): queue EVALSHA now; the pipeline loads the script
            # before executing if the server lacks it.
            pipe.scripts.add(script)
            return pipe.evalsha(script.sha, len(keys), *keys, *args)
        # A plain client: a result (sync) or an awaitable (asyncio).
        return script(keys=keys, args=args, client=pipe)

    def lookup_or_lock(
        self,
        pipe: Any,
        cache_key: str,
        lock_key: str,
        token: str,
        ttl_ms: int,
        check_cache: bool,
        owner: str,
    ) -> Any:
        return self._call(
            "lookup_or_lock",
            pipe,
            [cache_key, lock_key],
            [token, ttl_ms, "1" if check_cache else "0", owner],
        )

    def cache_put(
        self,
        pipe: Any,
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
        return self._call(
            "cache_put",
            pipe,
            [cache_key, lock_key],
            [token, ttl_ms, faces, width, height, model, created_ms],
        )

    def lock_release(self, pipe: Any, lock_key: str, token: str) -> Any:
        return self._call("lock_release", pipe, [lock_key], [token])

    def lock_extend(self, pipe: Any, lock_key: str, token: str, ttl_ms: int) -> Any:
        return self._call("lock_extend", pipe, [lock_key], [token, ttl_ms])

    def emit(
        self,
        pipe: Any,
        images: str,
        results: str,
        group: str,
        delete_acked: bool,
        pairs: list[tuple[str, bytes]],
    ) -> Any:
        args: list[Any] = [group, "1" if delete_acked else "0"]
        for entry_id, payload in pairs:
            args += [entry_id, payload]
        return self._call("emit", pipe, [images, results], args)

    def dead_letter(
        self,
        pipe: Any,
        images: str,
        results: str,
        dlq: str,
        group: str,
        delete_acked: bool,
        consumer: str,
        quads: list[tuple[str, bytes, bytes, int]],
    ) -> Any:
        args: list[Any] = [group, "1" if delete_acked else "0", consumer]
        for quad in quads:
            args += list(quad)
        return self._call("dead_letter", pipe, [images, results, dlq], args)

    def bloom_check(self, pipe: Any, key: str, k: int, offsets: list[int]) -> Any:
        return self._call("bloom_check", pipe, [key], [k, *offsets])

    def bloom_add(self, pipe: Any, key: str, k: int, ttl_ms: int, offsets: list[int]) -> Any:
        return self._call("bloom_add", pipe, [key], [k, ttl_ms, *offsets])
