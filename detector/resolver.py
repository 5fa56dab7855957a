"""What the cache knows of a batch of images: two round trips, whatever the batch's size.

First the Bloom filter (one round trip for every image of the batch): "never cached" skips the
cache read. Then, per image, `lookup_or_lock.lua` (one slot-local script each, pipelined): the
cached answer, the single-flight lock taken for us, or the lock held by another worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from facestream.common.contract.schema import Face, unpack_faces
from facestream.common.streams.types import AsyncPipeline
from facestream.detector import metrics
from facestream.detector.context import Stage

HIT, ACQUIRED, BUSY = 1, 2, 3


@dataclass(frozen=True, slots=True)
class Hit:
    faces: list[Face]
    size: tuple[int, int] | None  # None: an entry imported without one (read the header)


@dataclass(frozen=True, slots=True)
class Acquired:
    """The lock is ours (and held by the lock keeper until the answer is written)."""


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker holds the lock: its answer will land in the cache."""


Lookup = Hit | Acquired | Busy


class Resolver(Stage):
    async def maybe_cached(self, shas: list[str]) -> dict[str, bool]:
        """The Bloom filter's word per image: False means never cached (no cache read)."""
        maybe = await self.bloom.check(self.client, shas)
        metrics.BLOOM_MAYBE.inc(sum(maybe))
        metrics.BLOOM_NEVER.inc(len(maybe) - sum(maybe))
        return dict(zip(shas, maybe, strict=True))

    def own_write_in_flight(self, sha: str) -> bool:
        """Our own answer to this image is being written (we still hold its lock): a look-up
        now would take our own lock over (the owner-prefix rule) and infer it a second time."""
        return self.locks.token(self.keys.lock(sha, self.model_tag)) is not None

    async def lookup(self, check_cache: dict[str, bool]) -> dict[str, Lookup]:
        tokens = {sha: self.locks.new_token() for sha in check_cache}

        def build(pipe: AsyncPipeline) -> None:
            for sha, check in check_cache.items():
                self.scripts.lookup_or_lock(
                    pipe,
                    self.keys.cache(sha, self.model_tag),
                    self.keys.lock(sha, self.model_tag),
                    tokens[sha],
                    self.settings.lock_ttl_ms,
                    check,
                    self.locks.owner,
                )

        replies = await self.scripts.run(self.client, build)
        out: dict[str, Lookup] = {}
        for sha, reply in zip(check_cache, replies, strict=True):
            kind = int(reply[0])
            if kind == HIT:
                size = (int(reply[2]), int(reply[3])) if reply[2] else None
                out[sha] = Hit(unpack_faces(reply[1]), size)
            elif kind == ACQUIRED:
                # Also after a deferral: the holder died (its lock expired) without a result.
                self.locks.hold(self.keys.lock(sha, self.model_tag), tokens[sha])
                out[sha] = Acquired()
            elif kind == BUSY:
                out[sha] = Busy()
            else:
                raise ValueError(f"lookup_or_lock.lua answered {kind} for {sha}")
        return out
