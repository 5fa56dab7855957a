"""Ground-truth readers (the official .mat files written here with scipy, the text list,
RetinaFace's landmark label.txt) and the landmarks' NME on hand cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facestream.control.modeltools.evaluation.landmarks import (
    face_errors,
    find_labels,
    match_one_to_one,
    nme,
    read_labels,
)
from facestream.control.modeltools.evaluation.protocol import Predictions
from facestream.control.modeltools.evaluation.widerface import (
    GroundTruthError,
    find_ground_truth,
    images_dir,
    read_mat,
    read_txt,
    select,
)
from tests.support.wider import _cells

TXT = """0--Parade/0_Parade_marchingband_1_465.jpg
2
345 211 4 4 2 0 0 0 2 0
331 126 3 3 0 0 0 1 0 0
0--Parade/0_Parade_Parade_0_3.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_Handshaking_1.jpg
1
10 20 30 40 0 0 0 0 0 0
"""


def test_text_list(tmp_path: Path) -> None:
    path = tmp_path / "wider_face_val_bbx_gt.txt"
    path.write_text(TXT)
    gt = read_txt(path)
    assert gt.subsets == ("all",)
    assert [i.name for i in gt.images] == [
        "0--Parade/0_Parade_marchingband_1_465.jpg",
        "0--Parade/0_Parade_Parade_0_3.jpg",
        "1--Handshaking/1_Handshaking_1.jpg",
    ]
    first, empty, last = gt.images
    assert first.boxes.tolist() == [[345, 211, 4, 4], [331, 126, 3, 3]]
    assert first.keep["all"].tolist() == [True, False]  # the second face is flagged invalid
    assert empty.boxes.shape == (0, 4) and empty.keep["all"].shape == (0,)
    assert last.boxes.tolist() == [[10, 20, 30, 40]]
    path.write_text("a/b.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(GroundTruthError, match="3 faces announced"):
        read_txt(path)


def write_mats(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        directory / "wider_face_val.mat",
        {
            "event_list": _cells(["0--Parade", "1--Handshaking"]),
            "file_list": _cells([_cells(["p_1", "p_2"]), _cells(["h_1"])]),
            "face_bbx_list": _cells(
                [
                    _cells([np.array([[1, 2, 3, 4], [5, 6, 7, 8.0]]), np.zeros((0, 4))]),
                    _cells([np.array([[9, 9, 9, 9.0]])]),
                ]
            ),
            "invalid_label_list": _cells(
                [_cells([np.array([[0], [1]]), np.zeros((0, 1))]), _cells([np.array([[0]])])]
            ),
        },
    )
    subsets = {"easy": ([[2]], [[]], [[]]), "hard": ([[1], [2]], [[]], [[1]])}
    for subset, (p1, p2, h1) in subsets.items():
        gt_list = _cells([_cells([np.array(p1), np.array(p2)]), _cells([np.array(h1)])])
        scipy.io.savemat(directory / f"wider_{subset}_val.mat", {"gt_list": gt_list})


def test_official_mat_files(tmp_path: Path) -> None:
    write_mats(tmp_path / "eval_tools" / "ground_truth")
    gt = find_ground_truth(tmp_path)
    assert gt.subsets == ("easy", "hard")  # medium's file is not there
    assert [i.name for i in gt.images] == [
        "0--Parade/p_1.jpg",
        "0--Parade/p_2.jpg",
        "1--Handshaking/h_1.jpg",
    ]
    p1, p2, h1 = gt.images
    assert p1.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert p1.keep["easy"].tolist() == [False, True]  # gt_list indices start at 1
    assert p1.keep["hard"].tolist() == [True, True]
    assert p2.boxes.shape == (0, 4) and p2.keep["easy"].shape == (0,)
    assert h1.keep["easy"].tolist() == [False] and h1.keep["hard"].tolist() == [True]
    # Without subset files: every face the invalid flags leave.
    alone = read_mat(tmp_path / "eval_tools" / "ground_truth" / "wider_face_val.mat", {})
    assert alone.subsets == ("all",) and alone.images[0].keep["all"].tolist() == [True, False]
    assert "valid faces only" in alone.note


def test_mat_preferred_and_refusals(tmp_path: Path) -> None:
    write_mats(tmp_path / "wider_face_split")
    (tmp_path / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text(TXT)
    assert find_ground_truth(tmp_path).subsets == ("easy", "hard")
    for name in ("easy", "hard"):
        (tmp_path / "wider_face_split" / f"wider_{name}_val.mat").unlink()
    assert find_ground_truth(tmp_path).subsets == ("all",)  # the text list then
    bad = tmp_path / "bad"
    write_mats(bad)
    scipy.io.savemat(
        bad / "wider_easy_val.mat",
        {"gt_list": _cells([_cells([np.array([[3]]), np.array([[]])]), _cells([np.array([[1]])])])},
    )
    with pytest.raises(GroundTruthError, match=r"outside 1\.\.2"):
        find_ground_truth(tmp_path, bad)
    (bad / "wider_face_val.mat").write_bytes(b"not a mat file")
    with pytest.raises(GroundTruthError, match=r"not a readable \.mat"):
        find_ground_truth(tmp_path, bad)
    with pytest.raises(
        GroundTruthError, match=r"no wider_face_val\.mat or wider_face_val_bbx_gt\.txt"
    ):
        find_ground_truth(tmp_path / "nowhere")
    with pytest.raises(GroundTruthError, match="no WIDER_val/images"):
        images_dir(tmp_path)


def test_select_every_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text("".join(f"e/{i}.jpg\n1\n1 1 5 5 0 0 0 0 0 0\n" for i in range(10)))
    images = read_txt(path).images
    assert [i.name for i in select(images, 3, None)] == ["e/0.jpg", "e/3.jpg", "e/6.jpg", "e/9.jpg"]
    assert [i.name for i in select(images, 3, 2)] == ["e/0.jpg", "e/3.jpg"]


LABELS = """# 0--Parade/p_1.jpg
10 10 10 40 12.0 20.0 0.0 18.0 20.0 0.0 15.0 30.0 0.0 13.0 40.0 0.0 17.0 40.0 0.0 0.82
100 10 10 40 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0
200 10 20 20
# 1--Handshaking/h_1.jpg
"""


def test_landmark_labels_and_nme_by_hand(tmp_path: Path) -> None:
    (tmp_path / "WIDER_val").mkdir()
    (tmp_path / "WIDER_val" / "label.txt").write_text(LABELS)
    path = find_labels(tmp_path)
    assert path == tmp_path / "WIDER_val" / "label.txt"
    labels = read_labels(path)
    first = labels["0--Parade/p_1.jpg"]
    assert first.valid.tolist() == [True, False, False]
    assert first.points[0].tolist() == [[12, 20], [18, 20], [15, 30], [13, 40], [17, 40]]
    assert labels["1--Handshaking/h_1.jpg"].boxes.shape == (0, 4)
    # Face 1's box is 10 x 40: sqrt(w h) = 20. Predicted points 3, 4 px off (5 px): 0.25 each.
    truth_pts = first.points[0]
    off = truth_pts + np.array([3.0, 4.0])
    boxes = np.array([[10, 10, 20, 50], [100, 10, 110, 50], [11, 10, 21, 50.0]])
    kps = np.stack([off, truth_pts, truth_pts])
    pred = Predictions.sorted(boxes, np.array([0.9, 0.8, 0.5]), kps)
    found = nme([pred], [first])
    assert found.faces == 1 and found.annotated == 1  # the duplicate (0.5) takes nothing
    assert found.nme == pytest.approx(0.25) and found.per_point == pytest.approx([0.25] * 5)
    # Only faces served (score >= min_score) are matched.
    assert nme([pred], [first], min_score=0.6).nme == pytest.approx(0.25)
    assert nme([pred], [first], min_score=0.95).faces == 0
    assert np.isnan(nme([pred], [None]).nme)
    errors = face_errors(kps[:1], truth_pts[None], np.array([[10, 10, 10, 40.0]]))
    assert errors[0].tolist() == pytest.approx([0.25] * 5)
    assert match_one_to_one(boxes, np.array([[10, 10, 20, 50.0]])) == [(0, 0)]
    (tmp_path / "bad.txt").write_text("1 2 3 4\n")
    with pytest.raises(GroundTruthError, match="before any '# name'"):
        read_labels(tmp_path / "bad.txt")
