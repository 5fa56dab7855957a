"""DamoFD without mmcv: the plain-PyTorch network's parameter names against ModelScope's code,
and `facestream model fetch damofd` from a fake hub snapshot in the real layout.

The fetch's download goes through ModelScope's `snapshot_download`; the hub is unreachable from
tests, so the fetch fixture replaces that one function with a fake that answers as the hub does
(its own NotExistError for a name or revision it lacks) and hands over a snapshot built here.

The snapshot's weights are random (the real ones are on the hub, unreachable from tests), with
the score head crafted so a few dozen anchors pass the threshold (tests/support/damofd_snapshot.py).
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
from facestream.control.modeltools import damofd_fetch as damofd  # noqa: E402
from facestream.control.modeltools.damofd_hub import MODEL_IDS, FetchError, read_snapshot  # noqa: E402
from facestream.control.modeltools.damofd_net import COUNTER, STRIDES, STRUCTURE, DamoFD  # noqa: E402
from facestream.detector.model.loader import load_model  # noqa: E402
from tests.support.damofd_snapshot import (  # noqa: E402
    FakeHub,
    crafted,
    reference_sample,
    snapshot,
)
from tests.support.faces import detect  # noqa: E402

KEYS_FILE = Path(__file__).with_name("damofd_keys.txt")


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


DAMO, IIC = MODEL_IDS


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Any:
    """A fetch as a user's would go where the hub serves the model under `iic/` only, with a
    checkpoint that has no num_batches_tracked buffers."""
    pytest.importorskip("modelscope.hub.errors", reason="the hub's errors come from modelscope")
    tmp = tmp_path_factory.mktemp("damofd")
    net = crafted()
    hub = FakeHub(snapshot(tmp / "snapshot", net, counters=False), {(IIC, "v1.1")})
    sample = reference_sample(net, photos["astronaut"])
    steps: list[str] = []
    settings = Settings(model_dir=str(tmp / "models"))
    entry = damofd.fetch(settings, tmp / "models", None, None, steps.append, hub=hub, sample=sample)
    return tmp, net, entry, steps, hub


def test_fetch_installs_a_checked_model(fetched: Any) -> None:
    tmp, _, entry, steps, _ = fetched
    assert steps == ["download", "build", "export", "check", "install"]
    assert entry.check["max_abs_diff"] <= 1e-4 and entry.check["iou"] >= 0.99
    assert entry.strides == STRIDES and entry.anchors_per_cell == 2 and entry.pad_square
    assert "mmcv" not in entry.exporter and "mmdet" not in entry.exporter
    assert (tmp / "models" / "damofd" / "model.onnx").is_file()


def test_fetch_tries_damo_then_iic_and_records_which(fetched: Any) -> None:
    tmp, hub = fetched[0], fetched[4]
    assert hub.calls == [(DAMO, "v1.1"), (IIC, "v1.1")]
    written = json.loads((tmp / "models" / "damofd" / "entry.json").read_text())
    assert (written["model_id"], written["revision"]) == (IIC, "v1.1")
    assert written["source"] == f"modelscope:{IIC}@v1.1"
    # The checkpoint had none of the 41 BatchNorm counters: accepted, and recorded.
    assert written["check"]["num_batches_tracked_missing"] == 41


def test_by_name_and_by_path_serve_the_same_faces(
    fetched: Any, photo_png: dict[str, bytes]
) -> None:
    tmp = fetched[0]
    by_name = load_model(Settings(model="damofd", model_dir=str(tmp / "models")))
    by_path = load_model(Settings(model=str(tmp / "models" / "damofd" / "model.onnx")))
    assert by_path.layout["scores"] == "probabilities" and by_path.spec.letterbox
    for name in ("astronaut", "grace_hopper", "coffee"):
        faces = detect(by_name, photo_png[name])
        assert faces == detect(by_path, photo_png[name]) and faces


@pytest.mark.parametrize(
    ("counters", "prefix", "wrapped"),
    [(True, "module.", True), (False, "module.", True), (False, "", False), (True, "", True)],
    ids=["with-counters", "without-counters", "bare-state-dict", "no-prefix"],
)
def test_checkpoints_with_or_without_counters_load_every_weight(
    tmp_path: Path, counters: bool, prefix: str, wrapped: bool
) -> None:
    """num_batches_tracked may be absent (mmcv's loader, ModelScope's, does not require it);
    every other tensor is loaded, and the network computes what the saved one computes."""
    net = crafted(seed=3)
    source = snapshot(tmp_path / "s", net, counters=counters, prefix=prefix, wrapped=wrapped)
    built, absent = damofd.build(read_snapshot(source))
    assert absent == (0 if counters else 41)
    theirs = net.state_dict()
    for key, value in built.state_dict().items():
        if COUNTER not in key:
            assert torch.equal(value, theirs[key]), key
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for mine, saved in zip(built(x), net(x), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(mine, saved, strict=True))


SHAPE = "bbox_head.stride_cls.0.bias"
REAL = "bbox_head.scales.2.scale"
BN_COUNTER = "backbone.module_list.0.module_list.1.netblock.num_batches_tracked"


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        # Renamed: the real name missing, the other one unexpected.
        (
            {"rename": {"neck.fpn_convs.0.conv.weight": "neck.fpn_convs.0.weight"}},
            r"missing: neck\.fpn_convs\.0\.conv\.weight; unexpected: neck\.fpn_convs\.0\.weight",
        ),
        # A real weight missing is refused even when the counters are absent too: only the
        # weight is listed.
        ({"rename": {REAL: ""}, "counters": False}, rf"\(missing: {REAL}\)"),
        (
            {"extra": {"bbox_head.extra_conv.weight": torch.zeros(2, 2)}},
            "unexpected: bbox_head.extra_conv.weight",
        ),
        ({"extra": {SHAPE: torch.zeros(3)}}, rf"wrong shape: {SHAPE} \(3,\) != \(2,\)"),
        # A counter that is there must have its shape: only absence is tolerated.
        ({"extra": {BN_COUNTER: torch.zeros(2)}}, rf"wrong shape: {BN_COUNTER} \(2,\) != \(\)"),
        ({"extra": {SHAPE: [0.0, 0.0]}}, rf"wrong shape: {SHAPE} \(not a tensor: list\)"),
    ],
    ids=["renamed", "weight-missing", "extra-key", "wrong-shape", "counter-shape", "not-a-tensor"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_with_the_keys(
    tmp_path: Path, change: dict[str, Any], listed: str
) -> None:
    source = snapshot(tmp_path / "s", crafted(), **change)
    with pytest.raises(FetchError, match=listed) as info:
        damofd.fetch(Settings(), tmp_path / "models", None, source)
    message = str(info.value)
    assert "\n" not in message and message.endswith("nothing installed")
    assert not (tmp_path / "models").exists()


def test_a_network_that_finds_no_face_is_refused(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    sample = reference_sample(crafted(), photos["astronaut"])
    source = snapshot(tmp_path / "s", crafted(cls_bias=-40.0))  # scores ~0 everywhere
    with pytest.raises(FetchError, match="does not find the face on the sample photo"):
        damofd.fetch(Settings(), tmp_path / "models", None, source, sample=sample)
    assert not (tmp_path / "models").exists()


def test_the_default_sample_is_the_astronaut(photos: dict[str, np.ndarray]) -> None:
    sample = damofd.astronaut()
    assert np.array_equal(sample.pixels, photos["astronaut"]) and sample.min_iou == 0.5
