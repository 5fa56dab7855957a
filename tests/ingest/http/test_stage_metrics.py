"""Where a request's time goes (docs/performance.md): the stage histograms, read from the
processes' own /metrics, through a real gateway and detector on a real redis-server. A new
photo sent through the gateway observes each detector stage once and the gateway's `reply`
once; the same photo again is a cache hit at the door and observes each hit stage once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from facestream.control.embedded import free_port
from tests.support.procs import detector_and_gateway

DETECTOR_STAGES = ("stream", "lookup", "parked", "decode", "model_queue", "model", "write")
HIT_STAGES = ("compute_input", "queue", "compute_infer", "compute_output")
Counts = dict[tuple[str, str], float]  # (histogram, stage) -> observations, and their sum


class Stack:
    def __init__(self, gateway: str, detector: str) -> None:
        self.gateway, self.detector = gateway, detector


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    metrics_port = free_port()
    metrics = {"FACESTREAM_METRICS_PORT": str(metrics_port), "FACESTREAM_METRICS_HOST": "127.0.0.1"}
    tmp = tmp_path_factory.mktemp("stages")
    with detector_and_gateway(redis_url, tmp, "stg", detector_env=metrics) as (url, _, _):
        yield Stack(url, f"http://127.0.0.1:{metrics_port}/metrics")


def scrape(url: str) -> tuple[Counts, Counts]:
    """Per (histogram, stage): its observations (`_count`) and their sum in seconds."""
    counts: Counts = {}
    sums: Counts = {}
    text = httpx.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if stage is None:
                continue
            if sample.name.endswith("_count"):
                counts[(family.name, stage)] = sample.value
            elif sample.name.endswith("_sum"):
                sums[(family.name, stage)] = sample.value
    return counts, sums


def delta(after: Counts, before: Counts) -> Counts:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def detect(url: str, image: bytes, event_id: str) -> tuple[dict[str, object], float]:
    started = time.perf_counter()
    resp = httpx.post(
        f"{url}/v1/detect", params={"wait": "true", "id": event_id}, content=image, timeout=30
    )
    took = time.perf_counter() - started
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body, took


def test_each_stage_is_observed_once_per_new_photo_and_per_hit(
    stack: Stack, photo_png: dict[str, bytes]
) -> None:
    image = photo_png["astronaut"]
    det_before, _ = scrape(stack.detector)
    gw_before, _ = scrape(f"{stack.gateway}/metrics")

    body, took = detect(stack.gateway, image, "new-1")
    assert body["cached"] is False and str(body["consumer"]) == "stg-det"
    # The answer can come back a moment before the detector's write round trip does (and its
    # `write` stage is observed): wait for that, not for anything else.
    deadline = time.monotonic() + 5
    write = ("facestream_stage_seconds", "write")
    while time.monotonic() < deadline:
        det_counts, det_sums = scrape(stack.detector)
        if det_counts.get(write) != det_before.get(write):
            break
        time.sleep(0.01)
    gw_counts, gw_sums = scrape(f"{stack.gateway}/metrics")
    new_det, new_gw = delta(det_counts, det_before), delta(gw_counts, gw_before)
    stages = "facestream_stage_seconds"
    hits = "facestream_hit_stage_seconds"
    assert {s: new_det.get((stages, s)) for s in DETECTOR_STAGES} == dict.fromkeys(
        DETECTOR_STAGES, 1.0
    ), new_det
    assert new_gw.get((stages, "reply")) == 1.0, new_gw
    assert all(new_gw.get((hits, s), 0.0) == 0.0 for s in HIT_STAGES), new_gw
    # The stages follow one another: together no longer than the request took (the stream's
    # and the reply's start are whole milliseconds of the Redis clock: 1 ms each to spare).
    # `write` is left out: the reply is added within its round trip, so they overlap a little.
    spent = sum(det_sums[(stages, s)] for s in DETECTOR_STAGES if s != "write")
    spent += gw_sums[(stages, "reply")]
    assert 0 < spent <= took + 0.002, (spent, took)

    body, took = detect(stack.gateway, image, "hit-1")
    assert body["cached"] is True and str(body["consumer"]).startswith("gateway:")
    det_after, _ = scrape(stack.detector)
    gw_after, gw_after_sums = scrape(f"{stack.gateway}/metrics")
    hit_gw, hit_det = delta(gw_after, gw_counts), delta(det_after, det_counts)
    assert {s: hit_gw.get((hits, s)) for s in HIT_STAGES} == dict.fromkeys(HIT_STAGES, 1.0)
    assert hit_gw.get((stages, "reply")) == 0.0  # no reply: answered at the door
    assert all(v == 0.0 for k, v in hit_det.items() if k[0] == stages), hit_det
    spent = sum(gw_after_sums[(hits, s)] - gw_sums.get((hits, s), 0.0) for s in HIT_STAGES)
    assert 0 < spent <= took, (spent, took)


def test_the_stage_histograms_are_exported_with_their_buckets(stack: Stack) -> None:
    """Exported before anything is observed, from 0.1 ms to 10 s, with every stage named."""
    for url, family, stages in [
        (stack.detector, "facestream_stage_seconds", DETECTOR_STAGES),
        (f"{stack.gateway}/metrics", "facestream_stage_seconds", ("reply",)),
        (f"{stack.gateway}/metrics", "facestream_hit_stage_seconds", HIT_STAGES),
    ]:
        text = httpx.get(url, timeout=10).text
        found = {f.name: f for f in text_string_to_metric_families(text)}
        assert found[family].type == "histogram"
        bounds = {
            s.labels["le"]
            for s in found[family].samples
            if s.name.endswith("_bucket") and s.labels["stage"] == stages[0]
        }
        assert {"0.0001", "0.1", "10.0", "+Inf"} <= bounds, bounds
        named = {s.labels["stage"] for s in found[family].samples}
        assert named == set(stages), (family, named)
