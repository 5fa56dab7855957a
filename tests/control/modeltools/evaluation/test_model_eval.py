"""`facestream model eval` end to end: the real built-in model on a generated WIDER-like
directory whose faces are known by construction (tests/support/wider.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facestream.control.cli import main
from facestream.control.samples import encode, lfw_mosaic
from tests.support import wider
from tests.support.faces import detect

COUNTED = 17  # easy / medium: 16 findable faces + 1 box on empty canvas
FOUND = 16


def lower_bound(found: int, faces: int, false: int) -> float:
    """AP when all `false` positives outrank every true one (the worst order): the k-th true
    positive comes at precision k / (k + false)."""
    return sum(k / (k + false) for k in range(1, found + 1)) / faces


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, builtin_model: Any) -> Path:
    """The generated set; its counted faces carry landmarks: the built-in model's points for
    the same LFW tile on the mosaic (another image, another scale), mapped by the paste."""
    points: dict[int, np.ndarray] = {}
    for face in detect(builtin_model, encode(lfw_mosaic())):
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        k = int(cy // wider.TILE) * 5 + int(cx // wider.TILE)
        origin = np.array([(k % 5) * wider.TILE, (k // 5) * wider.TILE])
        points.setdefault(k, np.array(face.kps) - origin)  # best score first
    root = tmp_path_factory.mktemp("wider")
    wider.write(root, wider.pictures(points))
    return root


def evaluate(
    root: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[int, dict[str, Any], str]:
    status = main(["model", "eval", str(root), "--model", "builtin", "--json", *options])
    out = capsys.readouterr()
    return status, json.loads(out.out) if status == 0 else {}, out.err


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(tmp_path / "models"))


def test_eval_on_the_generated_set(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report, _ = evaluate(dataset, capsys)
    assert status == 0
    assert report["tag"].startswith("retinaface-mnet025-") and report["images"] == 4
    assert report["refused"] == {} and report["images_per_s"] > 0
    easy, medium, hard = (report["subsets"][s] for s in ("easy", "medium", "hard"))
    # Every findable face found, the empty box never: recall exactly 16 / 17. The invalid face
    # and (in easy / medium) the tiny ones are ignore faces: not counted.
    assert easy["faces"] == medium["faces"] == COUNTED
    assert easy["recall"] == pytest.approx(FOUND / COUNTED, abs=1e-6)
    # AP sits between the worst order of the two unannotated faces' detections and no false
    # positive before the last true one.
    assert lower_bound(FOUND, COUNTED, 2) - 1e-6 <= easy["ap"] <= FOUND / COUNTED + 1e-6
    assert medium == easy
    # Hard counts the three 20 px faces too (the model may find some, not the empty box).
    assert hard["faces"] == COUNTED + 3
    assert FOUND <= round(hard["recall"] * hard["faces"]) <= FOUND + 3
    marks = report["landmarks"]
    assert marks["annotated"] == FOUND and marks["faces"] == FOUND
    assert 0 < marks["nme"] < 0.06 and marks["min_score"] == 0.9

    assert main(["model", "eval", str(dataset), "--model", "builtin"]) == 0
    table = capsys.readouterr().out
    assert f"easy       {100 * easy['ap']:.2f}   {100 * easy['recall']:.2f}      17" in table
    assert "landmarks NME" in table and "4 images (every image)" in table


def test_subsets_of_images_and_the_text_list(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report, _ = evaluate(dataset, capsys, "--every", "2", "--limit", "1")
    assert status == 0 and report["images"] == 1  # the first image: five faces, all found
    assert report["subsets"]["easy"] == {"ap": 1.0, "faces": 5, "recall": 1.0}
    # The text list alone: no subsets, every valid face counted (the invalid one is not).
    root = tmp_path / "txt"
    shutil.copytree(dataset, root)
    shutil.rmtree(root / "eval_tools")
    (root / "wider_face_split" / "wider_face_val.mat").unlink()
    status, report, _ = evaluate(root, capsys)
    assert status == 0 and list(report["subsets"]) == ["all"]
    assert report["subsets"]["all"]["faces"] == COUNTED + 3
    assert "valid faces only" in report["note"]


def test_refused_and_missing_images(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(dataset, root)
    images = root / "WIDER_val" / "images"
    (images / "0--Parade" / "0_Parade_marchingband_1_2.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    status, report, _ = evaluate(root, capsys)
    # The detector would refuse it: its 6 counted faces are misses, as with no prediction.
    assert status == 0 and len(report["refused"]) == 1
    assert report["subsets"]["easy"]["recall"] == pytest.approx((FOUND - 5) / COUNTED, abs=1e-6)
    (images / "1--Handshaking" / "1_Handshaking_2.jpg").unlink()
    status, _, err = evaluate(root, capsys)
    assert status == 2 and "1 of 4 images missing" in err and "1_Handshaking_2.jpg" in err
    status, _, err = evaluate(tmp_path / "nothing", capsys)
    assert status == 2 and "no wider_face_val.mat" in err
