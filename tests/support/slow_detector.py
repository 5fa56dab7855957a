"""`python -m tests.support.slow_detector`: the real detector process, whose model calls a test
can slow down or pause from outside, to overload it on purpose (tests/ingest/http/
test_admission.py). SLOW_DETECTOR_DIR names a folder: a file `slow_s` there holds
seconds added to every model call; while a file `pause` exists, model calls wait. The model
itself runs as served; only its calls take longer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from facestream.detector import __main__ as detector
from facestream.detector.model.face_model import FaceModel


def slowed(folder: Path) -> None:
    real = FaceModel.detect_prepared

    def detect_prepared(self: FaceModel, items: Any) -> Any:
        while (folder / "pause").exists():
            time.sleep(0.01)
        try:
            delay = float((folder / "slow_s").read_text() or 0)
        except (OSError, ValueError):
            delay = 0.0
        time.sleep(delay)
        return real(self, items)

    FaceModel.detect_prepared = detect_prepared  # type: ignore[method-assign]


if __name__ == "__main__":
    slowed(Path(os.environ["SLOW_DETECTOR_DIR"]))
    sys.exit(detector.main())
