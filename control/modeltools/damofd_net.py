"""DamoFD-0.5G in plain PyTorch, with the parameter names of ModelScope's checkpoint.

ModelScope builds DamoFD through mmdet 2.x and mmcv-full 1.x, which cannot be installed on
Python 3.11 (docs/models.md). The network itself is small and needs neither: a TinyNAS
MasterNet backbone (ModelScope's own plain-PyTorch blocks), mmdet's PAFPN neck and the SCRFD
head. Each module below is named as in those implementations (`backbone.module_list...`,
`neck.lateral_convs.0.conv`, `bbox_head.cls_stride_convs.0.0.depthwise_conv.gn`, ...) so the
published `pytorch_model.pt` loads with strict checking; tests/control/modeltools/test_damofd.py
pins the key list and compares the backbone with ModelScope's code.

The published 0.5G configuration (the DamoFD repository's DamoFD_0.5g_lms.py): the structure
string below; PAFPN from [32, 64, 120, 160] to 16 channels from level 1 (three outputs, no norm,
no activation: mmdet's defaults); SCRFD head with 64 feature channels, two stacked depthwise-
separable conv + GroupNorm(16) + ReLU blocks shared by the strides and by the score and box
branches, a learnt scale per stride on the distances, 2 anchors per cell, strides 8 / 16 / 32,
keypoints, plain distances (no DFL; the unused integral's buffer is still in the checkpoint).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

STRUCTURE = (
    "SuperConvK3BNRELU(3,32,2,1)SuperResIDWE1K3(32,32,2,8,1)SuperResIDWE1K7(32,64,2,40,1)"
    "SuperResIDWE1K7(64,120,2,40,2)SuperResIDWE1K5(120,160,2,120,1)"
)
STRIDES = (8, 16, 32)
ANCHORS = 2
NECK_WIDTH = 16
HEAD_WIDTH = 64
REG_MAX = 8
BN_EPS = 1e-3  # MasterNet sets every BatchNorm's eps to 1e-3
_BLOCK = re.compile(r"(SuperConvK3BNRELU|SuperResIDWE(\d)K(\d))\(([\d,]+)\)")

Maps = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


class Leaf(nn.Module):
    """TinyNAS's basic block: one torch layer under the name `netblock` (or none for ReLU)."""

    def __init__(self, layer: nn.Module | None) -> None:
        super().__init__()
        if layer is not None:
            self.netblock = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = getattr(self, "netblock", None)
        return F.relu(x) if layer is None else torch.as_tensor(layer(x))


class Chain(nn.Module):
    """A sequence of blocks under `module_list`, optionally a residual with a projection."""

    def __init__(self, blocks: list[nn.Module], proj: nn.Module | None = None) -> None:
        super().__init__()
        self.module_list = nn.ModuleList(blocks)
        self.residual = proj is not None
        if proj is not None and not isinstance(proj, nn.Identity):
            self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.module_list:
            out = block(out)
        if not self.residual:
            return out
        shortcut = getattr(self, "proj", None)
        return out + (x if shortcut is None else shortcut(x))


def _conv(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> Leaf:
    return Leaf(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False))


def _bn(c: int) -> Leaf:
    return Leaf(nn.BatchNorm2d(c, eps=BN_EPS))


def _smart_round(x: float, base: int = 8) -> int:
    return max(base, round(x / base) * base)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout, eps=BN_EPS))


def _res_idw(cin: int, cout: int, stride: int, btl: int, sub: int, e: int, k: int) -> Chain:
    """SuperResIDWE{e}K{k}: per sub-layer two inverted depthwise residuals, each then a ReLU."""
    blocks: list[nn.Module] = []
    last = cin
    for i in range(sub):
        for first in (True, False):
            c_in, c_out = (last, btl) if first else (btl, cout)
            dw = _smart_round(c_out * e)
            s = stride if first and i == 0 else 1
            inner: list[nn.Module] = [
                _conv(c_in, dw, 1, 1),
                _bn(dw),
                Leaf(None),
                _conv(dw, dw, k, s, groups=dw),
                _bn(dw),
                Leaf(None),
                _conv(dw, c_out, 1, 1),
                _bn(c_out),
            ]
            # The first residual always projects; the second only when its shape changes.
            needs = first or s > 1 or c_in != c_out
            proj = _projection(c_in, c_out, s) if needs else nn.Identity()
            blocks += [Chain(inner, proj), Leaf(None)]
        last = cout
    return Chain(blocks)


class MasterNet(nn.Module):
    """The TinyNAS backbone: the features where the downsampling reaches 4, 8, 16 and 32."""

    def __init__(self, structure: str = STRUCTURE) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        self.channels: list[int] = []
        self._taps: list[int] = []
        total, target = 1, 4
        for match in _BLOCK.finditer(structure):
            args = [int(v) for v in match.group(4).split(",")]
            if match.group(1) == "SuperConvK3BNRELU":
                cin, cout, stride, sub = args
                layers: list[nn.Module] = []
                for i in range(sub):
                    s = stride if i == 0 else 1
                    layers += [_conv(cin if i == 0 else cout, cout, 3, s), _bn(cout), Leaf(None)]
                blocks.append(Chain(layers))
            else:
                cin, cout, stride, btl, sub = args
                blocks.append(
                    _res_idw(cin, cout, stride, btl, sub, int(match.group(2)), int(match.group(3)))
                )
            total *= stride
            if total == target:
                self._taps.append(len(blocks) - 1)
                self.channels.append(cout)
                target *= 2
        if "".join(m.group(0) for m in _BLOCK.finditer(structure)) != structure:
            raise ValueError(f"unsupported TinyNAS structure {structure!r}")
        self.module_list = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.module_list):
            x = block(x)
            if i in self._taps:
                feats.append(x)
        return feats


