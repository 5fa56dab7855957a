"""Prometheus metrics after a real run: the counters add up (events in = results out), and
each process exports its own service's metrics and no other's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.detector.metrics import REGISTRY
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]

# What each service exports, by family name (a counter's without `_total`). Written out rather
# than read from the registries, so that a metric moved to the wrong service fails here.
SHARED = {"facestream_bloom_checks", "facestream_dead_letters", "facestream_stage_seconds"}
GATEWAY = {
    "facestream_http_requests",
    "facestream_http_request_seconds",
    "facestream_gateway_cache_lookups",
    "facestream_gateway_joined",
    "facestream_gateway_overloaded",
    "facestream_bad_replies",
    "facestream_bloom_checks",
    "facestream_stage_seconds",
    "facestream_hit_stage_seconds",
}
DETECTOR = {
    "facestream_events_read",
    "facestream_results",
    "facestream_cache_lookups",
    "facestream_bloom_checks",
    "facestream_lock_waits",
    "facestream_dead_letters",
    "facestream_inference_seconds",
    "facestream_batch_size",
    "facestream_end_to_end_seconds",
    "facestream_stream_lag",
    "facestream_stream_pending",
    "facestream_dlq_size",
    "facestream_stage_seconds",
}
SINK = {"facestream_sink_written", "facestream_dead_letters"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    return {
        "read": value("facestream_events_read_total"),
        "inferred": value("facestream_results_total", outcome="inferred"),
        "cached": value("facestream_results_total", outcome="cached"),
        "error": value("facestream_results_total", outcome="error"),
        "hit": value("facestream_cache_lookups_total", result="hit"),
        "miss": value("facestream_cache_lookups_total", result="miss"),
        "calls": value("facestream_inference_seconds_count"),
        "images": value("facestream_batch_size_sum"),
        "e2e": value("facestream_end_to_end_seconds_count"),
    }


def test_detector_counters_add_up(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings()
    before = snapshot()
    events = [
        make_event(photo_png[n], f"{n}-{i}") for i in range(3) for n in ("astronaut", "camera")
    ]

    async def scenario(det: Detector, client: Redis, keys: Keys) -> Any:
        await publish(client, keys, *events, b"\xc1 not an event")
        await wait_results(client, keys, 7)
        await det.refresh_gauges()
        return det.counters

    counters = with_detector(settings, builtin_model, scenario)
    after = snapshot()
    d = {k: after[k] - before[k] for k in before}
    assert d["read"] == 7 == counters.read  # events in
    assert d["inferred"] + d["cached"] + d["error"] == 7  # = results out
    assert (d["inferred"], d["error"]) == (2, 1)
    # Per event: a hit was answered from the cache; a miss needed an inference (copies in one
    # batch share theirs, so misses can exceed inferences).
    assert d["hit"] + d["miss"] == 6 and d["miss"] >= d["inferred"]
    assert d["images"] == d["inferred"] and d["calls"] >= 1
    assert d["e2e"] == 6  # every answered event that carried ts_ms
    pending = value(
        "facestream_stream_pending", stream=f"{settings.prefix}:images", group="detectors"
    )
    assert pending == 0


def scrape(url: str) -> dict[str, float]:
    """name{labels} -> value, from a Prometheus text page."""
    out = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def families(url: str) -> set[str]:
    """The facestream metric families a Prometheus text page declares (`# TYPE` lines), with
    or without samples: a counter by its name without `_total`, `_created` series left out."""
    names = set()
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith("# TYPE facestream_"):
            name = line.split()[2]
            if not name.endswith("_created"):
                names.add(name.removesuffix("_total"))
    return names


def test_scraped_metrics_of_a_run_add_up(
    redis_url: str, tmp_path: Any, photo_png: dict[str, bytes]
) -> None:
    """The gateway, a detector and a jsonl sink as processes, scraped over HTTP after a run:
    the counters add up, and each page shows its own service's metrics only."""
    from facestream.control.embedded import free_port
    from tests.support.procs import Procs, base_env, gateway_ready

    port, det_port, sink_port = free_port(), free_port(), free_port()
    procs = Procs(tmp_path, base_env(redis_url, "scrape"))
    procs.start(
        "detector",
        ["-m", "facestream.detector"],
        FACESTREAM_METRICS_PORT=str(det_port),
        FACESTREAM_CONSUMER="scrape-det",
        FACESTREAM_TRIM_EVERY_MS="200",
    )
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    procs.start(
        "sink",
        ["-m", "facestream.sink", "jsonl"],
        FACESTREAM_METRICS_PORT=str(sink_port),
        FACESTREAM_CONSUMER="scrape-sink",
        FACESTREAM_JSONL_PATH=str(tmp_path / "results.jsonl"),
    )
    url = f"http://127.0.0.1:{port}"
    det_url, sink_url = f"http://127.0.0.1:{det_port}", f"http://127.0.0.1:{sink_port}"
    written = 'facestream_sink_written_total{sink="jsonl"}'
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        for i, name in enumerate(["astronaut", "camera", "astronaut", "camera", "coffee"]):
            resp = httpx.post(
                f"{url}/v1/detect",
                params={"wait": "true", "id": f"m{i}"},
                content=photo_png[name],
                timeout=30,
            )
            assert resp.status_code == 200
        httpx.post(f"{url}/v1/detect", content=b"not an image")  # refused at the door
        time.sleep(0.5)  # a housekeeping pass refreshes the gauges
        # Every answered request has one result (a gateway hit's too): the sink writes all 5.
        procs.wait_for(lambda: scrape(f"{sink_url}/metrics").get(written) == 5, "sink wrote 5")
        gateway = scrape(f"{url}/metrics")
        detector = scrape(f"{det_url}/metrics")
        pages = {
            "gateway": families(f"{url}/metrics"),
            "detector": families(f"{det_url}/metrics"),
            "sink": families(f"{sink_url}/metrics"),
        }
        process_metrics = "process_cpu_seconds_total" in scrape(f"{det_url}/metrics")
    finally:
        procs.stop()
    # Each process declares exactly its service's families: the gateway none of the detector's
    # counters (they used to sit there at 0), a detector none of the gateway's.
    assert pages == {"gateway": GATEWAY, "detector": DETECTOR, "sink": SINK}
    assert not (GATEWAY - SHARED) & pages["detector"]
    assert not (DETECTOR - SHARED) & pages["gateway"]
    assert process_metrics  # CPU, memory, file descriptors, as prometheus-client's default
    accepted = gateway['facestream_http_requests_total{path="/v1/detect",status="200"}']
    assert accepted == 5
    assert gateway['facestream_http_requests_total{path="/v1/detect",status="415"}'] == 1
    # The two repeats are answered from the cache: by the gateway itself once it has read
    # which model the detector serves, else by the detector.
    at_door = gateway.get('facestream_gateway_cache_lookups_total{result="hit"}', 0.0)
    events_in = detector["facestream_events_read_total"]
    results_out = sum(v for k, v in detector.items() if k.startswith("facestream_results_total"))
    assert events_in == results_out == accepted - at_door
    assert detector['facestream_results_total{outcome="inferred"}'] == 3
    assert detector['facestream_results_total{outcome="cached"}'] + at_door == 2
    assert detector["facestream_inference_seconds_count"] >= 1
    assert detector['facestream_stream_pending{group="detectors",stream="scrape:images"}'] == 0


