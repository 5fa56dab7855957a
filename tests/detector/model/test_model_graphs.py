"""SCRFD-family graphs as users bring them: a fixed 1 x 3 x 640 x 640 input with outputs of any
names, served end to end; graphs that cannot be served refused at start with one line; and the
pre/post-processing rules shared with ModelScope (resize sizes, strict threshold, no cap)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from facestream.common.settings import Settings
from facestream.detector.model.loader import ModelLoadError, load_model
from tests.conftest import encode
from tests.support.faces import detect
from tests.support.helpers import publish, wait_results, with_detector
from tests.support.scrfd_graph import Hot, build

SIZE = 640
# Output names as an exporter that numbers them leaves them, in an order that is not
# score/bbox/kps: the roles must come from the shapes.
NAMES = ["out3", "out0", "out6", "out4", "out1", "out7", "out5", "out2", "out8"]
HOTS = [
    # stride 32, cell (7, 3) -> centre (224, 96); box 224 -/+ (2, 1, 2, 3) * 32
    Hot(32, 7, 3, 0, 0.9, (2, 1, 2, 3)),
    Hot(8, 10, 50, 1, 0.6, (1, 1, 1, 1)),  # centre (80, 400): below a 480-high image
    Hot(16, 0, 0, 0, 0.3, (1, 1, 1, 1)),  # exactly the threshold: not a face (strictly above)
]


@pytest.fixture(scope="module")
def fixed_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(
        tmp_path_factory.mktemp("g") / "scrfd_fixed.onnx", HOTS, SIZE, fixed=True, names=NAMES
    )


def test_fixed_graph_refuses_other_shapes_and_loads(fixed_graph: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(fixed_graph), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Got: 480 Expected: 640"):
        session.run(None, {"input": np.zeros((1, 3, 480, 640), np.float32)})
    model = load_model(Settings(model=str(fixed_graph)))
    spec = model.spec
    assert (spec.fixed_shape, spec.max_batch, spec.input_size) == ((640, 640), 1, 640)
    assert spec.padded(480, 640) == (640, 640) and spec.max_faces is None
    model.warm_up()  # what crashed the detector at start
    roles = {o["name"]: (o["role"], o["stride"]) for o in model.layout["outputs"]}  # type: ignore[union-attr]
    assert roles["out3"] == ("score", 8) and roles["out7"] == ("bbox", 32)
    assert roles["out5"] == ("kps", 8) and model.layout["anchors_per_cell"] == [2]


def test_fixed_graph_faces_map_back(fixed_graph: Path) -> None:
    model = load_model(Settings(model=str(fixed_graph)))
    faces = detect(model, encode(np.zeros((480, 640, 3), np.uint8)))
    # The 0.3 anchor is not kept; the stride-8 one sits in the padding, clipped to the image.
    assert [f.score for f in faces] == [pytest.approx(0.9, abs=1e-5), pytest.approx(0.6, abs=1e-5)]
    assert faces[0].box == pytest.approx([160.0, 64.0, 288.0, 192.0], abs=0.01)
    big = detect(model, encode(np.zeros((960, 1280, 3), np.uint8)))  # scaled by 0.5, mapped back
    assert big[0].box == pytest.approx([320.0, 128.0, 576.0, 384.0], abs=0.02)
    # A batch of three through a graph whose batch is fixed at 1: one run each.
    images = [np.zeros((480, 640, 3), np.uint8)] * 3
    from facestream.detector.imaging import decode_image

    decoded = [
        decode_image(
            encode(px),
            max_bytes=1 << 30,
            max_pixels=1 << 30,
            max_side=spec_fit(model),
            upscale=True,
        )
        for px in images
    ]
    assert [len(f) for f in model.detect(decoded)] == [2, 2, 2]


def spec_fit(model: Any) -> Any:
    return model.spec.fit


def test_fixed_graph_served_through_redis(
    fixed_graph: Path, make_settings: Any, photo_png: dict[str, bytes]
) -> None:
    from facestream.ingest.publisher import make_event

    settings = make_settings(model=str(fixed_graph), max_batch=4)
    model = load_model(settings)
    model.warm_up()
    events = [make_event(photo_png[n], n) for n in ("astronaut", "grace_hopper", "lfw_mosaic")]

    async def scenario(det: Any, client: Any, keys: Any) -> Any:
        await publish(client, keys, *events)
        return await wait_results(client, keys, len(events))

    got = with_detector(settings, model, scenario)
    assert sorted(r["id"] for r in got) == ["astronaut", "grace_hopper", "lfw_mosaic"]
    for result in got:
        expected = detect(model, photo_png[result["id"]])
        assert result["model"] == model.tag and "error" not in result
        assert result["faces"] == [f.to_wire() for f in expected] and len(expected) >= 1


def bad_graph(path: Path, batch: int = 4) -> Path:
    """A graph with a fixed batch of 4: not servable one image at a time."""
    nodes = [helper.make_node("Identity", ["input"], [f"o{i}"]) for i in range(3)]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None) for i in range(3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_unservable_graphs_are_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"fixed batch of 4; expected 1 or a dynamic batch"):
        load_model(Settings(model=str(bad_graph(tmp_path / "b.onnx"))))
    wide = build(tmp_path / "w.onnx", [], 64)
    proto = onnx.load(wide)
    proto.graph.output.pop()  # 8 outputs: neither family
    onnx.save(proto, tmp_path / "eight.onnx")
    with pytest.raises(ModelLoadError, match="cannot tell the model family from 8 outputs"):
        load_model(Settings(model=str(tmp_path / "eight.onnx")))


def test_detector_exits_nonzero_with_the_reason(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FACESTREAM_MODEL": str(bad_graph(tmp_path / "b.onnx")),
        "FACESTREAM_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: refused before
    }
    proc = subprocess.run(
        [sys.executable, "-m", "facestream.detector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "model_refused" in line]
    assert len(lines) == 1 and "fixed batch of 4" in lines[0]


def test_no_face_cap_unless_set(tmp_path: Path) -> None:
    hots = [Hot(8, x, y, 0, 0.9, (0.4, 0.4, 0.4, 0.4)) for x in range(8) for y in range(8)]
    path = build(tmp_path / "many.onnx", hots, 64)
    blank = encode(np.zeros((64, 64, 3), np.uint8))
    assert len(detect(load_model(Settings(model=str(path))), blank)) == 64
    assert len(detect(load_model(Settings(model=str(path), max_faces=5)), blank)) == 5


def test_scores_at_the_threshold_are_not_faces() -> None:
    from facestream.detector.model.scrfd import SCRFDDecoder

    cells = [(64 // s) ** 2 * 2 for s in (8, 16, 32)]
    scores = [np.zeros((1, n, 1), np.float32) for n in cells]
    scores[0][0, :3, 0] = [0.3, 0.30001, 0.29999]
    boxes = [np.ones((1, n, 4), np.float32) for n in cells]
    [cand] = SCRFDDecoder(apply_sigmoid=False).decode(scores + boxes, 64, 64, 0.3)
    assert cand.scores.tolist() == [pytest.approx(0.30001)]
