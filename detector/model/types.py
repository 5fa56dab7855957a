"""What a decoder hands back for one image, in model-input pixels, before NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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
