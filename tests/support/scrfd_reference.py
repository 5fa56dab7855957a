"""ModelScope's SCRFD / DamoFD post-processing, re-implemented in numpy from what its code does
(SCRFDHead.get_bboxes / _get_bboxes_single, multiclass_nms with mmcv's batched_nms), as the
reference our decoder is checked against when mmcv-full is not installed:

- per stride, scores = sigmoid(logits); maps are read cell-major, the anchors of a cell last;
- anchor centres (x * stride, y * stride): mmdet's AnchorGenerator with centre offset 0;
- boxes = centre -/+ distances * stride, clamped to the resized image (img_shape);
  keypoints = centre + offsets * stride, not clamped;
- with rescale, boxes and keypoints are divided by the resize factors (w, h);
- candidates with score > score_thr (strictly) go to NMS: by score, suppressing IoU > iou_thr
  (areas without the +1 convention), at most max_per_img kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (n, 4) in original-image pixels
    scores: np.ndarray  # (n,)
    kps: np.ndarray  # (n, 10)


def _centres(h: int, w: int, stride: int, anchors: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64) * stride
    return np.repeat(points, anchors, axis=0)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        survivors = []
        for j in order:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = area[i] + area[j] - inter
            # mmcv suppresses when IoU > threshold; two empty boxes (0 / 0) are not suppressed.
            if union <= 0 or inter / union <= iou_thr:
                survivors.append(j)
        order = survivors
    return keep


def postprocess(
    scores: list[np.ndarray],
    boxes: list[np.ndarray],
    kps: list[np.ndarray],
    strides: tuple[int, ...],
    img_shape: tuple[int, int],
    scale_factor: tuple[float, float],
    score_thr: float = 0.3,
    iou_thr: float = 0.45,
    max_per_img: int = 1000,
) -> Detections:
    """One image's raw head maps, (c, h, w) per stride, to detections."""
    all_boxes, all_scores, all_kps = [], [], []
    for s_map, b_map, k_map, stride in zip(scores, boxes, kps, strides, strict=True):
        anchors = s_map.shape[0]
        h, w = s_map.shape[1:]
        score = 1.0 / (1.0 + np.exp(-s_map.transpose(1, 2, 0).reshape(-1).astype(np.float64)))
        dist = b_map.transpose(1, 2, 0).reshape(-1, 4).astype(np.float64) * stride
        offs = k_map.transpose(1, 2, 0).reshape(-1, 10).astype(np.float64) * stride
        centre = _centres(h, w, stride, anchors)
        box = np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], axis=1)
        box[:, 0::2] = box[:, 0::2].clip(0, img_shape[1])
        box[:, 1::2] = box[:, 1::2].clip(0, img_shape[0])
        all_boxes.append(box)
        all_scores.append(score)
        all_kps.append(np.tile(centre, 5) + offs)
    box = np.concatenate(all_boxes) / np.array(scale_factor * 2)
    pts = np.concatenate(all_kps) / np.array(scale_factor * 5)
    score = np.concatenate(all_scores)
    hot = score > score_thr
    box, score, pts = box[hot], score[hot], pts[hot]
    keep = _nms(box, score, iou_thr)[:max_per_img]
    return Detections(box[keep], score[keep], pts[keep])
