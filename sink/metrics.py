"""A sink's Prometheus metrics, in the sink's own registry: served on
`FACESTREAM_METRICS_PORT` by the sink's entry point."""

from __future__ import annotations

from prometheus_client import Counter

from facestream.common import metrics

REGISTRY = metrics.service_registry()

SINK_WRITTEN = Counter(
    "facestream_sink_written", "Results a sink wrote", ["sink"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "facestream_dead_letters",
    "Entries sent to the dead-letter stream",
    ["service"],
    registry=REGISTRY,
)


def serve(port: int | None, host: str = "0.0.0.0") -> None:
    """Expose the sink's metrics on `port` of `host` (None or 0: off)."""
    metrics.serve(port, REGISTRY, host)
