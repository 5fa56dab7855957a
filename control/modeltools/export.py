"""PyTorch -> ONNX for SCRFD-family networks, and the check that the export computes what the
PyTorch model computes.

Needs torch (the `damofd` extra); a detector never imports this module (pyproject.toml).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

Heads = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]]
HEAD_NAMES = ("score", "bbox", "kps")
HEAD_WIDTHS = (1, 4, 10)
# The TorchScript exporter: it honours dynamic_axes and traces mmdet's heads, which the newer
# torch.export-based one cannot (data-dependent Python in their forward methods).
OPSET = 17


class SCRFDOutputs(nn.Module):
    """The graph layout facestream's SCRFD decoder reads: per stride, (b, n, 1) probabilities,
    (b, n, 4) box distances and (b, n, 10) keypoint offsets, anchors cell-major.

    `heads` maps the input batch to per-stride score / box / keypoint maps, either raw (b, c, h,
    w) maps or ones a model already flattened while exporting (ModelScope's SCRFD head does
    that, sigmoid included, when `torch.onnx.is_in_onnx_export()`)."""

    def __init__(self, heads: Callable[[torch.Tensor], Heads], owner: nn.Module) -> None:
        super().__init__()
        self.heads = heads
        self.owner = owner  # registers the network's parameters with this module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, boxes, kps = self.heads(x)
        out: list[torch.Tensor] = []
        for maps, width in zip((scores, boxes, kps), HEAD_WIDTHS, strict=True):
            for m in maps:
                out.append(_flatten(m, width, sigmoid=width == 1))
        return tuple(out)


def _flatten(m: torch.Tensor, width: int, sigmoid: bool) -> torch.Tensor:
    if m.dim() == 3:  # already (b, n, c), and already a probability for scores
        return m
    flat = m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, width)
    return flat.sigmoid() if sigmoid else flat


def output_names(strides: Sequence[int]) -> list[str]:
    return [f"{head}_{s}" for head in HEAD_NAMES for s in strides]


def export_onnx(
    net: nn.Module,
    strides: Sequence[int],
    size: int = 640,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """The ONNX bytes of `net` (an SCRFDOutputs) with batch, height and width left dynamic,
    `metadata` written into the model's metadata_props (the loader reads facestream.* keys)."""
    names = output_names(strides)
    dynamic: dict[str, dict[int, str]] = {"input": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch", 1: "anchors"} for n in names})
    net.eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter's deprecation notice and tracer warnings about shape arithmetic
        # in the heads: the exported graph is checked against the model below instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            Path(tmp) / "model.onnx",
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=names,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
        model = onnx.load(Path(tmp) / "model.onnx")
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    graph: bytes = model.SerializeToString()
    return graph


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float  # over every output of every input, ONNX vs PyTorch
    batch_sizes: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]  # (height, width) of the inputs checked
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "batch_sizes": list(self.batch_sizes),
            "shapes": [list(s) for s in self.shapes],
            "tolerance": self.tolerance,
        }


class ExportMismatch(RuntimeError):
    pass


def check_export(
    net: nn.Module, graph: bytes, inputs: Sequence[np.ndarray], tolerance: float = 1e-4
) -> ExportCheck:
    """Runs each (b, 3, h, w) input through PyTorch and onnxruntime; raises ExportMismatch
    when any output differs by more than `tolerance`, or a batch item's outputs depend on
    what it was batched with."""
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    net.eval()
    for batch in inputs:
        with torch.no_grad():
            expected = [t.numpy() for t in net(torch.from_numpy(batch))]
        got = session.run(None, {name: batch})
        if len(got) != len(expected):
            raise ExportMismatch(f"{len(got)} ONNX outputs, PyTorch gave {len(expected)}")
        for e, g in zip(expected, got, strict=True):
            if e.shape != g.shape:
                raise ExportMismatch(f"output shape {g.shape}, PyTorch gave {e.shape}")
            worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
        if batch.shape[0] > 1:
            alone = session.run(None, {name: batch[-1:]})
            for a, g in zip(alone, got, strict=True):
                worst = max(worst, float(np.max(np.abs(a[0] - g[-1]))) if a.size else 0.0)
    check = ExportCheck(
        max_abs_diff=worst,
        batch_sizes=tuple(int(b.shape[0]) for b in inputs),
        shapes=tuple((int(b.shape[2]), int(b.shape[3])) for b in inputs),
        tolerance=tolerance,
    )
    if not check.ok:
        raise ExportMismatch(
            f"ONNX export differs from PyTorch by {worst:.3g} (tolerance {tolerance:.3g})"
        )
    return check


def check_inputs(size: int, seed: int = 0) -> list[np.ndarray]:
    """Inputs for the check: a batch of 3 at the export size and a batch of 2 of a smaller,
    non-square shape, in the normalised range the model sees."""
    rng = np.random.default_rng(seed)
    small = max(32, size // 2 // 32 * 32)
    return [
        rng.uniform(-1, 1, (3, 3, size, size)).astype(np.float32),
        rng.uniform(-1, 1, (2, 3, small, size)).astype(np.float32),
    ]
