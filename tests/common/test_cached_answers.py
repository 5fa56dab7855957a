"""cached_answers.lua on real Redis: a hit's result is added to the results stream in the same
script, from a head the gateway packs and the cache entry's own fields."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgpack
import redis

from facestream.common.cache.entry import result_head
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Face, Result, pack_faces
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.streams.scripts import Scripts

TAG = "builtin-test"
FACES = [
    Face(
        [10.5, 20.25, 110.0, 140.75],
        0.9871,
        [[30.0, 50.5], [70.0, 50.0], [50.0, 80.0], [35.5, 100.0], [65.0, 100.0]],
    ),
    Face(
        [200.0, 30.0, 260.0, 110.0],
        0.51,
        [[210.0, 60.0], [240.0, 60.0], [225.0, 80.0], [215.0, 95.0], [235.0, 95.0]],
    ),
]


def result(event_id: str, sha: str, **extra: Any) -> Result:
    return Result(
        id=event_id,
        model=TAG,
        consumer="gateway:test",
        entry="",
        done_ms=1_700_000_000_123,
        sha256=sha,
        cached=True,
        **extra,
    )


def call(settings: Settings, keys: list[str], args: list[Any]) -> Any:
    async def main() -> Any:
        client = async_client(settings)
        try:
            return await Scripts(client).call("cached_answers", client, keys, args)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_hit_is_published_exactly_as_the_gateway_would_pack_it(
    make_settings: Any, r: redis.Redis, prefix: str
) -> None:
    settings = make_settings()
    keys = Keys(prefix)
    cached, sized_out, absent = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
    r.hset(
        keys.cache(cached, TAG), mapping={"faces": pack_faces(FACES), "width": 640, "height": 480}
    )
    # Imported from the old design without a size: answered by the detectors, never here.
    r.hset(keys.cache(sized_out, TAG), mapping={"faces": pack_faces(FACES)})
    # A size that is not a whole number in digits: never published (the gateway's `_size`
    # rule is the same, so it treats the entry as a miss and the detectors answer it).
    odd = hashlib.sha256(b"odd").hexdigest()
    r.hset(
        keys.cache(odd, TAG),
        mapping={"faces": pack_faces(FACES), "width": "640.5", "height": 480},
    )
    meta = {"camera": "door-2", "raw": b"\x00\xff", "nested": {"n": [1, 2.5, None]}}
    heads = [
        result("é-1", cached, source="cam", meta=meta, ts_ms=42),
        result("plain", cached),
        result("no-size", sized_out),
        result("odd", odd),
        result("new", absent),
    ]
    shas = [cached, cached, sized_out, odd, absent]
    packed = [result_head(res.to_dict()) for res in heads]
    # The crops-style request: looked up, not published (its crops are cut afterwards).
    shas.append(cached)
    packed.append(b"")
    args: list[Any] = ["off", 0, len(shas)]
    for sha, head in zip(shas, packed, strict=True):
        args += [sha, head]
    stream = keys.results
    replies = call(
        settings,
        ["unused-1", "unused-2", *(keys.cache(s, TAG) for s in shas), *([stream] * len(shas))],
        args,
    )
    assert [int(x[0]) for x in replies] == [1, 1, 1, 1, 2, 1]
    assert [int(x[1]) for x in replies if int(x[0]) == 1] == [1, 1, 0, 0, 0]
    assert replies[0][2] == pack_faces(FACES)
    published = [msgpack.unpackb(f[b"result"], raw=False) for _, f in r.xrange(stream)]
    expected = []
    for res in heads[:2]:
        res.width, res.height, res.faces = 640, 480, FACES
        expected.append(res.to_dict())
    assert published == expected
    # Whole numbers on the wire, as `Result.to_wire()` packs them (640 == 640.0 in Python).
    assert all(type(p["width"]) is int and type(p["height"]) is int for p in published)