def test_gateway_serves_metrics(redis_url: str, tmp_path: Any, photo_png: dict[str, bytes]):
    from facestream.control.embedded import free_port
    from tests.support.procs import Procs, base_env

    port = free_port()
    procs = Procs(tmp_path, base_env(redis_url, "metrics", FACESTREAM_HTTP_PORT=port))
    procs.start("gateway", ["-m", "facestream.ingest"])
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        for _ in range(3):
            httpx.post(f"{url}/v1/detect", content=photo_png["camera"])
        httpx.post(f"{url}/v1/detect", content=b"not an image")
        text = httpx.get(f"{url}/metrics").text
    finally:
        procs.stop()
    assert 'facestream_http_requests_total{path="/v1/detect",status="202"} 3.0' in text
    assert 'facestream_http_requests_total{path="/v1/detect",status="415"} 1.0' in text
    assert "facestream_http_request_seconds_bucket" in text


def test_gateway_workers_share_one_metrics_page(
    redis_url: str, tmp_path: Any, photo_png: dict[str, bytes]
) -> None:
    """With several uvicorn workers, /metrics on whichever worker answers sums them all."""
    import asyncio

    from facestream.control.embedded import free_port
    from tests.support.procs import Procs, base_env

    port = free_port()
    env = base_env(redis_url, "mworkers", FACESTREAM_HTTP_PORT=port, FACESTREAM_HTTP_WORKERS=2)
    procs = Procs(tmp_path, env)
    procs.start("gateway", ["-m", "facestream.ingest"])
    url = f"http://127.0.0.1:{port}"

    async def post_many() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post(f"{url}/v1/detect", content=photo_png["camera"]) for _ in range(40))
            )
        return [a.status_code for a in answers]

    key = 'facestream_http_requests_total{path="/v1/detect",status="202"}'
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        assert asyncio.run(post_many()) == [202] * 40
        # New connections land on either worker: every page must show all 40.
        pages = [scrape(f"{url}/metrics") for _ in range(6)]
        declared = families(f"{url}/metrics")
    finally:
        procs.stop()
    assert [page.get(key) for page in pages] == [40.0] * 6
    # The shared files hold what gateway processes define, and nothing of the detectors'.
    assert "facestream_http_requests" in declared and declared <= GATEWAY, declared


def test_up_gives_each_detector_and_sink_a_metrics_port(tmp_path: Any) -> None:
    """`facestream up` prints one metrics URL per detector and sink; each serves that
    process's service's metrics, and the gateway's /metrics only the gateway's."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from facestream.control.embedded import free_port
    from tests.support.procs import ROOT

    port = free_port()
    env = {
        **os.environ,
        "FACESTREAM_HTTP_PORT": str(port),
        "FACESTREAM_LOG_FORMAT": "json",
        "FACESTREAM_INTRA_OP_THREADS": "1",
    }
    env.pop("FACESTREAM_REDIS_URL", None)
    env.pop("FACESTREAM_METRICS_PORT", None)
    err = tmp_path / "up.err"
    up = ["up", "--detectors", "2", "--dir", str(tmp_path / "fs")]
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facestream.control.cli", *up],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 120
        while "ready;" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        text = err.read_text()
        printed = dict(re.findall(r"^metrics\s+(\S+)\s+(http://\S+/metrics)$", text, re.M))
        assert set(printed) == {"detector-0", "detector-1", "sink-jsonl"}, text
        assert len(set(printed.values())) == 3  # a port each
        pages: dict[str, set[str]] = {}
        for name, url in printed.items():
            while True:  # the sink may open its port just after `up` says ready
                try:
                    pages[name] = families(url)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{name}: {url} never answered"
                    time.sleep(0.2)
        gateway = families(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    assert pages == {"detector-0": DETECTOR, "detector-1": DETECTOR, "sink-jsonl": SINK}
    assert gateway == GATEWAY
