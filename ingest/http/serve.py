"""`facestream ingest serve` / `python -m facestream.ingest`: the HTTP gateway on uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from facestream.common.settings import GatewaySettings
from facestream.ingest.http.timeouts import DeadlineProtocol


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies of the
    signal; a service that shut down cleanly should exit 0 like the other facestream ones."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


APP = "facestream.ingest.http.app:app_factory"


@contextlib.contextmanager
def shared_metrics(settings: GatewaySettings) -> Iterator[None]:
    """Several workers: each keeps its metric values in files of one directory (prometheus
    client's multiprocess mode, which reads PROMETHEUS_MULTIPROC_DIR when a worker imports
    it), and /metrics sums them. The workers inherit the directory through the environment."""
    if settings.http_workers == 1:
        yield
        return
    with contextlib.ExitStack() as stack:
        path = settings.metrics_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="facestream-metrics-")
        )
        os.makedirs(path, exist_ok=True)
        for stale in os.listdir(path):  # values of an earlier run are not this run's
            if stale.endswith(".db"):
                os.remove(os.path.join(path, stale))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        os.environ["FACESTREAM_METRICS_DIR"] = path
        yield


def serve(settings: GatewaySettings) -> int:
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.http_host,
        "port": settings.http_port,
        "log_config": None,  # structlog, configured by the factory in each worker
        "access_log": False,
        "proxy_headers": False,
        "timeout_graceful_shutdown": 10,
        # Half-sent requests are cut (ingest/http/timeouts.py) and connections are capped.
        "http": DeadlineProtocol,
        "limit_concurrency": settings.http_max_connections,
    }
    if settings.http_workers > 1:
        # Several processes: uvicorn's supervisor owns the signals.
        with shared_metrics(settings):
            uvicorn.run(APP, workers=settings.http_workers, **options)
    else:
        GracefulServer(uvicorn.Config(APP, **options)).run()
    return 0
