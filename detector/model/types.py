"""The model's input and what a decoder hands back for one image, before NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image decoded by the detector (detector/imaging.py) for the model."""

    # (h, w, 3) RGB, already scaled to fit the model input: uint8, or float32 when resized the
    # way mmcv does (ModelScope keeps the resized pixels unrounded)
    pixels: np.ndarray
    width: int  # original size, after EXIF orientation
    height: int
    scale_x: float  # pixels.shape[1] / width
    scale_y: float


@dataclass(frozen=True, slots=True)
class Candidates:
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    scores: np.ndarray  # (n,)
    kps: np.ndarray  # (n, 5, 2)

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2)))


class Decoder(Protocol):
    """Turns raw network outputs for a batch into per-image candidates above a threshold."""

    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> list[Candidates]: ...
