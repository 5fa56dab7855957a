"""A small SCRFD-family network in torch with random weights, for the export tests.

The layout is DamoFD's: a backbone with features at strides 8 / 16 / 32, a path-aggregation
neck, and one head shared by all strides (two depthwise-separable conv + GroupNorm + ReLU
blocks, then 3x3 convs for the score (one logit per anchor), the four box distances and the
ten keypoint offsets, two anchors per cell, a learnt scale on the distances). Its forward
returns what mmdet's SCRFD head returns: per-stride (b, c, h, w) maps, scores as logits.

The backbone is either a plain conv stack written here or, when ModelScope is installed,
ModelScope's own TinyNAS `PlainNet` (the code DamoFD's MasterNet backbone is built from) with
a DamoFD-0.5G-sized structure. The exact structure of DamoFD lives in the model's config on
the hub, so the neck and head sizes here are DamoFD's published ones, not read from it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS = 2
STRIDES = (8, 16, 32)
# A DamoFD-0.5G-sized TinyNAS structure: stem, then stages ending at strides 4, 8, 16, 32.
TINYNAS_STRUCT = (
    "SuperConvK3BNRELU(3,32,2,1)SuperResIDWE1K3(32,32,2,8,1)SuperResIDWE1K7(32,64,2,40,1)"
    "SuperResIDWE1K7(64,120,2,40,2)SuperResIDWE1K5(120,160,2,120,1)"
)


class ConvStack(nn.Module):
    """Stride-2 conv blocks; returns the features at strides 8, 16 and 32."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 8, 16, 24, 32, 48]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in itertools.pairwise(widths)
        )
        self.channels = widths[3:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats[2:]


class TinyNAS(nn.Module):
    """ModelScope's TinyNAS PlainNet, cut at the stride-8 / 16 / 32 stage outputs."""

    def __init__(self) -> None:
        super().__init__()
        from modelscope.models.cv.tinynas_classfication import plain_net_utils

        self.net = plain_net_utils.PlainNet(
            num_classes=2048, plainnet_struct=TINYNAS_STRUCT, no_create=False
        )
        self.channels = [64, 120, 160]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.net.block_list:
            x = block(x)
            feats.append(x)
        return feats[2:]


class PathAggregation(nn.Module):
    """Top-down then bottom-up fusion to one width, one output per stride."""

    def __init__(self, channels: list[int], width: int = 16) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in channels)
        self.down = nn.ModuleList(nn.Conv2d(width, width, 3, 2, 1) for _ in channels[1:])
        self.after = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in channels[1:])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:])
        top = [conv(f) for conv, f in zip(self.smooth, lat, strict=True)]
        out = [top[0]]
        for i in range(1, len(top)):
            fused = F.relu(self.down[i - 1](out[-1])) + top[i]
            out.append(self.after[i - 1](fused))
        return out


def separable(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
        nn.GroupNorm(min(16, cin), cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.GroupNorm(16, cout),
        nn.ReLU(),
    )


class SharedHead(nn.Module):
    def __init__(self, width: int = 16, feat: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(separable(width, feat), separable(feat, feat))
        self.cls = nn.Conv2d(feat, ANCHORS, 3, 1, 1)
        self.reg = nn.Conv2d(feat, ANCHORS * 4, 3, 1, 1)
        self.kps = nn.Conv2d(feat, ANCHORS * 10, 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))

    def forward(
        self, feats: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        scores, boxes, kps = [], [], []
        for level, f in enumerate(feats):
            h = self.convs(f)
            scores.append(self.cls(h))
            boxes.append(self.reg(h) * self.scales[level])
            kps.append(self.kps(h))
        return scores, boxes, kps


class TinySCRFD(nn.Module):
    def __init__(self, backbone: str = "convs", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone: nn.Module = TinyNAS() if backbone == "tinynas" else ConvStack()
        channels: list[int] = getattr(self.backbone, "channels")  # noqa: B009
        self.neck = PathAggregation(channels)
        self.head = SharedHead()
        with torch.no_grad():
            # Random weights score every anchor near 0.5; a negative bias and a spread of
            # weights leave a few dozen anchors over the threshold, like a real photo.
            self.head.cls.bias.fill_(-4.0)
            self.head.cls.weight.normal_(0.0, 0.2)
            # Positive distances, a stride or two: boxes with a real extent.
            self.head.reg.bias.fill_(1.5)
        self.eval()

    def forward(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        result: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = self.head(
            self.neck(self.backbone(x))
        )
        return result
