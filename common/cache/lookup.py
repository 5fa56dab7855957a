"""Looking images up in the result cache, the two ways its readers do.

- `lookup_or_lock` (a detector): per image one lookup_or_lock.lua call, pipelined: the cached
  answer, or the single-flight lock taken for the caller, or the lock another worker holds.
- `lookup_and_publish` / `lookup_apart` (a gateway answering waiting requests at the door):
  read only; on one server cached_answers.lua also adds each hit's result to the results
  stream in the same round trip, on a cluster the filter, the entries and the streams are
  different slots and are read in ordered round trips (the caller publishes after).

Both read entries through `Entry.read` (common/cache/entry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facestream.common.cache import scripts as cache_scripts
from facestream.common.cache.bloom import BloomFilter
from facestream.common.cache.entry import READ_FIELDS, Entry
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Face, unpack_faces
from facestream.common.streams.locks import LockKeeper
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient, AsyncPipeline

HIT, ACQUIRED, BUSY = 1, 2, 3  # lookup_or_lock.lua's first field
NEVER, CACHED = 0, 1  # cached_answers.lua's first field; 2: maybe, not cached


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


@dataclass(frozen=True, slots=True)
class CacheView:
    """Where one model's entries are read: the client, its scripts and the key names."""

    client: AsyncClient
    scripts: Scripts
    keys: Keys
    model_tag: str

    def cache_key(self, sha: str) -> str:
        return self.keys.cache(sha, self.model_tag)

    def lock_key(self, sha: str) -> str:
        return self.keys.lock(sha, self.model_tag)


# Per image, what the look-up knows of the Bloom filter: its answer (False: never cached), or
# None: not asked yet, the script asks it in the same call (one server only).
Checks = dict[str, bool | None]


@dataclass(frozen=True, slots=True)
class Resolved:
    lookups: dict[str, Lookup]
    maybe: int  # of the images whose filter the script asked: "maybe cached"
    never: int  # and "never cached"


async def lookup_or_lock(
    view: CacheView,
    checks: Checks,
    locks: LockKeeper,
    lock_ttl_ms: int,
    bloom: BloomFilter | None = None,
) -> Resolved:
    """Per image: its cached answer, else the lock taken and handed to `locks` to keep, else
    Busy. One round trip for the batch; where `checks` says None, `bloom` is asked in the same
    script (the filter's keys must be on the images' server: never on a cluster)."""
    tokens = {sha: locks.new_token() for sha in checks}
    generations = bloom.generation_keys() if bloom is not None else ("", "")

    def check_of(sha: str, check: bool | None) -> bool | cache_scripts.FilterAsk:
        if check is not None:
            return check
        if bloom is None:
            raise ValueError("no Bloom filter to ask")
        return cache_scripts.FilterAsk(*generations, bloom.mode, sha, bloom.script_offsets(sha))

    def build(pipe: AsyncPipeline) -> None:
        for sha, check in checks.items():
            cache_scripts.lookup_or_lock(
                view.scripts,
                pipe,
                view.cache_key(sha),
                view.lock_key(sha),
                tokens[sha],
                lock_ttl_ms,
                check_of(sha, check),
                locks.owner,
            )

    replies = await view.scripts.run(view.client, build)
    out: dict[str, Lookup] = {}
    asked = [0, 0]  # never, maybe
    for (sha, check), reply in zip(checks.items(), replies, strict=True):
        if check is None:
            asked[int(reply[-1])] += 1
        out[sha] = _lookup(view, locks, sha, tokens[sha], reply)
    return Resolved(out, maybe=asked[1], never=asked[0])


def _lookup(view: CacheView, locks: LockKeeper, sha: str, token: str, reply: list[Any]) -> Lookup:
    kind = int(reply[0])
    if kind == HIT:
        entry = Entry.read(reply[1:4])
        if entry is None:
            raise ValueError(f"lookup_or_lock.lua answered a hit without faces for {sha}")
        return Hit(unpack_faces(entry.faces), (entry.width, entry.height) if entry.sized else None)
    if kind == ACQUIRED:
        # Also after a deferral: the holder died (its lock expired) without a result.
        locks.hold(view.lock_key(sha), token)
        return Acquired()
    if kind == BUSY:
        return Busy()
    raise ValueError(f"lookup_or_lock.lua answered {kind} for {sha}")


@dataclass(frozen=True, slots=True)
class Found:
    """A gateway look-up's answer for each request: the entry where it answers on its own
    (sized), whether the script published its result, and the Bloom filter's counts per
    distinct image."""

    entries: list[Entry | None]
    published: list[bool]
    maybe: int
    never: int


async def lookup_and_publish(
    view: CacheView, bloom: BloomFilter, shas: list[str], heads: list[bytes], streams: list[str]
) -> Found:
    """One server: one cached_answers.lua call looks every request up and adds each hit whose
    head is not empty (`entry.result_head`) to its results stream."""
    current, previous = bloom.generation_keys()
    args: list[Any] = [bloom.mode, bloom.shape.hashes if bloom.mode == "lua" else 0, len(shas)]
    for sha, head in zip(shas, heads, strict=True):
        args += [sha, head, *bloom.script_offsets(sha)]
    keys = [current, previous, *(view.cache_key(sha) for sha in shas), *streams]
    replies = await cache_scripts.cached_answers(view.scripts, view.client, keys, args)
    # Counted per distinct image, as on a cluster: a burst of one photo is one answer.
    kinds = dict(zip(shas, (int(reply[0]) for reply in replies), strict=True))
    never = list(kinds.values()).count(NEVER)
    entries = [
        _sized(Entry.read(reply[2:5])) if int(reply[0]) == CACHED else None for reply in replies
    ]
    published = [int(reply[0]) == CACHED and int(reply[1]) == 1 for reply in replies]
    return Found(entries, published, len(kinds) - never, never)


async def lookup_apart(view: CacheView, bloom: BloomFilter, shas: list[str]) -> Found:
    """A cluster: the filter, then the entries (nothing published: the caller does)."""
    distinct = list(dict.fromkeys(shas))
    maybe = await bloom.check(view.client, distinct)
    asked = [sha for sha, m in zip(distinct, maybe, strict=True) if m]
    rows: dict[str, Entry | None] = {}
    if asked:
        pipe = view.client.pipeline(transaction=False)
        for sha in asked:
            pipe.hmget(view.cache_key(sha), list(READ_FIELDS))
        rows = {sha: Entry.read(row) for sha, row in zip(asked, await pipe.execute(), strict=True)}
    entries = [_sized(rows.get(sha)) for sha in shas]
    return Found(entries, [False] * len(shas), sum(maybe), len(maybe) - sum(maybe))


def _sized(entry: Entry | None) -> Entry | None:
    """An entry the gateway answers with; one without a size is left to the detector, which
    reads it from the image's header."""
    return entry if entry is not None and entry.sized else None
