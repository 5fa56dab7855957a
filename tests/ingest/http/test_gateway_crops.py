"""The crops of the gateway's own cache answers (ingest/http/cache_answers.py): cut in a worker
thread, capped like the detector's, and cut once for requests of one image that wait together.
Real photos and the real cutting code; the Redis client is made but these calls never reach
it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from facestream.common.contract.schema import Face, ImageEvent, pack_faces
from facestream.common.imaging import align
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.control.samples import encode
from facestream.ingest.http.cache_answers import CacheAnswers
from tests.support.faces import detect

MakeSettings = Callable[..., Settings]


def test_gateway_crops_are_capped_cut_off_the_loop_and_shared(
    make_settings: MakeSettings,
    builtin_model: Any,
    photos: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = encode(photos["lfw_mosaic"])
    faces = detect(builtin_model, image)
    assert len(faces) >= 10
    packed = pack_faces(faces)
    calls: list[threading.Thread] = []
    real = align.faces_with_crops

    def spy(*args: Any) -> tuple[list[Face], int]:
        calls.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(align, "faces_with_crops", spy)
    settings = make_settings(max_crops=4)

    async def main() -> list[tuple[list[Face], int]]:
        client = async_client(settings)
        try:
            answers = CacheAnswers(settings, client, "gateway:t")
            cycle: dict[Any, Any] = {}
            events = [ImageEvent(f"e{i}", image, crops=True) for i in range(5)]
            together = await asyncio.gather(
                *(answers._crops(e, "sha", packed, {}) for e in events[:3])
            )
            # Later in one cycle of look-ups: the cycle keeps what it cut.
            one = await answers._crops(events[3], "sha", packed, cycle)
            two = await answers._crops(events[4], "sha", packed, cycle)
            return [*together, one, two]
        finally:
            await client.aclose()

    got = asyncio.run(main())
    # Two cuts: one for the three waiting together, one for the cycle; never on the loop.
    assert len(calls) == 2 and all(t is not threading.main_thread() for t in calls)
    for cut, omitted in got:
        assert omitted == len(faces) - 4
        assert [bool(f.crop) for f in cut] == [True] * 4 + [False] * (len(faces) - 4)
