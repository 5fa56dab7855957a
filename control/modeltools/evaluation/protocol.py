"""Average precision as WIDER FACE's official evaluation computes it (re-derived from its
description, not copied):

- Scores are min-max normalised to [0, 1] over every prediction of the run, so one fixed sweep
  of 1000 thresholds (0.999, 0.998, ..., 0) covers the whole curve whatever the score range.
- Per image, predictions best score first: each looks at the ground-truth face it overlaps most
  (IoU with the official pixel-inclusive sides, x2 - x1 + 1). At IoU >= 0.5: an ignore face
  drops the prediction (neither true nor false positive); a counted face not yet found is
  recalled; a face already found leaves the prediction a false positive: it never falls back to
  its second-best face. Under 0.5 it is a false positive.
- An image with no ground-truth face, or no prediction, is skipped (its counted faces still
  count in the recall), as the official script does.
- Per threshold, summed over images: TP = faces recalled by the predictions scoring at least
  the threshold, proposals = those predictions not dropped; precision TP / proposals, recall
  TP / counted faces. AP: the precision envelope (the best precision at any higher recall)
  summed over the recall steps, as VOC's `voc_ap` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facestream.control.modeltools.evaluation.widerface import ImageTruth

IOU_THRESHOLD = 0.5
THRESHOLDS = 1000


@dataclass(frozen=True)
class Predictions:
    """One image's predictions, best score first."""

    boxes: np.ndarray  # (n, 4) float64 x1 y1 x2 y2
    scores: np.ndarray  # (n,)
    kps: np.ndarray  # (n, 5, 2)

    @classmethod
    def sorted(cls, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray) -> Predictions:
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        return cls(
            np.asarray(boxes, np.float64).reshape(-1, 4)[order],
            np.asarray(scores, np.float64)[order],
            np.asarray(kps, np.float64).reshape(-1, 5, 2)[order],
        )


@dataclass(frozen=True)
class SubsetResult:
    ap: float  # nan when the subset counts no face
    faces: int  # faces counted (not ignored)
    recall: float  # at the lowest threshold: the best the predictions reach
    precision: np.ndarray  # (THRESHOLDS,) the curve, highest threshold first
    recalls: np.ndarray  # (THRESHOLDS,)


def xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """Annotated x y w h to corners; the official conversion: x2 = x + w."""
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, k) overlaps of corner boxes, sides counted pixel-inclusive (+1) as the official
    box overlap does."""
    a = a.reshape(-1, 1, 4)
    b = b.reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(
    boxes: np.ndarray, truth: np.ndarray, keep: np.ndarray, iou: float = IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """For predictions best score first: (faces recalled after each, whether each counts as a
    proposal), by the rules in the module's docstring."""
    n = len(boxes)
    recalled = np.zeros(n, np.int64)
    counted = np.ones(n, bool)
    if n == 0 or len(truth) == 0:
        return recalled, counted
    overlaps = iou_matrix(boxes, truth)
    found = np.zeros(len(truth), bool)
    hits = 0
    for h in range(n):
        j = int(np.argmax(overlaps[h]))
        if overlaps[h, j] >= iou:
            if not keep[j]:
                counted[h] = False
            elif not found[j]:
                found[j] = True
                hits += 1
        recalled[h] = hits
    return recalled, counted


def thresholds(count: int = THRESHOLDS) -> np.ndarray:
    return 1.0 - (np.arange(count, dtype=np.float64) + 1) / count


def normalise(scores: list[np.ndarray]) -> list[np.ndarray]:
    """Min-max over every prediction of the run. The official bounds start at min 1, max 0, so
    probabilities that all sit inside (lo, hi) are stretched from the smallest to the largest;
    one score for all (nothing to stretch) becomes 1."""
    present = [s for s in scores if len(s)]
    if not present:
        return scores
    lo = min(1.0, *(float(s.min()) for s in present))
    hi = max(0.0, *(float(s.max()) for s in present))
    if hi - lo <= 0:
        return [np.ones_like(s) for s in scores]
    return [(s - lo) / (hi - lo) for s in scores]


def image_curve(
    scores: np.ndarray, recalled: np.ndarray, counted: np.ndarray, sweep: np.ndarray
) -> np.ndarray:
    """(len(sweep), 2): proposals and faces recalled at each threshold, for one image whose
    normalised scores are sorted best first."""
    at = np.searchsorted(-scores, -sweep, side="right")  # predictions scoring >= threshold
    proposals = np.concatenate([[0], np.cumsum(counted)])
    found = np.concatenate([[0], recalled])
    return np.stack([proposals[at], found[at]], axis=1).astype(np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # best precision at this recall or beyond
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def evaluate(
    predictions: list[Predictions],
    truths: list[ImageTruth],
    subsets: tuple[str, ...],
    iou: float = IOU_THRESHOLD,
    count: int = THRESHOLDS,
) -> dict[str, SubsetResult]:
    """AP per subset over these images (predictions[i] for truths[i])."""
    if len(predictions) != len(truths):
        raise ValueError("one set of predictions per image")
    scores = normalise([p.scores for p in predictions])
    sweep = thresholds(count)
    out: dict[str, SubsetResult] = {}
    for subset in subsets:
        curve = np.zeros((count, 2))
        faces = 0
        for pred, norm, truth in zip(predictions, scores, truths, strict=True):
            keep = truth.keep[subset]
            faces += int(keep.sum())
            if len(truth.boxes) == 0 or len(pred.scores) == 0:
                continue
            recalled, counted = match_image(pred.boxes, xyxy(truth.boxes), keep, iou)
            curve += image_curve(norm, recalled, counted, sweep)
        proposals, found = curve[:, 0], curve[:, 1]
        precision = np.divide(found, proposals, out=np.zeros(count), where=proposals > 0)
        recall = found / faces if faces else np.zeros(count)
        ap = voc_ap(recall, precision) if faces else float("nan")
        out[subset] = SubsetResult(ap, faces, float(recall[-1]), precision, recall)
    return out
