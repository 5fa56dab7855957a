"""Events answered through Redis by a real detector: the contract fields, bad input, replies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
import redis
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import ImageEvent
from facestream.common.settings import Settings
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import decoded, publish, results, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def test_event_to_result_with_contract_fields(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    image = photo_png["astronaut"]
    event = make_event(image, "evt-1", source="cam-7", meta={"shop": 12, "tags": ["a"]})

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        [entry] = await publish(client, keys, event)
        [result] = await wait_results(client, keys, 1)
        return entry, result

    entry, result = with_detector(settings, builtin_model, scenario)
    keys = Keys(settings.prefix)
    direct = builtin_model.detect([decoded(image)])[0]
    assert result == {
        "v": 1,
        "id": "evt-1",
        "sha256": hashlib.sha256(image).hexdigest(),
        "model": builtin_model.tag,
        "width": 512,
        "height": 512,
        "faces": [f.to_wire() for f in direct],
        "cached": False,
        "source": "cam-7",
        "meta": {"shop": 12, "tags": ["a"]},
        "ts_ms": event.ts_ms,
        "done_ms": result["done_ms"],
        "consumer": settings.consumer,
        "entry": entry,
    }
    assert len(result["faces"]) == 1 and len(result["faces"][0]["kps"]) == 5
    assert result["done_ms"] >= event.ts_ms
    # Acked, and the image bytes left the stream.
    assert r.xpending(keys.images, settings.detector_group)["pending"] == 0
    assert r.xlen(keys.images) == 0


def test_bad_input_gets_error_results_and_the_worker_lives(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    good = photo_png["astronaut"]
    bad_hash = make_event(good, "bad-hash")
    bad_hash.sha256 = "0" * 64
    bogus = [
        b"\xc1\xc1 not msgpack",
        msgpack.packb({"v": 1, "image": b"x"}),
        # Past the publisher's door checks, as a foreign publisher could send them:
        ImageEvent(id="gif", image=b"GIF89a not allowed").to_wire(),
        ImageEvent(id="truncated-jpeg", image=b"\xff\xd8\xff" + b"\0" * 100).to_wire(),
        bad_hash.to_wire(),
    ]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *bogus)
        await client.xadd(keys.images, {b"wrong-field": b"1"})
        await publish(client, keys, make_event(good, "good"))
        return await wait_results(client, keys, 7)

    got = with_detector(settings, builtin_model, scenario)
    by_id = {(g["id"], (g.get("error") or {}).get("code")) for g in got}
    assert by_id == {
        ("", "bad_event"),
        ("gif", "undecodable"),
        ("truncated-jpeg", "undecodable"),
        ("bad-hash", "hash_mismatch"),
        ("good", None),
    }
    assert len(got) == 7
    assert sum(1 for g in got if g["id"] == "") == 3  # garbage, no id, wrong field
    assert len(next(g for g in got if g["id"] == "good")["faces"]) == 1
    assert r.xpending(Keys(settings.prefix).images, settings.detector_group)["pending"] == 0


def test_reply_to_gets_the_result_and_foreign_keys_are_refused(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    settings = make_settings()
    keys = Keys(settings.prefix)
    reply = keys.reply_stream("gw-1")
    foreign = f"{settings.prefix}:results-spoof"

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(
            client,
            keys,
            make_event(photo_png["camera"], "ok", reply_to=reply),
            make_event(photo_png["camera"], "evil", reply_to=foreign),
        )
        await wait_results(client, keys, 2)
        return await results(client, keys), await results(client, keys, reply)

    main, replies = with_detector(settings, builtin_model, scenario)
    assert [x["id"] for x in replies] == ["ok"]
    assert {x["id"]: x == replies[0] for x in main}["ok"]
    evil = next(x for x in main if x["id"] == "evil")
    assert evil["error"]["code"] == "bad_event" and "reply_to" in evil["error"]["message"]
    assert not r.exists(foreign)


def test_a_batch_of_all_photos(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *(make_event(d, n) for n, d in photo_png.items()))
        return await wait_results(client, keys, len(photo_png))

    got = {g["id"]: len(g["faces"]) for g in with_detector(settings, builtin_model, scenario)}
    assert got == {"astronaut": 1, "camera": 1, "grace_hopper": 1, "lfw_mosaic": 20, "coffee": 0}
