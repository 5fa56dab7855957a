"""Crops are bounded: cut off the event loop, capped per result (count and bytes, the rest
counted in `crops_omitted`), and the reply streams that carry them bounded in bytes. A real
detector and a real gateway's reply reader against the test Redis, the real model."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from PIL import Image
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Face, ImageEvent
from facestream.common.imaging import align
from facestream.common.settings import Settings
from facestream.control.samples import encode
from facestream.detector.jobs import Job, ResultFactory
from facestream.detector.worker import Detector
from facestream.detector.writer import reply_cost, reply_maxlen
from facestream.ingest.http.cache_answers import CacheAnswers, answer_or_wait
from facestream.ingest.http.reply_router import ReplyRouter
from facestream.ingest.publisher import AsyncPublisher, make_event
from tests.support.helpers import publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def big_photo_with_faces(n: int) -> tuple[bytes, list[Face]]:
    """A 24 MP PNG (slow to decode: hundreds of ms) and `n` face positions on a grid."""
    rng = np.random.default_rng(7)
    tile = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
    px = np.tile(tile, (16, 24, 1))  # 4000 x 6000
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG", compress_level=1)
    faces = []
    for i in range(n):
        shift = np.array([(i % 40) * 140 + 20.0, (i // 40) * 140 + 20.0])
        kps = (align.TEMPLATE + shift).tolist()
        faces.append(Face([*shift.tolist(), *(shift + 112).tolist()], 0.9, kps))
    return buf.getvalue(), faces


def test_crops_are_cut_in_a_worker_thread_while_the_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image, faces = big_photo_with_faces(200)
    threads: list[threading.Thread] = []
    real = align.faces_with_crops

    def spy(*args: Any) -> tuple[list[Face], int]:
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(align, "faces_with_crops", spy)
    factory = ResultFactory("m", "c", max_pixels=50_000_000)
    event = ImageEvent("e", image, crops=True)
    job = Job(None, "1-0", event, "sha")  # type: ignore[arg-type]  # no partition needed here
    results = [factory.faces(job, faces, 6000, 4000, True) for _ in range(3)]
    assert all(r.crops_omitted is None and not any(f.crop for f in r.faces or []) for r in results)

    async def main() -> tuple[float, float]:
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        await factory.cut_crops([(r, image) for r in results])
        took = time.perf_counter() - started
        stop = True
        await tick
        return took, max(gaps)

    took, worst_gap = asyncio.run(main())
    # One decode and one set of crops for the three results of one image, not on the loop.
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    # Measured loosely (the machine is shared): on the loop, one gap would be the whole cut.
    assert took > 0.1 and worst_gap < took / 2, (took, worst_gap)
    for r in results:
        assert r.crops_omitted == 200 - 64  # the default cap
        assert sum(1 for f in r.faces or [] if f.crop) == 64


def _mosaic(photos: dict[str, np.ndarray]) -> bytes:
    """Twenty real faces (LFW) at twice their size: 1280 x 1024, one image, many crops."""
    grey = np.kron(photos["lfw_mosaic"], np.ones((2, 2), np.uint8))
    return encode(np.stack([grey] * 3, axis=-1))


def test_a_detector_caps_crops_and_counts_what_it_left_out(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    settings = make_settings(max_crops=5)
    image = _mosaic(photos)

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        await publish(client, keys, make_event(image, "first", crops=True))
        await wait_results(client, keys, 1)
        # The second is a cache hit in the detector: its crops are cut there too.
        await publish(client, keys, make_event(image, "hit", crops=True))
        await publish(client, keys, make_event(image, "plain"))
        return await wait_results(client, keys, 3)

    got = {r["id"]: r for r in with_detector(settings, builtin_model, scenario)}
    assert set(got) == {"first", "hit", "plain"} and got["hit"]["cached"]
    n = len(got["first"]["faces"])
    assert n >= 10, n  # many faces: the cap is what limits the crops
    for name in ("first", "hit"):
        faces = got[name]["faces"]
        assert [("crop" in f) for f in faces] == [True] * 5 + [False] * (n - 5)
        assert got[name]["crops_omitted"] == n - 5
    assert "crops_omitted" not in got["plain"] and all(
        "crop" not in f for f in got["plain"]["faces"]
    )


def test_a_reply_stream_stays_under_its_byte_bound_whatever_is_replied(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    """Sixty crops answers to one reply stream, nobody reading: each XADD's MAXLEN keeps the
    stream under FACESTREAM_REPLY_MAX_BYTES (before: 10,000 entries, whatever their size)."""
    bound = 256 * 1024
    settings = make_settings(reply_max_bytes=bound)
    image = _mosaic(photos)
    sizes: list[int] = []

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        stream = keys.reply_stream("gw-test")
        events = [make_event(image, f"r-{i}", crops=True, reply_to=stream) for i in range(60)]
        watcher = asyncio.create_task(_watch(client, stream, sizes))
        try:
            await publish(client, keys, *events)
            got = await wait_results(client, keys, 60, wait_s=60)
        finally:
            watcher.cancel()
        sizes.append(int(await client.memory_usage(stream, samples=0) or 0))
        return got

    got = with_detector(settings, builtin_model, scenario)
    assert len(got) == 60 and all(r["crops_omitted"] == 0 for r in got)
    entry = len(msgpack.packb(got[0], use_bin_type=True))
    assert 60 * entry > 4 * bound, entry  # all sixty kept would be several times the bound
    assert 0 < max(sizes) <= bound, (max(sizes), bound)


def test_sixty_waiters_for_crops_are_answered_and_their_reply_stream_stays_bounded(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    """The gateway's own path (cache answers, shared waits, the reply reader) with sixty
    concurrent `crops=true` waiters for one many-face photo: every one answered with its crops,
    the reply stream under its bound, and far fewer than sixty events published."""
    bound = 256 * 1024
    settings = make_settings(reply_max_bytes=bound)
    image = _mosaic(photos)
    sizes: list[int] = []

    async def scenario(det: Detector, client: Redis, keys: Keys) -> tuple[list[Any], int]:
        replies = ReplyRouter(client, keys, settings.reply_ttl_s, block_ms=100)
        publisher = AsyncPublisher(settings, client)
        hits = CacheAnswers(settings, client, "gateway:test")
        await replies.start()
        while not await client.hlen(keys.serving(settings.detector_group)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

        async def wait(i: int) -> dict[str, Any] | None:
            event = make_event(image, f"w-{i}", crops=True, reply_to=replies.stream)
            return await answer_or_wait(hits, replies, publisher, event, 60)

        watcher = asyncio.create_task(_watch(client, replies.stream, sizes))
        try:
            answers = await asyncio.gather(*(wait(i) for i in range(60)))
        finally:
            watcher.cancel()
            await replies.stop()
        sizes.append(int(await client.memory_usage(replies.stream, samples=0) or 0))
        (group,) = await client.xinfo_groups(keys.images)
        return answers, int(group["entries-read"])

    answers, events = with_detector(settings, builtin_model, scenario)
    assert all(a is not None for a in answers)
    assert sorted(a["id"] for a in answers) == sorted(f"w-{i}" for i in range(60))
    for a in answers:
        assert a["faces"] and a["crops_omitted"] == 0 and all("crop" in f for f in a["faces"])
    assert events < 10, events  # shared waits: not one event (and one ~100 KB reply) each
    assert max(sizes) <= bound, (max(sizes), bound)


def test_the_reply_maxlen_follows_the_size_of_each_reply() -> None:
    mib = 1024 * 1024
    assert reply_maxlen(500, 64 * mib, 10_000) == 10_000  # small answers: the entry cap
    big = reply_maxlen(300_000, 64 * mib, 10_000)  # answers with crops: what fits
    assert 150 < big < 224 and big * reply_cost(300_000) <= 64 * mib
    assert reply_maxlen(10 * mib, 64 * 1024, 10_000) == 1  # never less than the reply itself


async def _watch(client: Redis, stream: str, sizes: list[int]) -> None:
    while True:
        sizes.append(int(await client.memory_usage(stream, samples=0) or 0))
        await asyncio.sleep(0.005)
