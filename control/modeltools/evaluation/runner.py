"""A model over image files as a detector serves it: the detector's own decode (limits, EXIF
orientation, the model's resize rule), the model's pre-processing, decoder and NMS. Decoding
runs on a few threads ahead of the model, as in the detector; never more than a small window of
decoded images waits in memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facestream.common.contract.schema import Face, SchemaError
from facestream.common.settings import Settings
from facestream.control.modeltools.evaluation.protocol import Predictions
from facestream.detector.imaging import decode_image
from facestream.detector.model.face_model import FaceModel, Prepared


@dataclass(frozen=True)
class Run:
    predictions: list[Predictions]  # per path; none for a refused image
    refused: dict[str, str]  # path -> why the detector would refuse it
    seconds: float  # wall time, reading + decoding + detecting


def as_predictions(faces: list[Face]) -> Predictions:
    return Predictions.sorted(
        np.array([f.box for f in faces], np.float64).reshape(-1, 4),
        np.array([f.score for f in faces], np.float64),
        np.array([f.kps for f in faces], np.float64).reshape(-1, 5, 2),
    )


def run(
    model: FaceModel,
    settings: Settings,
    paths: list[Path],
    advance: Callable[[], None] = lambda: None,
) -> Run:
    def load(path: Path) -> Prepared | str:
        try:
            data = path.read_bytes()
            image = decode_image(
                data,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_pixels,
                max_side=model.spec.fit,
                upscale=model.spec.norm.upscale,
                resize=model.spec.resize,
                max_scans=settings.max_jpeg_scans,
            )
        except SchemaError as exc:
            return f"{exc.code.value}: {exc.message}"
        except OSError as exc:
            return f"cannot be read: {exc.strerror}"
        return model.prepare(image)

    empty = as_predictions([])
    predictions: list[Predictions] = []
    refused: dict[str, str] = {}
    window = 2 * settings.decode_threads
    started = time.monotonic()
    with ThreadPoolExecutor(settings.decode_threads, "eval-decode") as pool:
        pending: deque[Future[Prepared | str]] = deque()
        queue = iter(paths)
        for path in paths:
            while len(pending) < window and (nxt := next(queue, None)) is not None:
                pending.append(pool.submit(load, nxt))
            item = pending.popleft().result()
            if isinstance(item, str):
                refused[str(path)] = item
                predictions.append(empty)
            else:
                predictions.append(as_predictions(model.detect_prepared([item])[0]))
            advance()
    return Run(predictions, refused, time.monotonic() - started)
