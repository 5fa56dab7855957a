"""RetinaFace (mobilenet0.25) output decoding: SSD-style anchors with centre/size variances.

Outputs per image: `loc` (n, 4) centre/size deltas, `conf` (n, 2) softmax (background, face),
`landmarks` (n, 10) offsets; anchors at strides 8/16/32 with two sizes each, centred on cells.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from facestream.detector.model.types import Candidates

STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


@lru_cache(maxsize=32)
def anchors_for(height: int, width: int) -> np.ndarray:
    """(n, 4) anchors in pixels: cx, cy, w, h, in the network's output order."""
    levels = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        centres = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.array([(s, s) for s in sizes], dtype=np.float64), (nx * ny, 1))
        levels.append(np.hstack([centres, wh]))
    out = np.concatenate(levels).astype(np.float32)
    out.setflags(write=False)
    return out


class RetinaFaceDecoder:
    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> list[Candidates]:
        loc, conf, landmarks = outputs
        anchors = anchors_for(height, width)
        if loc.shape[1] != len(anchors):
            raise ValueError(
                f"model produced {loc.shape[1]} anchors for {width}x{height}, "
                f"expected {len(anchors)}"
            )
        centres, sizes = anchors[:, :2], anchors[:, 2:]
        out = []
        for b in range(loc.shape[0]):
            scores = conf[b, :, 1]
            idx = np.nonzero(scores > threshold)[0]
            if idx.size == 0:
                out.append(Candidates.empty())
                continue
            c, s = centres[idx], sizes[idx]
            d = loc[b, idx]
            ctr = c + d[:, :2] * CENTER_VARIANCE * s
            wh = s * np.exp(d[:, 2:] * SIZE_VARIANCE)
            boxes = np.hstack([ctr - wh / 2, ctr + wh / 2])
            pts = landmarks[b, idx].reshape(-1, 5, 2)
            kps = c[:, None, :] + pts * CENTER_VARIANCE * s[:, None, :]
            out.append(Candidates(boxes, scores[idx], kps))
        return out
