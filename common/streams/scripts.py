"""Lua scripts registered once per client: the streams' own (common/streams/lua/*.lua: ack-gated
emits, dead letters, token-checked locks) and the result cache's (common/cache/lua/*.lua, with
their typed wrappers in common/cache/scripts.py).

Each wrapper queues EVALSHA onto a pipeline when given one (`pipe=`), so a batch's scripts
travel in one round trip. `Scripts.run` builds and runs such a pipeline: scripts are loaded
only when a server answers NOSCRIPT (first use, a restart, a failover to a replica), on every
primary of a cluster, and the pipeline is built and run once more. redis-py's own pipeline
script support would instead ask SCRIPT EXISTS before every pipeline (a round trip per batch)
and has none on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any, TypeAlias

import redis.asyncio.client
import redis.asyncio.cluster
import redis.client
import redis.cluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from facestream.common.streams.connection import pipeline
from facestream.common.streams.hotline import Hotline, HotlinePipeline
from facestream.common.streams.types import (
    AsyncClient,
    AsyncPipeline,
    CommandQueue,
    SyncClient,
)

# Where a script call goes: queued on a pipeline, or run at once on a client.
ScriptTarget: TypeAlias = CommandQueue | AsyncClient | SyncClient

_PIPELINES = (
    HotlinePipeline,
    redis.asyncio.client.Pipeline,
    redis.asyncio.cluster.ClusterPipeline,
    redis.client.Pipeline,
    redis.cluster.ClusterPipeline,
)

_ASYNC_CLIENTS = (redis.asyncio.client.Redis, redis.asyncio.cluster.RedisCluster)
_SYNC_CLIENTS = (redis.client.Redis, redis.cluster.RedisCluster)

# Every script, by name, with the package whose lua/ folder holds it.
_STREAMS, _CACHE = "facestream.common.streams", "facestream.common.cache"
_SOURCES = {
    "lock_release": _STREAMS,
    "lock_extend": _STREAMS,
    "emit": _STREAMS,
    "dead_letter": _STREAMS,
    "sink_dead_letter": _STREAMS,
    "lookup_or_lock": _CACHE,
    "cache_put": _CACHE,
    "bloom_check": _CACHE,
    "bloom_add": _CACHE,
    "cached_answers": _CACHE,
}
_NAMES = tuple(_SOURCES)


# One step of a write: queues commands onto a pipeline (run by `Scripts.run` / `run_steps`).
Step: TypeAlias = Callable[[AsyncPipeline], None]


@cache
def script_source(name: str) -> str:
    return (files(_SOURCES[name]) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client (sync or asyncio redis-py client). With a `hotline`
    to the same server (common/streams/hotline.py), `run`, `run_steps` and `run_one` send their
    commands through it instead of through the client's pool."""

    def __init__(self, client: AsyncClient | SyncClient, hotline: Hotline | None = None) -> None:
        self._s = {name: client.register_script(script_source(name)) for name in _NAMES}
        self.hotline = hotline

    def call(self, name: str, pipe: ScriptTarget, keys: list[str], args: list[Any]) -> Any:
        """Run (or queue, on a pipeline) script `name` with its KEYS and ARGV; the wrappers below,
        common/streams/ack_gated.py and common/cache/scripts.py say what each script's
        arguments are."""
        script = self._s[name]
        if isinstance(pipe, _PIPELINES):
            # A pipeline (plain or cluster): queue EVALSHA; `run` recovers from NOSCRIPT.
            # Through execute_command: redis-py's cluster pipeline refuses its evalsha method
            # (keys might span nodes); every script here touches one slot, which the cluster
            # pipeline routes by the keys after numkeys.
            return pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        # A plain client: a result (sync) or an awaitable (asyncio); redis-py's Script loads
        # itself on NOSCRIPT.
        if isinstance(script, AsyncScript) and isinstance(pipe, _ASYNC_CLIENTS):
            return script(keys=keys, args=args, client=pipe)
        if isinstance(script, Script) and isinstance(pipe, _SYNC_CLIENTS):
            return script(keys=keys, args=args, client=pipe)
        raise TypeError(f"{type(pipe).__name__} is neither a pipeline nor this script's client")

    def close(self) -> None:
        """Close the hotline, if any (the client is its owner's to close)."""
        if self.hotline is not None:
            self.hotline.close()

    def load_blocking(self, client: SyncClient) -> None:
        """`load` for a synchronous client (benchmarks and tools that pipeline scripts)."""
        for name in _NAMES:
            client.script_load(script_source(name))

    async def load(self, client: AsyncClient) -> None:
        """SCRIPT LOAD every script (redis-py sends it to every primary of a cluster)."""
        for name in _NAMES:
            await client.script_load(script_source(name))

    async def run(
        self, client: AsyncClient, build: Step, *, raise_on_error: bool = True
    ) -> list[Any]:
        """Build a non-transactional pipeline with `build(pipe)` and run it. On NOSCRIPT the
        scripts are loaded and the pipeline is built and run again, so every pipeline given
        here must be safe to repeat (all of facestream's are: token-checked locks, idempotent
        cache and Bloom writes, ack-gated emits, replies deduped by id)."""
        for attempt in (0, 1):
            pipe = pipeline(client, self.hotline)
            build(pipe)
            try:
                answers: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
            except NoScriptError:
                if attempt:
                    raise
                await self.load(client)
                continue
            if attempt == 0 and any(isinstance(a, NoScriptError) for a in answers):
                await self.load(client)
                continue
            return answers
        raise AssertionError("unreachable")

    async def run_one(
        self, client: AsyncClient, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """Run script `name` at once: through the hotline where there is one (loading the
        scripts on NOSCRIPT), else as redis-py's script object on `client`."""
        if self.hotline is None:
            return await self.call(name, client, keys, args)
        (answer,) = await self.run(client, lambda pipe: self.call(name, pipe, keys, args))
        return answer

    async def run_steps(
        self, client: AsyncClient, steps: list[Step], *, together: bool
    ) -> list[list[Any]]:
        """Run steps whose order matters; the answers of each step (errors as values).

        `together`: one pipeline, as one server runs a connection's commands in order.
        Otherwise (a cluster) one round trip per step, stopping after a step with an error: a
        cluster pipeline sends each node its share at once, so a step on one node could land
        before an earlier step on another."""
        if together:
            bounds: list[int] = []

            def build(pipe: AsyncPipeline) -> None:
                bounds.clear()
                for step in steps:
                    step(pipe)
                    bounds.append(len(pipe))

            answers = await self.run(client, build, raise_on_error=False)
            starts = [0, *bounds[:-1]]
            return [answers[a:b] for a, b in zip(starts, bounds, strict=True)]
        out: list[list[Any]] = []
        for step in steps:
            out.append(await self.run(client, step, raise_on_error=False))
            if any(isinstance(a, Exception) for a in out[-1]):
                break
        return out

    def lock_release(self, pipe: ScriptTarget, lock_key: str, token: str) -> Any:
        return self.call("lock_release", pipe, [lock_key], [token])

    def lock_extend(self, pipe: ScriptTarget, lock_key: str, token: str, ttl_ms: int) -> Any:
        return self.call("lock_extend", pipe, [lock_key], [token, ttl_ms])
