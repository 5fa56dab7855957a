"""builtin-int8 against the fp32 built-in model: the real model, real photos, through the
detector's decoding. The bar (issue #28): of fp32's faces scored >= 0.9, the int8 copy finds
>= 99 % at 0.9, each matched at IoU >= 0.5, scores within 0.03, on every real photo the
installed packages ship (scikit-image's and matplotlib's, all 100 LFW faces, InsightFace's
sample photos), each also mirrored and at 25 %; and on photos its calibration never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from facestream.common.contract.schema import Face
from facestream.common.settings import Settings
from facestream.control import model_cli
from facestream.control.modeltools import photos as photo_set
from facestream.control.modeltools import quantize as q
from facestream.detector.model.int8 import MANIFEST_FILE, ONNX_FILE, QUANTIZED_NAME
from facestream.detector.model.loader import ModelLoadError, builtin_weights, load_model
from tests.conftest import encode
from tests.support.faces import detect, iou

# What the fp32 built-in model's tag is: the int8 copy must leave it (and its cache) alone.
FP32_TAG = "retinaface-mnet025-7b597ddd2244"
PROBE = 0.5  # both models down to this score, so an int8 face just under 0.9 is still seen


@pytest.fixture(scope="module")
def photo_pngs() -> dict[str, bytes]:
    return {name: encode(px) for name, px in photo_set.photo_set().items()}


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    assert model_cli.quantize(Settings(model_dir=str(root))) == 0
    return root


@pytest.fixture(scope="module")
def int8_model(int8_dir: Path) -> Any:
    return load_model(Settings(model=QUANTIZED_NAME, model_dir=str(int8_dir)))


@pytest.fixture(scope="module")
def fp32_probe() -> Any:
    return load_model(Settings(score_threshold=PROBE))


def bar(ref_model: Any, int8_model: Any, pngs: dict[str, bytes]) -> tuple[int, int, float]:
    """(fp32 faces >= 0.9, of them found by int8 at >= 0.9 and IoU >= 0.5, worst score
    difference), matched here independently of quantize.parity."""
    faces = found = 0
    worst = 0.0
    for data in pngs.values():
        ref = [f for f in detect(ref_model, data) if f.score >= 0.9]
        free: list[Face] = detect(int8_model, data)
        for face in ref:
            faces += 1
            best = max(free, key=lambda g: iou(face.box, g.box), default=None)
            if best is None or iou(face.box, best.box) < 0.5:
                continue
            free.remove(best)
            worst = max(worst, abs(face.score - best.score))
            found += best.score >= 0.9
    return faces, found, worst


def test_int8_finds_fp32s_faces_on_every_photo(
    fp32_probe: Any, int8_dir: Path, photo_pngs: dict[str, bytes]
) -> None:
    int8 = load_model(
        Settings(model=QUANTIZED_NAME, model_dir=str(int8_dir), score_threshold=PROBE)
    )
    faces, found, worst = bar(fp32_probe, int8, photo_pngs)
    assert faces >= 200  # 241 with insightface's photos, 216 without
    assert found / faces >= 0.99, f"{found} of {faces}"
    assert worst <= 0.03


def test_int8_finds_them_on_photos_its_calibration_never_saw(
    fp32_probe: Any, photo_pngs: dict[str, bytes], tmp_path: Path
) -> None:
    # The hardest LFW mosaic (its faces are where earlier recipes lost faces) and the group
    # photo, all four copies of each, are left out of the calibration.
    held = {n for n in photo_pngs if n.startswith(("lfw_mosaic_2", "insightface_t1"))}
    images = q.decoded(photo_set.photo_set(), fp32_probe.spec)
    tensors = q.calibration_tensors(fp32_probe, (im for n, im in images.items() if n not in held))
    fp32 = builtin_weights()
    q.install(tmp_path, q.quantize(fp32, tensors), q.sha256(fp32), {})
    int8 = load_model(
        Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path), score_threshold=PROBE)
    )
    faces, found, worst = bar(fp32_probe, int8, {n: photo_pngs[n] for n in held})
    assert faces >= 40
    assert found / faces >= 0.99, f"{found} of {faces}"
    assert worst <= 0.03


def test_the_photo_set_is_every_shipped_photo_four_ways() -> None:
    originals = photo_set.originals()
    assert {"astronaut", "camera", "grace_hopper", "lfw_mosaic", "coffee"} <= set(originals)
    assert {f"lfw_mosaic_{k}" for k in range(2, 6)} <= set(originals)
    every = photo_set.with_variants(originals)
    assert len(every) == 4 * len(originals)
    px = originals["astronaut"]
    assert np.array_equal(every["astronaut_mirrored"], px[:, ::-1])
    assert every["astronaut_25pc"].shape[:2] == (px.shape[0] // 4, px.shape[1] // 4)


def face(box: list[float], score: float) -> Face:
    return Face(box=box, score=score, kps=[[0.0, 0.0]] * 5)


def test_parity_counts_a_face_just_under_the_bar_as_not_found() -> None:
    ref = [face([0, 0, 10, 10], 0.95), face([20, 0, 30, 10], 0.91), face([40, 0, 50, 10], 0.8)]
    got = [
        face([0, 0, 10, 10], 0.94),  # found
        face([20, 0, 30, 10], 0.89),  # matched, under 0.9: not found, difference 0.02
        face([40, 0, 50, 10], 0.92),  # fp32 had it under 0.9: an extra
    ]
    result = q.parity([(ref, got), ([face([0, 0, 10, 10], 0.99)], [face([5, 5, 15, 15], 0.99)])])
    assert (result.faces, result.found, result.below, result.lost) == (3, 1, 1, 1)
    assert result.extra == 2  # the 0.92 face and the far-off (IoU 0.14) one
    assert result.worst_score_diff == pytest.approx(0.02)
    assert not result.ok


def test_parity_bar_is_99_percent_and_003() -> None:
    ref = [face([20.0 * i, 0, 20.0 * i + 10, 10], 0.91) for i in range(100)]
    one_under = [face(f.box, 0.92) for f in ref[:99]] + [face(ref[99].box, 0.89)]
    assert q.parity([(ref, one_under)]).ok  # 99 of 100, differences 0.02 at most
    two_under = [*one_under[:98], face(ref[98].box, 0.89), face(ref[99].box, 0.89)]
    assert not q.parity([(ref, two_under)]).ok
    shifted = [face(f.box, 0.941) for f in ref]  # every face found, but 0.031 higher
    assert not q.parity([(ref, shifted)]).ok


def test_check_needs_both_models_below_the_bar(builtin_model: Any) -> None:
    with pytest.raises(q.QuantizeError, match="score threshold"):
        q.check(builtin_model, builtin_model, [])


def test_a_copy_that_misses_the_bar_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the very first convolution in fp32: the small faces are lost (docs/models.md).
    monkeypatch.setattr(q, "KEPT_FP32", ("/fx/stage1/stage1.0/",))
    assert model_cli.quantize(Settings(model_dir=str(tmp_path))) == 2
    assert "failed the check" in capsys.readouterr().err
    assert not (tmp_path / QUANTIZED_NAME).exists()


def test_without_insightface_the_copy_is_made_and_checked_on_the_package_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Where only the demo extra is installed (insightface cannot be uninstalled in a test, so
    # its photos are hidden): 36 photos, 216 fp32 faces, and the bar still met.
    monkeypatch.setattr(photo_set, "insightface_photos", dict)
    assert model_cli.quantize(Settings(model_dir=str(tmp_path))) == 0
    assert "on 36 photos (insightface not installed" in capsys.readouterr().out
    check = json.loads((tmp_path / QUANTIZED_NAME / MANIFEST_FILE).read_text())["check"]
    assert check["faces"] >= 200 and check["found"] / check["faces"] >= 0.99
    assert not any(name.startswith("insightface") for name in check["photos"])


def test_int8_has_its_own_tag_and_leaves_fp32_alone(builtin_model: Any, int8_model: Any) -> None:
    assert builtin_model.tag == FP32_TAG
    assert int8_model.tag.startswith("retinaface-mnet025-int8-")
    assert int8_model.tag != builtin_model.tag
    assert int8_model.spec.family == "retinaface"
    assert int8_model.spec.score_threshold == builtin_model.spec.score_threshold == 0.9


def test_int8_graph_is_quantised_except_the_first_two_stages(int8_dir: Path) -> None:
    graph = onnx.load(str(int8_dir / QUANTIZED_NAME / ONNX_FILE)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and "DequantizeLinear" in ops
    # Stage 1 and 2 convolutions take fp32 weights straight from an initializer; the others
    # take them from a DequantizeLinear of int8 weights.
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kept = [n for n in convs if n.name.startswith(("/fx/stage1/", "/fx/stage2/"))]
    assert any(n.name.startswith("/fx/stage2/") for n in kept) and len(kept) < len(convs)
    for node in convs:
        weights_from = made_by.get(node.input[1], "initializer")
        assert (weights_from == "initializer") == (node in kept), (node.name, weights_from)


def test_int8_refused_when_missing_or_made_from_another_model(
    int8_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="facestream model quantize builtin"):
        load_model(Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path)))
    copy = tmp_path / QUANTIZED_NAME
    copy.mkdir()
    (copy / ONNX_FILE).write_bytes((int8_dir / QUANTIZED_NAME / ONNX_FILE).read_bytes())
    manifest = json.loads((int8_dir / QUANTIZED_NAME / MANIFEST_FILE).read_text())
    source = manifest["source_sha256"]
    manifest["source_sha256"] = "0" * 64  # quantised from some other graph
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="quantised from another model"):
        load_model(Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path)))
    manifest["source_sha256"] = source
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    (copy / ONNX_FILE).write_bytes(b"not the graph")
    with pytest.raises(ModelLoadError, match="not the graph its manifest names"):
        load_model(Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path)))


def test_quantize_cli_reports_and_records_the_check(
    int8_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((int8_dir / QUANTIZED_NAME / MANIFEST_FILE).read_text())
    check = manifest["check"]
    assert check["faces"] >= 200 and check["found"] / check["faces"] >= 0.99
    assert check["worst_score_diff"] <= 0.03
    assert {"lfw_mosaic_5_25pc_mirrored", "grace_hopper_mirrored"} <= set(check["photos"])
    assert manifest["recipe"]["format"] == "QDQ"
    assert model_cli.quantize(Settings(model_dir=str(int8_dir))) == 0
    out = capsys.readouterr().out
    assert f"{check['found']}/{check['faces']} fp32 faces found" in out
    assert f"on {len(check['photos'])} photos" in out
