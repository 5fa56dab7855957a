"""The WIDER FACE protocol's arithmetic on predictions made by hand (no model): matching, the
ignore rule, score normalisation, the threshold sweep and VOC's integral."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facestream.control.modeltools.evaluation.protocol import (
    Predictions,
    evaluate,
    iou_matrix,
    match_image,
    normalise,
    voc_ap,
    xyxy,
)
from facestream.control.modeltools.evaluation.widerface import ImageTruth
from tests.system.test_architecture import lint, tree_copy

NO_KPS = np.zeros((0, 5, 2))


def preds(boxes: list[list[float]], scores: list[float]) -> Predictions:
    return Predictions.sorted(
        np.array(boxes, float), np.array(scores), np.zeros((len(boxes), 5, 2))
    )


def truth(boxes: list[list[float]], **keep: list[bool]) -> ImageTruth:
    return ImageTruth(
        "e/x.jpg", np.array(boxes, float).reshape(-1, 4), {k: np.array(v) for k, v in keep.items()}
    )


def test_overlap_counts_pixels_inclusively() -> None:
    # The official overlap: a 1-pixel-apart pair of 2x2-pixel boxes shares one pixel of 7.
    assert iou_matrix(np.array([[0, 0, 1, 1.0]]), np.array([[1, 1, 2, 2.0]]))[
        0, 0
    ] == pytest.approx(1 / 7)
    assert iou_matrix(np.array([[0, 0, 9, 9.0]]), np.array([[20, 20, 29, 29.0]]))[0, 0] == 0
    assert xyxy(np.array([[10, 20, 30, 40.0]])).tolist() == [[10, 20, 40, 60]]


# Hand case: faces A, B, C counted, D an ignore face (x y w h, 20 x 20 each).
A, B, C, D = [0, 0, 20, 20], [100, 0, 20, 20], [200, 0, 20, 20], [300, 0, 20, 20]
HAND = preds(
    [
        [1, 1, 21, 21],  # p1 0.90 on A (IoU 0.83): TP
        [300, 0, 320, 20],  # p5 0.85 on D, an ignore face: dropped
        [500, 500, 520, 520],  # p2 0.80 on nothing: FP
        [100, 0, 120, 20],  # p3 0.70 on B: TP
        [0, 2, 20, 22],  # p4 0.60 on A again: FP (A already found)
    ],
    [0.90, 0.85, 0.80, 0.70, 0.60],
)


def test_hand_computed_average_precision() -> None:
    """Normalised scores (min 0.6, max 0.9): p1 1, p5 0.83, p2 0.67, p3 0.33, p4 0. Sweeping the
    threshold down, (proposals, TP) go (1,1) (1,1) (2,1) (3,2) (4,2): precision 1, 1, 1/2, 2/3,
    1/2 at recall 1/3, 1/3, 1/3, 2/3, 2/3 (3 faces counted). The envelope gives precision 1 for
    the step 0 -> 1/3 and 2/3 for 1/3 -> 2/3, nothing after: AP = 1/3 + 2/9 = 5/9."""
    out = evaluate([HAND], [truth([A, B, C, D], easy=[True, True, True, False])], ("easy",))
    assert out["easy"].faces == 3
    assert out["easy"].ap == pytest.approx(5 / 9)
    assert out["easy"].recall == pytest.approx(2 / 3)
    # The ignore rule matters: counting p5 as a false positive would give 1/3 + 1/6 = 1/2,
    # counting D as a face found would give 1/4 + 1/4 + 3/16 = 0.6875.
    assert out["easy"].ap != pytest.approx(1 / 2)
    assert out["easy"].ap != pytest.approx(0.6875)
    counted = evaluate([HAND], [truth([A, B, C, D], all=[True] * 4)], ("all",))
    assert counted["all"].ap == pytest.approx(0.6875)


def test_match_takes_the_best_face_and_never_falls_back() -> None:
    # Two overlapping faces; the second prediction overlaps the found one most (0.91) and the
    # other at 0.75: the official rule leaves it a false positive.
    faces = xyxy(np.array([[0, 0, 20, 20], [4, 0, 20, 20.0]]))
    boxes = np.array([[0, 0, 20, 20], [1, 0, 21, 20.0]])
    recalled, counted = match_image(boxes, faces, np.array([True, True]))
    assert recalled.tolist() == [1, 1] and counted.tolist() == [True, True]
    recalled, counted = match_image(boxes, faces, np.array([False, True]))
    assert recalled.tolist() == [0, 0] and counted.tolist() == [False, False]
    # Under IoU 0.5: a false positive even on an ignore face.
    recalled, counted = match_image(np.array([[0, 0, 8, 8.0]]), faces[:1], np.array([False]))
    assert counted.tolist() == [True]


def test_images_without_faces_or_predictions_are_skipped() -> None:
    """As the official script: an image with no face contributes no false positive; its
    counted faces still count when it has no prediction."""
    empty = truth([], easy=[])
    alone = truth([A], easy=[True])
    out = evaluate(
        [preds([[0, 0, 20, 20]], [0.9]), preds([[5, 5, 9, 9]], [0.95])], [alone, empty], ("easy",)
    )
    assert out["easy"].ap == pytest.approx(1.0)
    out = evaluate([preds([[0, 0, 20, 20]], [0.9]), preds([], [])], [alone, alone], ("easy",))
    assert out["easy"].faces == 2 and out["easy"].ap == pytest.approx(0.5)
    nothing = evaluate([preds([], [])], [truth([A], easy=[False])], ("easy",))
    assert np.isnan(nothing["easy"].ap) and nothing["easy"].faces == 0


def test_normalisation_matches_the_official_bounds() -> None:
    low, high = normalise([np.array([0.5, 0.9]), np.array([]), np.array([0.7])])[::2]
    assert low.tolist() == pytest.approx([0, 1]) and high.tolist() == pytest.approx([0.5])
    # Its bounds start at min 1 / max 0: scores above 1 are stretched from 1, not their min.
    assert normalise([np.array([3.0, 5.0])])[0].tolist() == pytest.approx([0.5, 1.0])
    assert normalise([np.array([0.4, 0.4])])[0].tolist() == [1.0, 1.0]


def test_voc_integral() -> None:
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    # A dip in precision is lifted by the envelope to the best precision further right.
    assert voc_ap(np.array([0.25, 0.5, 0.75]), np.array([1.0, 0.4, 0.6])) == pytest.approx(0.55)


def reference_ap(ranks: list[bool], faces: int) -> float:
    """AP from first principles for a ranking of distinct scores: TP / FP per rank."""
    tp = np.cumsum(ranks)
    precision = tp / np.arange(1, len(ranks) + 1)
    best = np.maximum.accumulate(precision[::-1])[::-1]
    return float(sum(best[i] for i, hit in enumerate(ranks) if hit) / faces)


def test_known_by_construction_random_rankings() -> None:
    """Faces placed apart, predictions exactly on some of them (TP), others on empty ground
    (FP), scores at least 0.002 apart after normalisation so no two share a threshold step:
    the protocol's AP equals the ranking's AP computed directly."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        faces = int(rng.integers(1, 12))
        found = int(rng.integers(0, faces + 1))
        false = int(rng.integers(0, 6))
        ranks = [True] * found + [False] * false
        rng.shuffle(ranks)
        scores = np.linspace(0.99, 0.1, len(ranks)) if ranks else np.array([])
        boxes = []
        for i, hit in enumerate(ranks):
            x = 50.0 * (sum(ranks[:i]) if hit else 100 + i)
            boxes.append([x, 0, x + 20, 20])
        gt = [[50.0 * i, 0, 20, 20] for i in range(faces)]
        out = evaluate([preds(boxes, list(scores))], [truth(gt, all=[True] * faces)], ("all",))
        expected = reference_ap(ranks, faces) if ranks else 0.0
        assert out["all"].ap == pytest.approx(expected, abs=1e-9), (ranks, faces)
        assert out["all"].recall == pytest.approx(found / faces)


@pytest.mark.parametrize(
    "source",
    ["import redis  # noqa: F401\n", "from facestream.detector import worker  # noqa: F401\n"],
)
def test_the_evaluation_stays_off_redis_and_the_serving_runtime(
    tmp_path: Path, source: str
) -> None:
    """Its import contract (pyproject.toml) fails on a copy of the tree that breaks it."""
    tree = tree_copy(tmp_path)
    (tree / "control" / "modeltools" / "evaluation" / "violation.py").write_text(source)
    done = lint(tree)
    assert done.returncode != 0
    assert "offline model tooling runs" in done.stdout.split("Broken contracts")[1]
