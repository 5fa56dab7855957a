"""What every part of a detector shares, made once at start (detector/worker.py) and handed to
the resolver, the batch processor and the writer instead of the same nine arguments each."""

from __future__ import annotations

from dataclasses import dataclass, field

from facestream.common.cache.bloom import BloomFilter
from facestream.common.cache.lookup import CacheView
from facestream.common.contract.keys import Keys
from facestream.common.settings import DetectorSettings
from facestream.common.streams.locks import LockKeeper
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient
from facestream.detector.jobs import Counters


@dataclass(frozen=True, slots=True)
class Context:
    settings: DetectorSettings
    client: AsyncClient
    keys: Keys
    scripts: Scripts
    bloom: BloomFilter
    locks: LockKeeper
    model_tag: str  # the served model's tag: every cache, lock and Bloom key carries it
    counters: Counters
    # The served model's cache entries and locks (common/cache/), from the fields above.
    cache: CacheView = field(init=False)

    def __post_init__(self) -> None:
        view = CacheView(self.client, self.scripts, self.keys, self.model_tag)
        object.__setattr__(self, "cache", view)


class WithContext:
    """A detector part whose shared context's parts are its attributes."""

    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.client = ctx.client
        self.keys = ctx.keys
        self.scripts = ctx.scripts
        self.cache = ctx.cache
        self.bloom = ctx.bloom
        self.locks = ctx.locks
        self.model_tag = ctx.model_tag
        self.counters = ctx.counters
