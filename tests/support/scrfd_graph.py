"""Builds small SCRFD-shaped ONNX graphs with known outputs (onnx.helper), for decoder tests.

The graphs ignore the pixels: every output is a constant table, broadcast over the batch, so
the faces they encode can be computed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Hot:
    """One anchor with a score: stride, cell x, cell y, anchor index, score, distances, kps."""

    stride: int
    cx: int
    cy: int
    anchor: int
    score: float
    dist: tuple[float, float, float, float]
    kps: tuple[float, ...] = (0.0,) * 10


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def build(
    path: Path,
    hots: list[Hot],
    size: int = 64,
    batched: bool = True,
    sigmoid_in_graph: bool = True,
    with_kps: bool = True,
    fixed: bool = False,
    names: list[str] | None = None,
) -> Path:
    """`fixed`: input exactly 1 x 3 x size x size (onnxruntime refuses any other shape) and
    outputs (1, n, c), as many SCRFD exports in the wild are; `names`: the outputs' names, in
    the graph's output order (score, bbox, kps per stride unless given)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    # zero[b] = 0 for each batch item, shaped to broadcast against (1, n, c) tables.
    nodes += [
        helper.make_node("ReduceSum", ["input", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero_f"], ["z"]),
        helper.make_node("Reshape", ["z", "shape3"], ["zero_b"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array(0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
    ]
    heads = [("score", 1), ("bbox", 4)] + ([("kps", 10)] if with_kps else [])
    for head, width in heads:
        for stride in STRIDES:
            cells = (size // stride) ** 2
            table = np.zeros((1, cells * 2, width), np.float32)
            if head == "score":
                table[:] = -12.0  # logits; with no Sigmoid in the graph the decoder adds it
            for h in hots:
                if h.stride != stride:
                    continue
                idx = (h.cy * (size // stride) + h.cx) * 2 + h.anchor
                if head == "score":
                    table[0, idx, 0] = logit(h.score)
                elif head == "bbox":
                    table[0, idx] = h.dist
                else:
                    table[0, idx] = h.kps
            name = names[len(outputs)] if names else f"{head}_{stride}"
            inits.append(numpy_helper.from_array(table, f"{name}_table"))
            raw = f"{name}_raw" if head == "score" and sigmoid_in_graph else f"{name}_b"
            nodes.append(helper.make_node("Add", ["zero_b", f"{name}_table"], [raw]))
            if head == "score" and sigmoid_in_graph:
                nodes.append(helper.make_node("Sigmoid", [raw], [f"{name}_b"]))
            if batched or fixed:
                nodes.append(helper.make_node("Identity", [f"{name}_b"], [name]))
                shape: list[int | str] = [1 if fixed else "batch", cells * 2, width]
            else:
                inits.append(numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_2d"))
                nodes.append(helper.make_node("Reshape", [f"{name}_b", f"{name}_2d"], [name]))
                shape = [cells * 2, width]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        "scrfd_test",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch" if batched and not fixed else 1, 3, size, size]
            )
        ],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
