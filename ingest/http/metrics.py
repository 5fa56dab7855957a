"""The gateway's Prometheus metrics, in the gateway's own registry: served at `/metrics` on
the gateway's port. With several workers the values live in prometheus-client's multiprocess
files instead (ingest/http/serve.py), which hold only what gateway processes define: these."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from facestream.common import metrics
from facestream.common.metrics import add as add

REGISTRY = metrics.service_registry()

HTTP = Counter(
    "facestream_http_requests", "Gateway requests", ["path", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "facestream_http_request_seconds",
    "Gateway request latency",
    ["path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
    registry=REGISTRY,
)
GATEWAY_CACHE = Counter(
    "facestream_gateway_cache_lookups",
    "Waiting requests the gateway looked up",
    ["result"],
    registry=REGISTRY,
)
GATEWAY_JOINED = Counter(
    "facestream_gateway_joined",
    "Waiting requests answered with the answer of an earlier request for the same image",
    registry=REGISTRY,
)
BAD_REPLIES = Counter(
    "facestream_bad_replies", "Reply-stream entries the gateway skipped", registry=REGISTRY
)
# The gateway asks the detectors' Bloom filter before looking a cached answer up; counted
# under the detectors' name so one query sums both.
BLOOM = Counter("facestream_bloom_checks", "Bloom filter answers", ["answer"], registry=REGISTRY)

# Label children bound once: `.labels()` per event is a dict look-up and a lock on the hot path.
GATEWAY_HITS = GATEWAY_CACHE.labels("hit")
GATEWAY_MISSES = GATEWAY_CACHE.labels("miss")
BLOOM_MAYBE = BLOOM.labels("maybe")
BLOOM_NEVER = BLOOM.labels("never")


def page(multiprocess_dir: str | None) -> bytes:
    """The gateway's /metrics page (`multiprocess_dir`: several workers, their sum)."""
    return metrics.page(REGISTRY, multiprocess_dir)
