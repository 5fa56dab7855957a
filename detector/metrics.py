"""A detector's Prometheus metrics, in the detector's own registry: served on
`FACESTREAM_METRICS_PORT` by the detector's entry point."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from facestream.common import metrics

REGISTRY = metrics.service_registry()

EVENTS_READ = Counter(
    "facestream_events_read", "Images-stream entries a detector read", registry=REGISTRY
)
RESULTS = Counter(
    "facestream_results", "Results a detector published", ["outcome"], registry=REGISTRY
)
CACHE = Counter(
    "facestream_cache_lookups", "Cache look-ups by the detector", ["result"], registry=REGISTRY
)
BLOOM = Counter("facestream_bloom_checks", "Bloom filter answers", ["answer"], registry=REGISTRY)
LOCK_WAITS = Counter(
    "facestream_lock_waits", "Images deferred on another worker's lock", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "facestream_dead_letters",
    "Entries sent to the dead-letter stream",
    ["service"],
    registry=REGISTRY,
)
INFERENCE = Histogram(
    "facestream_inference_seconds",
    "Model call latency",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
BATCH = Histogram(
    "facestream_batch_size",
    "Images per model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "facestream_end_to_end_seconds",
    "Publish (ts_ms) to result (done_ms)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
LAG = Gauge(
    "facestream_stream_lag",
    "Entries not yet delivered to a group",
    ["stream", "group"],
    registry=REGISTRY,
)
PENDING = Gauge(
    "facestream_stream_pending",
    "Entries delivered, not acked",
    ["stream", "group"],
    registry=REGISTRY,
)
DLQ_SIZE = Gauge("facestream_dlq_size", "Entries in the dead-letter stream", registry=REGISTRY)

# Label children bound once: `.labels()` per event is a dict look-up and a lock on the hot path.
CACHE_HIT = CACHE.labels("hit")
CACHE_MISS = CACHE.labels("miss")
BLOOM_MAYBE = BLOOM.labels("maybe")
BLOOM_NEVER = BLOOM.labels("never")
RESULT_BY_OUTCOME = {o: RESULTS.labels(o) for o in ("inferred", "cached", "error")}


def serve(port: int | None, host: str = "0.0.0.0") -> None:
    """Expose the detector's metrics on `port` of `host` (None or 0: off)."""
    metrics.serve(port, REGISTRY, host)
