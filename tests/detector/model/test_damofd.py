"""DamoFD without mmcv: the plain-PyTorch network's parameter names against ModelScope's code,
and `facestream model fetch damofd` from a fake hub snapshot in the real layout.

The snapshot's weights are random (the real ones are on the hub, unreachable from tests), with
the score head crafted as tests/tiny_scrfd.py does so a few dozen anchors pass the threshold.
Random weights cannot find the astronaut's face, which is the sample check real fetches run;
so these tests hand the fetch a sample whose "face" is the box the same network finds through
an independent path (PyTorch + ModelScope's post-processing re-implemented in numpy), and check
that a network finding nothing there is refused. The default sample is not weakened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (scripts/install.sh dev installs it)")

from facestream.common.settings import Settings  # noqa: E402
from facestream.detector.model import damofd  # noqa: E402
from facestream.detector.model.damofd_net import STRIDES, STRUCTURE, DamoFD  # noqa: E402
from facestream.detector.model.loader import load_model  # noqa: E402
from facestream.detector.model.resize import bilinear_float, fit_size  # noqa: E402
from tests.support.faces import detect  # noqa: E402
from tests.support.scrfd_reference import postprocess  # noqa: E402

KEYS_FILE = Path(__file__).with_name("damofd_keys.txt")


def crafted(seed: int = 0, cls_bias: float = -4.0) -> DamoFD:
    torch.manual_seed(seed)
    net = DamoFD().eval()
    with torch.no_grad():
        cls = net.bbox_head.stride_cls["0"]
        cls.weight.normal_(0.0, 0.2)
        cls.bias.fill_(cls_bias)
        net.bbox_head.stride_reg["0"].bias.fill_(1.5)
    return net


def snapshot(root: Path, net: DamoFD, rename: dict[str, str] | None = None) -> Path:
    """A directory laid out as ModelScope's snapshot of the model."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"framework": "pytorch", "task": "face-detection", "model": {"type": "damofd"}}
    (root / damofd.CONFIG).write_text(json.dumps(config))
    (root / damofd.MODEL_CONFIG).write_text("# mmdet-style config: never executed by facestream\n")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # as DataParallel saved it
    for old, new in (rename or {}).items():
        if new:
            state[f"module.{new}"] = state.pop(f"module.{old}")
        else:
            del state[f"module.{old}"]
    torch.save({"meta": {"epoch": 640}, "state_dict": state}, root / damofd.CHECKPOINT)
    return root


def reference_sample(net: DamoFD, pixels: np.ndarray) -> damofd.Sample:
    """The sample the fetch must pass: the best face ModelScope's pipeline would return."""
    h, w = pixels.shape[:2]
    tw, th = fit_size(w, h, 640, upscale=True, rule="mmcv")
    resized = bilinear_float(pixels, tw, th)
    x = np.zeros((1, 3, 640, 640), np.float32)
    x[0, :, :th, :tw] = (resized.transpose(2, 0, 1) - 127.5) / 128.0
    with torch.no_grad():
        scores, boxes, kps = net(torch.from_numpy(x))
    ref = postprocess(
        [s[0].numpy() for s in scores],
        [b[0].numpy() for b in boxes],
        [k[0].numpy() for k in kps],
        STRIDES,
        (th, tw),
        (tw / w, th / h),
    )
    assert len(ref.scores) > 0
    box = tuple(float(v) for v in ref.boxes[0])
    return damofd.Sample("astronaut (crafted network's face)", pixels, box, min_iou=0.99)  # type: ignore[arg-type]


def test_backbone_names_and_outputs_equal_modelscope() -> None:
    pytest.importorskip("modelscope.models.cv.tinynas_classfication.plain_net_utils")
    from modelscope.models.cv.tinynas_classfication import plain_net_utils

    theirs = plain_net_utils.PlainNet(num_classes=2048, plainnet_struct=STRUCTURE, no_create=False)
    ours = DamoFD().eval()
    mine = {
        k.removeprefix("backbone."): tuple(v.shape)
        for k, v in ours.state_dict().items()
        if k.startswith("backbone.")
    }
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == mine
    # The same weights give the same stage features (MasterNet sets BatchNorm eps to 1e-3).
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    theirs.load_state_dict({k: v for k, v in ours.backbone.state_dict().items()})
    theirs.eval()
    x = torch.randn(1, 3, 96, 128)
    feats, out = [], x
    with torch.no_grad():
        for block in theirs.block_list:
            out = block(out)
            feats.append(out)
        for a, b in zip(feats[1:], ours.backbone(x), strict=True):
            assert torch.equal(a, b)


