"""DamoFD checkpoints for tests: the plain-PyTorch network with crafted random weights, saved
as ModelScope's snapshot of the model lays it out, and a stand-in for the hub's download.

The real weights are on ModelScope's hub, unreachable from tests. The score head is crafted as
tests/support/tiny_scrfd.py does so a few dozen anchors pass the threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facestream.control.modeltools.damofd_fetch import Sample
from facestream.control.modeltools.damofd_hub import CHECKPOINT, CONFIG, MODEL_CONFIG
from facestream.control.modeltools.damofd_net import COUNTER, STRIDES, DamoFD
from facestream.detector.model.resize import bilinear_float, fit_size
from tests.support.scrfd_reference import postprocess


def crafted(seed: int = 0, cls_bias: float = -4.0) -> DamoFD:
    torch.manual_seed(seed)
    net = DamoFD().eval()
    with torch.no_grad():
        cls = net.bbox_head.stride_cls["0"]
        cls.weight.normal_(0.0, 0.2)
        cls.bias.fill_(cls_bias)
        net.bbox_head.stride_reg["0"].bias.fill_(1.5)
    return net


def snapshot(
    root: Path,
    net: DamoFD,
    rename: dict[str, str] | None = None,
    *,
    counters: bool = True,
    prefix: str = "module.",
    extra: dict[str, Any] | None = None,
    wrapped: bool = True,
) -> Path:
    """A directory laid out as ModelScope's snapshot of the model. `rename` maps a key to
    another name ("" deletes it); `counters=False` leaves out BatchNorm's num_batches_tracked
    buffers, as a real checkpoint may; `extra` adds or replaces tensors."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"framework": "pytorch", "task": "face-detection", "model": {"type": "damofd"}}
    (root / CONFIG).write_text(json.dumps(config))
    (root / MODEL_CONFIG).write_text("# mmdet-style config: never executed by facestream\n")
    state = {k: v for k, v in net.state_dict().items() if counters or COUNTER not in k}
    for old, new in (rename or {}).items():
        if new:
            state[new] = state.pop(old)
        else:
            del state[old]
    state.update(extra or {})
    state = {f"{prefix}{k}": v for k, v in state.items()}  # "module.": as DataParallel saved it
    checkpoint = {"meta": {"epoch": 640}, "state_dict": state} if wrapped else state
    torch.save(checkpoint, root / CHECKPOINT)
    return root


class FakeHub:
    """Stands in for ModelScope's `snapshot_download` (the hub is unreachable from tests):
    serves `snapshot` for the (model id, revision) pairs in `has`, and answers anything else
    with the hub client's own NotExistError, as the hub does for a missing name or tag."""

    def __init__(self, snapshot: Path | None, has: set[tuple[str, str | None]]) -> None:
        self.snapshot, self.has = snapshot, has
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, model_id: str, revision: str | None, cache_dir: Path | None) -> str:
        from modelscope.hub.errors import NotExistError

        self.calls.append((model_id, revision))
        if (model_id, revision) not in self.has or self.snapshot is None:
            raise NotExistError(f"The model: {model_id} has no revision: {revision or 'master'}")
        return str(self.snapshot)


def reference_sample(net: DamoFD, pixels: np.ndarray) -> Sample:
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
    return Sample("astronaut (crafted network's face)", pixels, box, min_iou=0.99)  # type: ignore[arg-type]
