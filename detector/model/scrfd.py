"""SCRFD-family decoding (DamoFD-0.5G exports to this layout; InsightFace's SCRFD zoo too).

Per stride (8, 16, 32): scores (one per anchor), box distances (left, top, right, bottom) and,
when present, five keypoint offsets, both in units of the stride, around anchor centres at
(x * stride, y * stride) with `anchors_per_cell` anchors per cell. Which output is which is
read from the shapes: the last axis says the head (1 / 4 / 10), the anchor count the stride.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from facestream.detector.model.types import Candidates

STRIDES = (8, 16, 32)


@lru_cache(maxsize=64)
def centres_for(height: int, width: int, stride: int, per_cell: int) -> np.ndarray:
    ny, nx = height // stride, width // stride
    ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * stride
    out = np.repeat(centres, per_cell, axis=0)
    out.setflags(write=False)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


class SCRFDDecoder:
    def __init__(self, apply_sigmoid: bool, strides: tuple[int, ...] = STRIDES) -> None:
        self.apply_sigmoid = apply_sigmoid
        self.strides = strides

    def _heads(self, outputs: list[np.ndarray], batch: int) -> dict[int, list[np.ndarray]]:
        heads: dict[int, list[np.ndarray]] = {1: [], 4: [], 10: []}
        for out in outputs:
            width = out.shape[-1]
            if width not in heads:
                raise ValueError(f"unexpected SCRFD output with last axis {width}")
            # Batch-1 exports emit (n, c); batched ones (b, n, c).
            heads[width].append(out.reshape(batch, -1, width))
        for width, arrays in heads.items():
            # More anchors = finer stride; sorting makes the output order irrelevant.
            arrays.sort(key=lambda a: -a.shape[1])
            if arrays and len(arrays) != len(self.strides):
                raise ValueError(f"expected {len(self.strides)} outputs of width {width}")
        if not heads[1] or not heads[4]:
            raise ValueError("SCRFD graph needs score (x1) and box (x4) outputs")
        return heads

    def decode(
        self, outputs: list[np.ndarray], height: int, width: int, threshold: float
    ) -> list[Candidates]:
        batch = outputs[0].shape[0] if outputs[0].ndim == 3 else 1
        heads = self._heads(outputs, batch)
        per_image: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [
            [] for _ in range(batch)
        ]
        for level, stride in enumerate(self.strides):
            scores_all = heads[1][level][..., 0]
            if self.apply_sigmoid:
                scores_all = _sigmoid(scores_all)
            cells = (height // stride) * (width // stride)
            if cells == 0 or scores_all.shape[1] % cells:
                raise ValueError(
                    f"stride {stride}: {scores_all.shape[1]} anchors for {cells} cells"
                )
            centres = centres_for(height, width, stride, scores_all.shape[1] // cells)
            for b in range(batch):
                # Strictly above, as ModelScope's multiclass_nms keeps them.
                idx = np.nonzero(scores_all[b] > threshold)[0]
                if idx.size == 0:
                    continue
                c = centres[idx]
                d = heads[4][level][b, idx] * stride
                boxes = np.hstack([c - d[:, :2], c + d[:, 2:]])
                if heads[10]:
                    k = heads[10][level][b, idx].reshape(-1, 5, 2) * stride
                    kps = c[:, None, :] + k
                else:
                    kps = np.repeat(c[:, None, :], 5, axis=1)
                per_image[b].append((boxes, scores_all[b, idx], kps))
        out = []
        for parts in per_image:
            if not parts:
                out.append(Candidates.empty())
                continue
            out.append(
                Candidates(
                    np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]),
                )
            )
        return out
