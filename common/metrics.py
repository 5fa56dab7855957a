"""Prometheus metrics of every service (prometheus-client). One registry per process; entry
points expose it (`FACESTREAM_METRICS_PORT`, and `/metrics` on the gateway)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_READ = Counter("facestream_events_read", "Images-stream entries a detector read")
RESULTS = Counter("facestream_results", "Results a detector published", ["outcome"])
CACHE = Counter("facestream_cache_lookups", "Cache look-ups by the detector", ["result"])
BLOOM = Counter("facestream_bloom_checks", "Bloom filter answers", ["answer"])
LOCK_WAITS = Counter("facestream_lock_waits", "Images deferred on another worker's lock")
DEAD_LETTERS = Counter(
    "facestream_dead_letters", "Entries sent to the dead-letter stream", ["service"]
)
INFERENCE = Histogram(
    "facestream_inference_seconds",
    "Model call latency",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
BATCH = Histogram(
    "facestream_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
END_TO_END = Histogram(
    "facestream_end_to_end_seconds",
    "Publish (ts_ms) to result (done_ms)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG = Gauge("facestream_stream_lag", "Entries not yet delivered to a group", ["stream", "group"])
PENDING = Gauge("facestream_stream_pending", "Entries delivered, not acked", ["stream", "group"])
DLQ_SIZE = Gauge("facestream_dlq_size", "Entries in the dead-letter stream")
GATEWAY_CACHE = Counter(
    "facestream_gateway_cache_lookups", "Waiting requests the gateway looked up", ["result"]
)
GATEWAY_HITS = GATEWAY_CACHE.labels("hit")
GATEWAY_MISSES = GATEWAY_CACHE.labels("miss")
GATEWAY_JOINED = Counter(
    "facestream_gateway_joined",
    "Waiting requests answered with the answer of an earlier request for the same image",
)
BAD_REPLIES = Counter("facestream_bad_replies", "Reply-stream entries the gateway skipped")
HTTP = Counter("facestream_http_requests", "Gateway requests", ["path", "status"])
HTTP_LATENCY = Histogram(
    "facestream_http_request_seconds",
    "Gateway request latency",
    ["path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
# Label children bound once: `.labels()` per event is a dict look-up and a lock on the hot path.
CACHE_HIT = CACHE.labels("hit")
CACHE_MISS = CACHE.labels("miss")
BLOOM_MAYBE = BLOOM.labels("maybe")
BLOOM_NEVER = BLOOM.labels("never")
RESULT_BY_OUTCOME = {o: RESULTS.labels(o) for o in ("inferred", "cached", "error")}
SINK_WRITTEN = Counter("facestream_sink_written", "Results a sink wrote", ["sink"])


def add(counter: Counter, n: int) -> None:
    """`counter.inc(n)`, skipped for 0: in multiprocess mode every increment is a write to a
    shared file, and the gateway counts per event-loop batch, often with nothing to add."""
    if n:
        counter.inc(n)


def serve(port: int | None) -> None:
    """Expose this process's metrics on `port` (None or 0: off)."""
    if port:
        start_http_server(port)
