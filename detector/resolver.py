"""What the cache knows of a batch of images: one round trip (two on a cluster), whatever the
batch's size.

The Bloom filter first ("never cached" skips the cache read), then the look-up that takes the
single-flight lock on a miss (common/cache/lookup.py `lookup_or_lock`): the cached answer, the
lock taken for us, or the lock held by another worker. On one server both are one script call
per image, pipelined: one round trip for the batch; on a cluster, where the filter's keys are
in other slots, the filter is a round trip of its own first.
"""

from __future__ import annotations

from facestream.common.cache.lookup import Checks, Lookup, lookup_or_lock
from facestream.detector import metrics
from facestream.detector.context import WithContext


class Resolver(WithContext):
    async def maybe_cached(self, shas: list[str]) -> Checks:
        """The Bloom filter's word per image: False means never cached (no cache read). On one
        server nothing is asked here (None): the look-up's script asks the filter itself, and
        the two round trips are one."""
        if not self.settings.cluster:
            return dict.fromkeys(shas)
        maybe = await self.bloom.check(self.client, shas)
        metrics.BLOOM_MAYBE.inc(sum(maybe))
        metrics.BLOOM_NEVER.inc(len(maybe) - sum(maybe))
        return dict(zip(shas, maybe, strict=True))

    def own_write_in_flight(self, sha: str) -> bool:
        """Our own answer to this image is being written (we still hold its lock): a look-up
        now would take our own lock over (the owner-prefix rule) and infer it a second time."""
        return self.locks.token(self.cache.lock_key(sha)) is not None

    async def lookup(self, checks: Checks) -> dict[str, Lookup]:
        s = self.settings
        resolved = await lookup_or_lock(self.cache, checks, self.locks, s.lock_ttl_ms, self.bloom)
        if resolved.maybe or resolved.never:
            metrics.BLOOM_MAYBE.inc(resolved.maybe)
            metrics.BLOOM_NEVER.inc(resolved.never)
        return resolved.lookups
