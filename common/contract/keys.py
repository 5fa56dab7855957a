"""Every Redis key name facestream uses, built in one place.

Keys that one Lua script touches together share a hash tag, so they land in one cluster slot:
the cache entry and the single-flight lock of one (image, model) both carry `{<sha256>}`, and
with more than one partition each partition's images, results and dead-letter streams carry
the partition's tag (with one partition the v1 names stay as they were, untagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@cache
def partition_tag(index: int, partitions: int) -> str:
    """The hash tag of one partition, chosen so its slot falls in the index-th equal slice of
    the 16384 slots. `redis-cli --cluster create` gives each primary an equal contiguous range,
    so with a multiple of the primary count as partitions, every primary holds the same number
    of partitions (plain `p0`, `p1`, ... would land wherever CRC16 puts them)."""
    low = index * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    salt = 0
    while True:  # about `partitions` tries each: a slice holds 1/partitions of the slots
        tag = f"p{index}.{salt}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        salt += 1


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition's streams: they share a hash tag (one slot) when there are several."""

    index: int
    images: str
    results: str
    dlq: str


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "facestream"
    partitions: int = 1
    parts: tuple[Partition, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 256:
            raise ValueError(f"partitions must be 1..256: {self.partitions}")
        object.__setattr__(self, "parts", tuple(self._partition(i) for i in range(self.partitions)))

    def _partition(self, index: int) -> Partition:
        if self.partitions == 1:
            base = self.prefix  # contract v1 names
        else:
            base = f"{self.prefix}:{{{partition_tag(index, self.partitions)}}}"
        return Partition(index, f"{base}:images", f"{base}:results", f"{base}:dlq")

    def streams_in_one_slot(self, cluster: bool) -> bool:
        """Whether a script may touch one partition's streams together: on one server always;
        on a cluster when they share the partition's tag (the untagged v1 names do not)."""
        return self.partitions > 1 or not cluster

    # With one partition: the streams of contract v1. Code that serves several partitions
    # goes through `parts`; these refuse to guess which partition is meant.
    @property
    def images(self) -> str:
        return self._single().images

    @property
    def results(self) -> str:
        return self._single().results

    @property
    def dlq(self) -> str:
        return self._single().dlq

    def _single(self) -> Partition:
        if self.partitions != 1:
            raise ValueError(f"{self.partitions} partitions: name one (keys.parts[i])")
        return self.parts[0]

    def cache(self, sha256: str, model_tag: str) -> str:
        return f"{self.prefix}:face:{{{sha256}}}:{model_tag}"

    def lock(self, sha256: str, model_tag: str) -> str:
        return f"{self.prefix}:lock:{{{sha256}}}:{model_tag}"

    def bloom(self, model_tag: str) -> str:
        return f"{self.prefix}:bloom:{model_tag}"

    def consumer_claim(self, group: str, consumer: str) -> str:
        """Liveness claim on a consumer name, so two processes never share one PEL."""
        return f"{self.prefix}:consumer:{group}:{consumer}"

    def serving(self, group: str) -> str:
        """Hash: each live detector of `group` -> the model tag it serves (and until when), so
        a gateway knows which cache entries answer for the detectors."""
        return f"{self.prefix}:serving:{group}"

    def reply_stream(self, name: str) -> str:
        return f"{self.prefix}:reply:{name}"
