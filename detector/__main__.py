"""`python -m facestream.detector` / `facestream detector`: run one detector process."""

from __future__ import annotations

import asyncio
import sys

from facestream.common import allocator
from facestream.common.heap import freeze_startup_heap
from facestream.common.log import configure, get_logger
from facestream.common.settings import DetectorSettings
from facestream.common.streams.connection import async_client, redact
from facestream.common.streams.member import stop_on_signals
from facestream.detector import metrics
from facestream.detector.model.backend import ProviderError, installed_runtime_builds
from facestream.detector.model.face_model import FaceModel
from facestream.detector.model.loader import ModelLoadError, load_model
from facestream.detector.worker import Detector

log = get_logger("detector")


def ready_model(settings: DetectorSettings) -> FaceModel | None:
    """The model loaded and run once, or None after one log line saying why it cannot serve:
    a supervisor restarting a detector that can never start gains nothing from a traceback."""
    try:
        model = load_model(settings)
    except (ModelLoadError, ProviderError) as exc:
        log.error("model_refused", model=settings.model, reason=str(exc))
        return None
    try:
        model.warm_up()
    except Exception as exc:  # the first run of a graph the load checks let through
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("model_refused", model=settings.model, reason=f"warm-up run failed: {reason}")
        return None
    return model


async def serve(settings: DetectorSettings) -> int:
    builds = installed_runtime_builds()
    if len(builds) > 1:
        log.warning(
            "onnxruntime_conflict",
            installed=builds,
            hint="both builds share one module; see README 'GPU' to keep only onnxruntime-gpu",
        )
    model = ready_model(settings)
    if model is None:
        return 2
    metrics.serve(settings.metrics_port, settings.metrics_host)
    client = async_client(settings)
    detector = Detector(settings, client, model)
    stop_on_signals(detector.stop.set, "detector")
    log.info(
        "detector_starting",
        redis=redact(settings.redis_url),
        consumer=settings.consumer,
        frozen_objects=freeze_startup_heap(),
    )
    try:
        counters = await detector.run()
    finally:
        detector.scripts.close()
        await client.aclose()
    print(
        f"detector {settings.consumer}: {counters.read} read, {counters.results} results "
        f"({counters.cached} cached, {counters.errors} errors), "
        f"{counters.images_inferred} images inferred",
        file=sys.stderr,
    )
    if detector.member.failed:
        # Exit non-zero: whatever runs this process starts a fresh one.
        print(f"detector: task {detector.member.failed} kept failing", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = DetectorSettings()
    configure(settings)
    allocator.keep_freed_memory()
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
