"""What the cache knows of a batch of images: two round trips, whatever the batch's size.

First the Bloom filter (one round trip for every image of the batch): "never cached" skips the
cache read. Then the look-up that takes the single-flight lock on a miss (common/cache/lookup.py
`lookup_or_lock`): the cached answer, the lock taken for us, or the lock held by another worker.
"""

from __future__ import annotations

from facestream.common.cache.lookup import Lookup, lookup_or_lock
from facestream.detector import metrics
from facestream.detector.context import WithContext


class Resolver(WithContext):
    async def maybe_cached(self, shas: list[str]) -> dict[str, bool]:
        """The Bloom filter's word per image: False means never cached (no cache read)."""
        maybe = await self.bloom.check(self.client, shas)
        metrics.BLOOM_MAYBE.inc(sum(maybe))
        metrics.BLOOM_NEVER.inc(len(maybe) - sum(maybe))
        return dict(zip(shas, maybe, strict=True))

    def own_write_in_flight(self, sha: str) -> bool:
        """Our own answer to this image is being written (we still hold its lock): a look-up
        now would take our own lock over (the owner-prefix rule) and infer it a second time."""
        return self.locks.token(self.cache.lock_key(sha)) is not None

    async def lookup(self, check_cache: dict[str, bool]) -> dict[str, Lookup]:
        return await lookup_or_lock(self.cache, check_cache, self.locks, self.settings.lock_ttl_ms)
