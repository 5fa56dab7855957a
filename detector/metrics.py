"""A detector's Prometheus metrics, in the detector's own registry: served on
`FACESTREAM_METRICS_PORT` by the detector's entry point."""

from __future__ import annotations

import time
from collections.abc import Iterable

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
BLOOM = metrics.bloom_counter(REGISTRY)
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
# Where a new photo's time goes at the detector, stage by stage, each observed once per image
# (docs/performance.md, "Where a request's time goes"); the gateway adds `reply` under the same
# name (ingest/http/metrics.py). In order:
#   stream       XADD to the images stream -> read by a detector (the entry id's time)
#   lookup       the Bloom check and the cache / single-flight lock look-up (one round trip;
#                two on a cluster)
#   parked       its lock taken -> dispatched: waiting for one of the model-call slots
#   decode       dispatched -> decoded and pre-processed (the decode threads, their queue)
#   model_queue  decoded -> its model call starts (the call before it, the batching window)
#   model        the model call it was in (facestream_inference_seconds: per call)
#   write        that call's end -> its answer written (back on the event loop, the result
#                built, crops cut, the pipelined write of cache entry, reply and result)
STAGES = metrics.stage_histogram(REGISTRY)
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
STAGE_STREAM = STAGES.labels("stream")
STAGE_LOOKUP = STAGES.labels("lookup")
STAGE_PARKED = STAGES.labels("parked")
STAGE_DECODE = STAGES.labels("decode")
STAGE_MODEL_QUEUE = STAGES.labels("model_queue")
STAGE_MODEL = STAGES.labels("model")
STAGE_WRITE = STAGES.labels("write")


def observe_each(stage: Histogram, seconds: float, n: int) -> None:
    """`n` images that spent `seconds` in `stage` together (one round trip for a batch)."""
    for _ in range(n):
        stage.observe(seconds)


def observe_since(stage: Histogram, starts: Iterable[float]) -> None:
    """One image per start (`time.perf_counter()`), each in `stage` from its start until now."""
    now = time.perf_counter()
    for start in starts:
        stage.observe(now - start)


def serve(port: int | None, host: str = "0.0.0.0") -> None:
    """Expose the detector's metrics on `port` of `host` (None or 0: off)."""
    metrics.serve(port, REGISTRY, host)
