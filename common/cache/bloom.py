"""Bloom filter of image hashes that have a cached result, one per model.

Only a hint that saves cache reads for never-seen images: a "maybe" is always confirmed by the
cache itself, and an item is added after its cache entry is written. A Bloom filter cannot
forget, while cache entries expire; so the filter rotates by generation (one generation = one
cache TTL): items go into the current generation, look-ups consult the current and the previous
one, and each generation key expires after two TTLs. Capacity is per generation.

Native `BF.*` (Redis 8, Redis Stack) is used when the server has it, else a bitmap driven by Lua
with the same capacity and error rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import redis.exceptions

from facestream.common.cache import scripts as cache_scripts
from facestream.common.contract.keys import Keys
from facestream.common.settings import CacheSettings
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient, AsyncPipeline

Mode = Literal["native", "lua", "off"]


@dataclass(frozen=True, slots=True)
class BloomShape:
    bits: int
    hashes: int

    @classmethod
    def for_capacity(cls, capacity: int, error_rate: float) -> BloomShape:
        bits = math.ceil(-capacity * math.log(error_rate) / (math.log(2) ** 2))
        # A Redis string holds at most 2**32 bits.
        bits = min(bits, 2**32 - 1)
        hashes = max(1, round(bits / capacity * math.log(2)))
        return cls(bits, hashes)

    def offsets(self, sha256: str) -> list[int]:
        # The item is already a uniform 256-bit hash: double hashing over two of its 64-bit
        # words gives k independent-enough positions without hashing again.
        h1 = int(sha256[0:16], 16)
        h2 = int(sha256[16:32], 16) | 1
        return [(h1 + i * h2) % self.bits for i in range(self.hashes)]


async def server_has_native_bloom(client: AsyncClient, probe_key: str) -> bool:
    """Probe with a read-only BF.MEXISTS (redis-py cannot parse COMMAND INFO's nil entries)."""
    try:
        await client.execute_command("BF.MEXISTS", probe_key, "probe")
    except redis.exceptions.ResponseError as exc:
        # Absent, or not granted to this user (ACL): either way, the Lua filter serves.
        if "unknown command" in str(exc).lower() or str(exc).startswith("NOPERM"):
            return False
        raise
    except redis.exceptions.RedisError as exc:
        # A cluster client routes by the server's command table, and refuses a command it
        # does not list before sending it.
        if "doesn't exist in Redis commands" in str(exc):
            return False
        raise
    return True


async def resolve_bloom_mode(client: AsyncClient, wanted: str, probe_key: str) -> Mode:
    if wanted == "lua":
        return "lua"
    if wanted == "off":
        return "off"
    native = await server_has_native_bloom(client, probe_key)
    if wanted == "native" and not native:
        raise RuntimeError("FACESTREAM_BLOOM=native but the server has no BF.* commands")
    return "native" if native else "lua"


class BloomFilter:
    def __init__(
        self,
        keys: Keys,
        scripts: Scripts,
        model_tag: str,
        mode: Mode,
        capacity: int,
        error_rate: float,
        generation_ms: int,
    ) -> None:
        self.mode = mode
        self._keys = keys
        self._scripts = scripts
        self._model = model_tag
        self._capacity = capacity
        self._error_rate = error_rate
        self._generation_ms = generation_ms
        self._shape = BloomShape.for_capacity(capacity, error_rate)

    def _generation(self, now_ms: int | None = None) -> int:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now // self._generation_ms

    def _key(self, generation: int) -> str:
        return f"{self._keys.bloom(self._model)}:{generation}"

    def generation_keys(self) -> tuple[str, str]:
        """The keys a look-up consults now: the current generation and the previous one."""
        gen = self._generation()
        return self._key(gen), self._key(gen - 1)

    def script_offsets(self, sha256: str) -> list[int]:
        """The bitmap offsets of an item, as the Lua scripts take them ("lua" mode only)."""
        return self._shape.offsets(sha256) if self.mode == "lua" else []

    async def check(self, client: AsyncClient, shas: list[str]) -> list[bool]:
        """One round trip; True = maybe cached (read the cache), False = never cached."""
        if not shas:
            return []
        if self.mode == "off":
            return [True] * len(shas)
        gen = self._generation()
        offsets = [] if self.mode == "native" else [o for s in shas for o in self._shape.offsets(s)]

        def build(pipe: AsyncPipeline) -> None:
            for g in (gen, gen - 1):
                if self.mode == "native":
                    pipe.execute_command("BF.MEXISTS", self._key(g), *shas)
                else:
                    cache_scripts.bloom_check(
                        self._scripts, pipe, self._key(g), self._shape.hashes, offsets
                    )

        current, previous = await self._scripts.run(client, build)
        return [bool(a) or bool(b) for a, b in zip(current, previous, strict=True)]

    async def add(self, client: AsyncClient, shas: list[str]) -> None:
        """Add in a round trip of their own (the detector queues its adds on its write)."""
        await self._scripts.run(client, lambda pipe: self.queue_add(pipe, shas))

    def queue_add(self, pipe: AsyncPipeline, shas: list[str]) -> None:
        """Queue the adds on the caller's pipeline (after the cache writes they vouch for)."""
        if not shas or self.mode == "off":
            return
        key = self._key(self._generation())
        ttl_ms = 2 * self._generation_ms + 60_000
        if self.mode == "native":
            pipe.execute_command(
                "BF.INSERT",
                key,
                "CAPACITY",
                self._capacity,
                "ERROR",
                self._error_rate,
                "ITEMS",
                *shas,
            )
            pipe.execute_command("PEXPIRE", key, ttl_ms, "NX")
        else:
            offsets = [o for sha in shas for o in self._shape.offsets(sha)]
            cache_scripts.bloom_add(self._scripts, pipe, key, self._shape.hashes, ttl_ms, offsets)

    @property
    def shape(self) -> BloomShape:
        return self._shape


async def open_bloom(
    client: AsyncClient, scripts: Scripts, keys: Keys, model_tag: str, settings: CacheSettings
) -> BloomFilter:
    """The Bloom filter of one model's cache entries as the settings ask for it, its mode
    resolved against the server (RuntimeError: `native` asked of a server without BF.*)."""
    mode = await resolve_bloom_mode(client, settings.bloom, keys.bloom(model_tag))
    return BloomFilter(
        keys,
        scripts,
        model_tag,
        mode,
        settings.bloom_capacity,
        settings.bloom_error_rate,
        settings.cache_ttl_s * 1000,
    )
