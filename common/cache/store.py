"""Writing answers into the result cache: each entry with its TTL, releasing the writer's
single-flight lock in the same script (cache_put.lua), then the Bloom adds that vouch for
them, queued on the caller's pipeline (the detector's write step, detector/writer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from facestream.common.cache import scripts as cache_scripts
from facestream.common.cache.bloom import BloomFilter
from facestream.common.cache.lookup import CacheView
from facestream.common.contract.schema import Face, pack_faces
from facestream.common.streams.types import AsyncPipeline


@dataclass(frozen=True, slots=True)
class Put:
    sha: str
    token: str  # the writer's lock token: released only if it still holds the lock
    faces: list[Face]
    width: int
    height: int


def queue_puts(
    pipe: AsyncPipeline,
    view: CacheView,
    bloom: BloomFilter,
    puts: list[Put],
    ttl_ms: int,
    created_ms: int,
) -> None:
    for put in puts:
        cache_scripts.cache_put(
            view.scripts,
            pipe,
            view.cache_key(put.sha),
            view.lock_key(put.sha),
            put.token,
            ttl_ms,
            pack_faces(put.faces),
            put.width,
            put.height,
            view.model_tag,
            created_ms,
        )
    bloom.queue_add(pipe, [put.sha for put in puts])


def queue_unsized(
    pipe: AsyncPipeline,
    view: CacheView,
    sha: str,
    faces: list[Face],
    ttl_ms: int,
    created_ms: int,
) -> None:
    """An entry found elsewhere (the old design's cache, `facestream migrate`): no lock to
    release, and no image size, which it did not store; a detector serving it reads the size
    from the image's header, a gateway leaves it to the detectors (`Entry.sized`). The caller
    queues the Bloom adds after its entries."""
    key = view.cache_key(sha)
    fields: list[bytes | str | int] = ["faces", pack_faces(faces), "width", "", "height", ""]
    pipe.hset(key, items=[*fields, "model", view.model_tag, "created_ms", created_ms])
    pipe.pexpire(key, ttl_ms)
