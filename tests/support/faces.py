"""Faces found by a model on image bytes, and box overlap: what the model tests compare."""

from __future__ import annotations

from typing import Any

from facestream.common.contract.schema import Face
from facestream.detector.imaging import decode_image

BIG = 1 << 30  # no input limit: the tests' own photos


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detect(model: Any, data: bytes) -> list[Face]:
    """Decoded as the detector decodes for this model, then one model call."""
    spec = model.spec
    image = decode_image(
        data,
        max_bytes=BIG,
        max_pixels=BIG,
        max_side=spec.fit,
        upscale=spec.norm.upscale,
        resize=spec.resize,
    )
    faces: list[Face] = model.detect([image])[0]
    return faces