def test_neck_and_head_keys_pinned() -> None:
    """The full key list, neck and head named after mmdet 2.28's PAFPN / ConvModule and the
    SCRFD head ModelScope ships (read from their code), with shapes; 0.27 M parameters."""
    net = DamoFD()
    got = [f"{k} {list(v.shape)}" for k, v in net.state_dict().items()]
    assert got == KEYS_FILE.read_text().split("\n")[:-1]
    assert sum(p.numel() for p in net.parameters()) == 269_729


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Any:
    tmp = tmp_path_factory.mktemp("damofd")
    net = crafted()
    source = snapshot(tmp / "snapshot", net)
    sample = reference_sample(net, photos["astronaut"])
    steps: list[str] = []
    settings = Settings(model_dir=str(tmp / "models"))
    entry = damofd.fetch(settings, tmp / "models", None, source, steps.append, sample=sample)
    return tmp, net, entry, steps


def test_fetch_from_a_snapshot_installs_a_checked_model(fetched: Any) -> None:
    tmp, _, entry, steps = fetched
    assert steps == ["download", "build", "export", "check", "install"]
    assert entry.check["max_abs_diff"] <= 1e-4 and entry.check["iou"] >= 0.99
    assert entry.strides == STRIDES and entry.anchors_per_cell == 2 and entry.pad_square
    assert "mmcv" not in entry.exporter and "mmdet" not in entry.exporter
    assert (tmp / "models" / "damofd" / "model.onnx").is_file()


def test_by_name_and_by_path_serve_the_same_faces(
    fetched: Any, photo_png: dict[str, bytes]
) -> None:
    tmp, _, _, _ = fetched
    by_name = load_model(Settings(model="damofd", model_dir=str(tmp / "models")))
    by_path = load_model(Settings(model=str(tmp / "models" / "damofd" / "model.onnx")))
    assert by_path.layout["scores"] == "probabilities" and by_path.spec.letterbox
    for name in ("astronaut", "grace_hopper", "coffee"):
        faces = detect(by_name, photo_png[name])
        assert faces == detect(by_path, photo_png[name]) and faces


@pytest.mark.parametrize(
    ("rename", "listed"),
    [
        ({"neck.fpn_convs.0.conv.weight": "neck.fpn_convs.0.weight"}, "missing: neck.fpn_convs"),
        ({"bbox_head.scales.2.scale": ""}, "missing: bbox_head.scales.2.scale"),
    ],
)
def test_a_snapshot_with_other_keys_is_refused_with_the_list(
    tmp_path: Path, rename: dict[str, str], listed: str
) -> None:
    source = snapshot(tmp_path / "s", crafted(), rename)
    with pytest.raises(damofd.FetchError, match=listed) as info:
        damofd.fetch(Settings(), tmp_path / "models", None, source)
    if rename.get("neck.fpn_convs.0.conv.weight"):
        assert "unexpected: neck.fpn_convs.0.weight" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_a_network_that_finds_no_face_is_refused(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    sample = reference_sample(crafted(), photos["astronaut"])
    source = snapshot(tmp_path / "s", crafted(cls_bias=-40.0))  # scores ~0 everywhere
    with pytest.raises(damofd.FetchError, match="does not find the face on the sample photo"):
        damofd.fetch(Settings(), tmp_path / "models", None, source, sample=sample)
    assert not (tmp_path / "models").exists()


def test_the_default_sample_is_the_astronaut(photos: dict[str, np.ndarray]) -> None:
    sample = damofd.astronaut()
    assert np.array_equal(sample.pixels, photos["astronaut"]) and sample.min_iou == 0.5
