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
# Refused by admission control (ingest/http/admission.py): nothing was published for them.
GATEWAY_OVERLOADED = Counter(
    "facestream_gateway_overloaded",
    "Waiting requests refused at the door (503 overloaded): their new photo's expected wait "
    "was past their timeout",
    registry=REGISTRY,
)
BAD_REPLIES = Counter(
    "facestream_bad_replies", "Reply-stream entries the gateway skipped", registry=REGISTRY
)
# A new photo's last stage, under the name of the detector's stages (detector/metrics.py):
#   reply  the detector's reply added to this process's reply stream -> handed to the waiting
#          request by the reply reader (the entry id's time, ingest/http/reply_router.py)
STAGES = metrics.stage_histogram(REGISTRY)
# A cache hit answered at the door, in the four parts Triton reports for a request
# (ingest/http/hit_clock.py says where each begins and ends).
HIT_STAGES = Histogram(
    "facestream_hit_stage_seconds",
    "Time a waiting request answered from the cache at the gateway spends in each stage",
    ["stage"],
    buckets=metrics.STAGE_BUCKETS,
    registry=REGISTRY,
)
# The gateway asks the detectors' Bloom filter before looking a cached answer up; counted
# under the detectors' name so one query sums both.
BLOOM = metrics.bloom_counter(REGISTRY)

# Label children bound once: `.labels()` per event is a dict look-up and a lock on the hot path.
GATEWAY_HITS = GATEWAY_CACHE.labels("hit")
GATEWAY_MISSES = GATEWAY_CACHE.labels("miss")
BLOOM_MAYBE = BLOOM.labels("maybe")
BLOOM_NEVER = BLOOM.labels("never")
STAGE_REPLY = STAGES.labels("reply")
HIT_QUEUE = HIT_STAGES.labels("queue")
HIT_INPUT = HIT_STAGES.labels("compute_input")
HIT_INFER = HIT_STAGES.labels("compute_infer")
HIT_OUTPUT = HIT_STAGES.labels("compute_output")


def page(multiprocess_dir: str | None) -> bytes:
    """The gateway's /metrics page (`multiprocess_dir`: several workers, their sum)."""
    return metrics.page(REGISTRY, multiprocess_dir)
