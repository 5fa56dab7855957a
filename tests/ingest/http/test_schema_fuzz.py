"""Schemathesis against the running gateway's own OpenAPI schema (bounded examples): whatever
it generates, the gateway never answers 500 and always answers JSON (the one photo
/v1/draw answers aside)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.procs import detector_and_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway_schema(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with detector_and_gateway(
        redis_url,
        tmp_path_factory.mktemp("schema"),
        "sf",
        FACESTREAM_MAX_IMAGE_BYTES="200000",
        FACESTREAM_WAIT_TIMEOUT_MS="3000",
    ) as (url, _, _):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_500_and_always_json(gateway_schema: Any) -> None:
    checked = 0
    for result in gateway_schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if case.query and "timeout_ms" in case.query:
                case.query["timeout_ms"] = 1000  # bounded: a wait must not outlast the example
            response = case.call(timeout=30)
            assert response.status_code < 500 or response.status_code in (503, 504), (
                case.path,
                response.status_code,
                response.text[:500],
            )
            kind = response.headers.get("content-type") or [""]
            kind = kind[0] if isinstance(kind, list) else kind  # a list per header in v4
            # /v1/draw answers its photo as a JPEG; every error, there too, is JSON.
            drawn = case.path == "/v1/draw" and response.status_code == 200
            expected = "image/jpeg" if drawn else "application/json"
            assert kind.startswith(expected), (case.path, kind, response.text[:200])

        run()
        checked += 1
    # /v1/detect, /v1/draw, /v1/status, /face-detection, /healthz, /readyz
    assert checked >= 6
