"""`/v1/draw` admits draws by a pixel budget: past it a draw is refused at once (503
`overloaded`, Retry-After) and the admitted ones are drawn. A real gateway and detector."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from facestream.control.samples import encode
from facestream.ingest.http.draw_budget import DrawBudget, header_pixels
from tests.support.procs import detector_and_gateway

pytestmark = pytest.mark.slow
BUDGET = 5_000_000  # one 2048 x 2048 photo (4.2 MP) at a time


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with detector_and_gateway(
        redis_url,
        tmp_path_factory.mktemp("draws"),
        "draws",
        FACESTREAM_DRAW_MAX_PIXELS=str(BUDGET),
    ) as (url, _, procs):
        procs.wait_for(
            lambda: httpx.get(f"{url}/v1/status", timeout=2).json()["detectors"] == 1,
            "the detector advertised",
        )
        yield url


def test_the_budget_admits_what_fits_and_one_draw_whatever_its_size() -> None:
    budget = DrawBudget(10)
    assert budget.admit(6) and not budget.admit(6) and budget.admit(4)
    budget.release(6)
    budget.release(4)
    assert budget.admit(25)  # larger than the budget, but alone: admitted
    assert not budget.admit(1)
    budget.release(25)
    assert (budget.in_flight, budget.draws) == (0, 0)
    unlimited = DrawBudget(0)
    assert all(unlimited.admit(10**9) for _ in range(3))


def test_concurrent_draws_past_the_budget_are_refused_and_the_admitted_drawn(
    gateway: str, photos: dict[str, np.ndarray]
) -> None:
    big = np.kron(photos["astronaut"], np.ones((4, 4, 1), np.uint8))  # 2048 x 2048
    image = encode(big)
    assert header_pixels(image) == 2048 * 2048

    async def draws(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{gateway}/v1/draw", content=image) for _ in range(n))
            )

    answers = asyncio.run(draws(8))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers]
    drawn = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 503]
    assert drawn and refused, statuses
    for a in drawn:
        assert a.headers["content-type"] == "image/jpeg" and a.headers["x-facestream-faces"] == "1"
    for a in refused:
        body: dict[str, Any] = a.json()
        assert body["error"]["code"] == "overloaded", body
        assert int(a.headers["retry-after"]) >= 1
    # The refused ones did nothing; the budget is free again once the draws are done.
    again = httpx.post(f"{gateway}/v1/draw", content=image, timeout=120)
    assert again.status_code == 200 and again.headers["x-facestream-cached"] == "true"
