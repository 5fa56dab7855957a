"""Admission control's estimate (ingest/http/admission.py) against a real redis-server whose
images stream and detector group the test fills and drains by hand, so the backlog and the
pace are known: the expected wait is the images ahead at the detectors' pace plus one model
run, a deadline shorter than that is refused (503 `overloaded`, Retry-After), and the pace is
measured from what the group finishes while it is busy. The end-to-end behaviour, with a real
gateway, detector and model, is tests/ingest/http/test_admission.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.streams.serving import Load, advertise
from facestream.common.streams.types import AsyncClient
from facestream.ingest.http import metrics
from facestream.ingest.http.admission import Admission
from facestream.ingest.http.liveness import Liveness
from facestream.ingest.publisher import Overloaded

GROUP = "detectors"
MODEL_S = 0.1  # the model time per image the detector advertises: 10 images a second


def run(settings: Settings, body: Callable[[AsyncClient, Admission], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = async_client(settings)
        keys = Keys(settings.prefix)
        await client.xgroup_create(keys.images, GROUP, id="0", mkstream=True)
        liveness = Liveness(settings, client)
        admission = Admission(settings, client, liveness)
        try:
            return await body(client, admission)
        finally:
            await admission.close()
            await client.aclose()

    return asyncio.run(main())


async def tell(client: AsyncClient, settings: Settings, load: Load | None) -> None:
    key = Keys(settings.prefix).serving(GROUP)
    await advertise(client, key, "det-1", "model-a", 30_000, load)


async def queue(client: AsyncClient, settings: Settings, n: int, take: int = 0) -> None:
    """n entries on the images stream; `take` of them delivered to the detector (pending)."""
    images = Keys(settings.prefix).images
    for i in range(n):
        await client.xadd(images, {"event": f"e{i}"})
    if take:
        await client.xreadgroup(GROUP, "det-1", {images: ">"}, count=take)


async def finish(client: AsyncClient, settings: Settings, n: int) -> None:
    """The detector answers n entries in hand and takes as many more."""
    images = Keys(settings.prefix).images
    pending = await client.xpending_range(images, GROUP, "-", "+", n)
    await client.xack(images, GROUP, *[p["message_id"] for p in pending])
    await client.xdel(images, *[p["message_id"] for p in pending])
    await client.xreadgroup(GROUP, "det-1", {images: ">"}, count=n)


def refusals() -> float:
    return metrics.REGISTRY.get_sample_value("facestream_gateway_overloaded_total") or 0.0


def test_the_wait_is_the_backlog_at_the_advertised_pace_and_past_it_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def body(client: AsyncClient, admission: Admission) -> None:
        await tell(client, settings, Load(MODEL_S))
        await admission.liveness.detectors()
        await admission.admit(0.01)  # nothing ahead: admitted whatever its deadline
        await queue(client, settings, 10, take=3)  # 7 not yet read, 3 in hand
        await admission.read()
        estimate = admission.estimate()
        assert estimate is not None
        assert 9 < estimate.ahead <= 10 and estimate.rate == pytest.approx(1 / MODEL_S)
        assert estimate.wait_s == pytest.approx(MODEL_S + estimate.ahead * MODEL_S)  # ~1.1 s
        await admission.admit(2.0)

        before = refusals()
        with pytest.raises(Overloaded) as refused:
            await admission.admit(0.5)
        assert refused.value.code == "overloaded" and refused.value.status == 503
        assert refused.value.retry_after_s >= 1
        assert "500 ms" in refused.value.message and "Nothing was queued" in refused.value.message
        assert refusals() == before + 1

        admission.enabled = False  # FACESTREAM_ADMISSION=false
        await admission.admit(0.5)

    run(settings, body)


def test_this_processes_own_waits_count_at_once_between_two_reads(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def body(client: AsyncClient, admission: Admission) -> None:
        await tell(client, settings, Load(MODEL_S))
        await admission.liveness.detectors()
        await admission.read()  # an empty backlog, just read
        admission.waiting = admission.sent = 5  # five new photos published since, in flight
        estimate = admission.estimate()
        assert estimate is not None and estimate.ahead == pytest.approx(5, abs=0.1)
        with pytest.raises(Overloaded):
            await admission.admit(0.3)

    run(settings, body)


def test_the_pace_is_measured_while_the_detectors_are_busy(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def body(client: AsyncClient, admission: Admission) -> None:
        await tell(client, settings, Load(MODEL_S))  # says 10 a second
        await admission.liveness.detectors()
        await queue(client, settings, 60, take=4)
        await admission.read()
        for _ in range(10):  # it really finishes ~40 a second
            await asyncio.sleep(0.1)
            await finish(client, settings, 4)
            await admission.read()
        assert admission.rate is not None and admission.rate > 25
        fast = admission.rate
        for _ in range(10):  # stalled: it finishes nothing
            await asyncio.sleep(0.1)
            await admission.read()
        assert admission.rate < fast / 2
        estimate = admission.estimate()
        assert estimate is not None and estimate.rate == admission.rate

    run(settings, body)


def test_without_a_pace_to_go_by_everything_is_admitted(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def body(client: AsyncClient, admission: Admission) -> None:
        await tell(client, settings, None)  # a detector from before loads were told
        await admission.liveness.detectors()
        await queue(client, settings, 50)
        await admission.read()
        assert admission.estimate() is None
        await admission.admit(0.001)

    run(settings, body)


def test_what_a_dead_detector_holds_is_not_ahead_of_a_new_photo(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def body(client: AsyncClient, admission: Admission) -> None:
        await tell(client, settings, Load(MODEL_S))
        await admission.liveness.detectors()
        images = Keys(settings.prefix).images
        for i in range(30):
            await client.xadd(images, {"event": f"e{i}"})
        # Killed with 30 entries in hand: no served entry, so not alive; the live detector
        # reads past them (they are claimed once idle for FACESTREAM_CLAIM_IDLE_MS).
        await client.xreadgroup(GROUP, "killed-1", {images: ">"}, count=30)
        await admission.read()
        estimate = admission.estimate()
        assert estimate is not None and estimate.ahead < 1
        await admission.admit(0.05)
        await queue(client, settings, 5, take=5)  # held by the live one: ahead
        await admission.read()
        estimate = admission.estimate()
        assert estimate is not None and 4 < estimate.ahead <= 5

    run(settings, body)