class ConvModule(nn.Module):
    """mmcv's ConvModule as the configs here use it: `conv`, then `gn` and ReLU when normed."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, *, gn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=1, bias=not gn)
        if gn:
            self.gn = nn.GroupNorm(16, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        norm = getattr(self, "gn", None)
        return x if norm is None else F.relu(norm(x))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, gn=True)
        self.depthwise_conv.conv = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise_conv = ConvModule(cin, cout, 1, gn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.pointwise_conv(self.depthwise_conv(x)))


class PAFPN(nn.Module):
    """mmdet's PAFPN without norm or activation: top-down sums, then bottom-up sums."""

    def __init__(self, channels: list[int], width: int = NECK_WIDTH, start: int = 1) -> None:
        super().__init__()
        used = channels[start:]
        self.start = start
        self.lateral_convs = nn.ModuleList(ConvModule(c, width, 1) for c in used)
        self.fpn_convs = nn.ModuleList(ConvModule(width, width, 3) for _ in used)
        self.downsample_convs = nn.ModuleList(ConvModule(width, width, 3, 2) for _ in used[1:])
        self.pafpn_convs = nn.ModuleList(ConvModule(width, width, 3) for _ in used[1:])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(feats[i + self.start]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:])
        inter = [conv(f) for conv, f in zip(self.fpn_convs, lat, strict=True)]
        for i, down in enumerate(self.downsample_convs):
            inter[i + 1] = inter[i + 1] + down(inter[i])
        return [inter[0]] + [conv(f) for conv, f in zip(self.pafpn_convs, inter[1:], strict=True)]


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SCRFDHead(nn.Module):
    """Shared by the strides (key "0") and by the score and box branches."""

    def __init__(self, cin: int = NECK_WIDTH, width: int = HEAD_WIDTH, stacked: int = 2) -> None:
        super().__init__()
        convs = [DepthwiseSeparable(cin if i == 0 else width, width) for i in range(stacked)]
        self.cls_stride_convs = nn.ModuleDict({"0": nn.ModuleList(convs)})
        self.reg_stride_convs = nn.ModuleDict({"0": nn.ModuleList()})  # shared: empty
        self.stride_cls = nn.ModuleDict({"0": nn.Conv2d(width, ANCHORS, 3, padding=1)})
        self.stride_reg = nn.ModuleDict({"0": nn.Conv2d(width, 4 * ANCHORS, 3, padding=1)})
        self.stride_kps = nn.ModuleDict({"0": nn.Conv2d(width, 10 * ANCHORS, 3, padding=1)})
        self.scales = nn.ModuleList(Scale() for _ in STRIDES)
        self.integral = Integral()

    def forward(self, feats: list[torch.Tensor]) -> Maps:
        scores, boxes, kps = [], [], []
        for level, x in enumerate(feats):
            for conv in cast(nn.ModuleList, self.cls_stride_convs["0"]):
                x = conv(x)
            scores.append(self.stride_cls["0"](x))
            boxes.append(self.scales[level](self.stride_reg["0"](x)))
            kps.append(self.stride_kps["0"](x))
        return scores, boxes, kps


class Integral(nn.Module):
    """Only the buffer: DFL is off in DamoFD-0.5G, but mmdet's head registers it anyway."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("project", torch.linspace(0, REG_MAX, REG_MAX + 1))


class DamoFD(nn.Module):
    """Image batch -> per-stride raw maps (score logits, box distances, keypoint offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MasterNet()
        self.neck = PAFPN(self.backbone.channels)
        self.bbox_head = SCRFDHead()

    def forward(self, x: torch.Tensor) -> Maps:
        result: Maps = self.bbox_head(self.neck(self.backbone(x)))
        return result


# BatchNorm's count of training steps: read only while training with momentum=None, never at
# inference. mmcv's load_checkpoint (ModelScope's loader) is not strict, and a public
# converter written against the real checkpoint ignores these buffers when absent, so a
# published checkpoint may lack them: they are the one thing a checkpoint may leave out.
COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class KeyMismatch:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]
    # BatchNorm step counters absent from the checkpoint: accepted, left at the network's 0.
    absent_counters: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 20) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
        ):
            if keys:
                shown = ", ".join(keys[:limit]) + (f" (+{len(keys) - limit})" * (len(keys) > limit))
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def load_strict(net: nn.Module, state: dict[str, object]) -> KeyMismatch:
    """Loads `state` into `net` when every weight and buffer is there with its shape (only
    BatchNorm's `num_batches_tracked` counters may be absent) and nothing else is; else
    returns what differs and leaves `net` untouched."""
    # mmcv's load_checkpoint strips a DataParallel wrapper's prefix the same way.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    absent = sorted(set(own) - set(state))
    counters = [k for k in absent if _is_counter(net, k)]
    wrong = [
        f"{k} (not a tensor: {type(v).__name__})"
        for k, v in state.items()
        if k in own and not isinstance(v, torch.Tensor)
    ]
    wrong += [
        f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    mismatch = KeyMismatch(
        missing=[k for k in absent if k not in counters],
        unexpected=sorted(set(state) - set(own)),
        wrong_shape=sorted(wrong),
        absent_counters=counters,
    )
    if not mismatch:
        complete = {**{k: own[k] for k in counters}, **state}
        net.load_state_dict(complete, strict=True)
    return mismatch


def _is_counter(net: nn.Module, key: str) -> bool:
    owner, _, leaf = key.rpartition(".")
    if leaf != COUNTER:
        return False
    return isinstance(net.get_submodule(owner), nn.modules.batchnorm._BatchNorm)
