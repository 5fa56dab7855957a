"""What every service's Prometheus metrics share (prometheus-client): a registry per service,
serving it, counting in batches. The metrics themselves live with their service
(ingest/http/metrics.py, detector/metrics.py, sink/metrics.py), each in that service's own registry,
so a process exports its own metrics and not another service's counters stuck at 0; two
services may count the same thing under one name (Bloom answers, dead letters), told apart by
Prometheus's `job` label."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Buckets of the stage histograms (detector/metrics.py, ingest/http/metrics.py), 0.1 ms to 10 s:
# a cache hit's stages take tenths of a millisecond, a backlog's seconds. Steps of 1.3-1.7x up to
# 100 ms (the latency bounds), so a p50 or p99 estimated from them is off by less than a step.
STAGE_BUCKETS = (
    0.0001, 0.0002, 0.0003, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def stage_histogram(registry: CollectorRegistry) -> Histogram:
    """`facestream_stage_seconds{stage}` in a service's registry: a new photo's stages, the
    detector's (detector/metrics.py says which) and the gateway's last one (`reply`), under one
    name so one query reads the whole way."""
    return Histogram(
        "facestream_stage_seconds",
        "Time an image spends in each stage of its way through facestream",
        ["stage"],
        buckets=STAGE_BUCKETS,
        registry=registry,
    )


def bloom_counter(registry: CollectorRegistry) -> Counter:
    """`facestream_bloom_checks{answer}`: the Bloom filter's answers, counted by the detectors
    and by the gateways' look-ups under one name, so one query sums both."""
    return Counter("facestream_bloom_checks", "Bloom filter answers", ["answer"], registry=registry)


def entry_age_s(entry_id: str) -> float:
    """Seconds since a stream entry was added: its id starts with the XADD's Unix time in ms
    (the Redis server's clock; 0 to 1 ms over, the id's milliseconds being whole)."""
    return max(0.0, time.time() - int(entry_id.partition("-")[0]) / 1000)


def service_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC metrics that prometheus-client's default
    registry carries (CPU, memory, file descriptors), for one service's metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def add(counter: Counter, n: int) -> None:
    """`counter.inc(n)`, skipped for 0: in multiprocess mode every increment is a write to a
    shared file, and the gateway counts per event-loop batch, often with nothing to add."""
    if n:
        counter.inc(n)


def page(registry: CollectorRegistry, multiprocess_dir: str | None = None) -> bytes:
    """The text exposition of `registry`; with `multiprocess_dir` (several gateway workers,
    prometheus-client's multiprocess mode) the sum of the values every worker wrote there
    instead: only this service's processes write to that directory."""
    if not multiprocess_dir:
        return generate_latest(registry)
    shared = CollectorRegistry()
    collector: Any = MultiProcessCollector  # untyped in prometheus-client
    collector(shared, path=multiprocess_dir)
    return generate_latest(shared)


def serve(port: int | None, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:
    """Expose `registry` over HTTP on `port` of `host` (None or 0: off)."""
    if port:
        start_http_server(port, addr=host, registry=registry)
