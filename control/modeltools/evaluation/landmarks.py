"""Keypoint accuracy: the normalised mean error (NME) of the five landmarks.

Ground truth in the layout RetinaFace publishes for WIDER FACE (`label.txt`): a `# <event>/<file>`
line per image, then one line per face, `x y w h` and, when the face has landmarks, five
`px py flag` triples (left eye, right eye, nose, left and right mouth corner; -1 where a point
is not annotated), sometimes a last number (a confidence). A face counts when all five points
are annotated.

A face's error is the mean distance of its five points to the truth divided by the size of its
ground-truth box, sqrt(w * h); the NME is the mean over faces. Faces are matched one to one:
predictions best score first, each takes the unmatched face it overlaps most at IoU >= 0.5 (the
same overlap as the AP), so a duplicate never takes a face twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facestream.control.modeltools.evaluation.protocol import (
    IOU_THRESHOLD,
    Predictions,
    iou_matrix,
    xyxy,
)
from facestream.control.modeltools.evaluation.widerface import GroundTruthError

POINTS = 5
LABEL_FILE = "label.txt"


@dataclass(frozen=True)
class LandmarkTruth:
    boxes: np.ndarray  # (k, 4) x y w h
    points: np.ndarray  # (k, 5, 2); nan where not annotated
    valid: np.ndarray  # (k,) bool: all five points annotated


@dataclass(frozen=True)
class NMEResult:
    nme: float  # mean over the faces scored; nan when none
    faces: int  # faces scored: matched, with all five points
    annotated: int  # faces with all five points in the images evaluated
    per_point: list[float]  # mean normalised error of each point


def read_labels(path: Path) -> dict[str, LandmarkTruth]:
    """image name (as in `# name`) -> its faces."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"{path}: cannot be read: {exc}") from None
    faces: dict[str, list[list[float]]] = {}
    current: list[list[float]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            name = line[1:].split()
            if not name:
                raise GroundTruthError(f"{path}:{number}: '#' without an image name")
            current = faces.setdefault(name[0], [])
            continue
        if current is None:
            raise GroundTruthError(f"{path}:{number}: a face before any '# name' line")
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise GroundTruthError(f"{path}:{number}: not a face line: {line[:60]!r}") from None
        if len(values) < 4:
            raise GroundTruthError(f"{path}:{number}: a face needs x y w h")
        current.append(values)
    return {name: _truth(rows) for name, rows in faces.items()}


def _truth(rows: list[list[float]]) -> LandmarkTruth:
    boxes = np.array([r[:4] for r in rows], np.float64).reshape(-1, 4)
    points = np.full((len(rows), POINTS, 2), np.nan)
    for i, row in enumerate(rows):
        if len(row) < 4 + 3 * POINTS:
            continue
        xy = np.array(row[4 : 4 + 3 * POINTS]).reshape(POINTS, 3)[:, :2]
        present = ~np.all(xy == -1, axis=1)
        points[i][present] = xy[present]
    valid = ~np.isnan(points).any(axis=(1, 2))
    return LandmarkTruth(boxes, points, valid)


def find_labels(root: Path) -> Path | None:
    """RetinaFace's val `label.txt` where it is usually unpacked next to the images."""
    for candidate in (root, root / "WIDER_val", root / "wider_face_split", root / "val"):
        if (candidate / LABEL_FILE).is_file():
            return candidate / LABEL_FILE
    return None


def match_one_to_one(
    boxes: np.ndarray, truth: np.ndarray, iou: float = IOU_THRESHOLD
) -> list[tuple[int, int]]:
    """(prediction, face) pairs; predictions are taken best score first."""
    if len(boxes) == 0 or len(truth) == 0:
        return []
    overlaps = iou_matrix(boxes, truth)
    taken = np.zeros(len(truth), bool)
    pairs = []
    for h in range(len(boxes)):
        row = np.where(taken, -1.0, overlaps[h])
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            pairs.append((h, j))
    return pairs


def face_errors(predicted: np.ndarray, truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(m, 5): each point's distance to the truth over sqrt(w * h) of the face's box."""
    size: np.ndarray = np.sqrt(np.clip(boxes[:, 2] * boxes[:, 3], 1e-12, None))
    distance: np.ndarray = np.linalg.norm(predicted - truth, axis=2)
    out: np.ndarray = distance / size[:, None]
    return out


def nme(
    predictions: list[Predictions], truths: list[LandmarkTruth | None], min_score: float = 0.0
) -> NMEResult:
    """Over the images that have landmark ground truth (None: none for that image); only
    predictions scoring at least `min_score` are matched."""
    errors: list[np.ndarray] = []
    annotated = 0
    for pred, truth in zip(predictions, truths, strict=True):
        if truth is None:
            continue
        annotated += int(truth.valid.sum())
        keep = pred.scores >= min_score
        pairs = match_one_to_one(pred.boxes[keep], xyxy(truth.boxes))
        kps = pred.kps[keep]
        for h, j in pairs:
            if truth.valid[j]:
                at = slice(j, j + 1)
                errors.append(face_errors(kps[h : h + 1], truth.points[at], truth.boxes[at]))
    if not errors:
        return NMEResult(float("nan"), 0, annotated, [float("nan")] * POINTS)
    stacked = np.concatenate(errors)
    return NMEResult(
        float(stacked.mean()), len(stacked), annotated, [float(v) for v in stacked.mean(axis=0)]
    )
