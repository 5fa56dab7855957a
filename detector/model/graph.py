"""What a face-detection ONNX graph looks like from outside, read before it serves anything:
family, input shape (fixed or not), batch, each output's role, whether scores are already
probabilities. `facestream model info PATH` prints it; the loader refuses what it cannot serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# Written by `facestream model fetch` into the graph's metadata: "1" when the scores leave the
# graph as probabilities. Read first, so a fetched graph loaded by path decodes as by name.
SIGMOID_KEY = "facestream.sigmoid_in_graph"
_SHAPE_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat"}
SCRFD_ROLES = {1: "score", 4: "bbox", 10: "kps"}
SCRFD_STRIDES = (8, 16, 32)


class ModelLoadError(RuntimeError):
    """A model that cannot be served: the message is one line, what was found and expected."""


Dim = int | str  # a fixed size, or the name of a symbolic one


@dataclass(frozen=True)
class GraphLayout:
    family: str  # "retinaface" | "scrfd"
    input_name: str
    input_shape: tuple[Dim, ...]
    batch: int | None  # fixed batch size; None: any
    size: tuple[int, int] | None  # fixed (height, width); None: any
    output_names: tuple[str, ...]

    def probe_shape(self) -> tuple[int, int, int, int]:
        """An input the graph must accept: its fixed size, else a small multiple of 32."""
        h, w = self.size or (128, 128)
        return (1, 3, h, w)


@dataclass(frozen=True)
class OutputRole:
    name: str
    shape: tuple[int, ...]  # as produced for the probe input
    role: str  # score / bbox / kps (SCRFD), loc / conf / landmarks (RetinaFace)
    stride: int | None
    anchors_per_cell: int | None


def _dims(value: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for d in value.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    return tuple(out)


def detect_family(graph: onnx.GraphProto) -> str:
    names = {o.name for o in graph.output}
    if {"loc", "conf", "landmarks"} <= names or len(graph.output) == 3:
        return "retinaface"
    if len(graph.output) in (6, 9):
        return "scrfd"
    raise ModelLoadError(
        f"cannot tell the model family from {len(graph.output)} outputs {sorted(names)}: "
        "expected RetinaFace (loc/conf/landmarks) or SCRFD (6 or 9 per-stride outputs)"
    )


def read_layout(graph: onnx.GraphProto) -> GraphLayout:
    if not graph.input:
        raise ModelLoadError("the graph has no input; expected one (batch, 3, height, width)")
    # Initialisers listed as inputs (old exporters) are not fed.
    fed = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(fed) != 1:
        raise ModelLoadError(
            f"the graph has {len(fed)} inputs {[i.name for i in fed]}; expected one image input"
        )
    dims = _dims(fed[0])
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise ModelLoadError(
            f"input {fed[0].name!r} has shape {list(dims)}; expected (batch, 3, height, width)"
        )
    batch = dims[0] if isinstance(dims[0], int) else None
    if batch is not None and batch != 1:
        raise ModelLoadError(
            f"input {fed[0].name!r} has a fixed batch of {batch}; expected 1 or a dynamic batch"
        )
    h, w = dims[2], dims[3]
    size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    if (isinstance(h, int)) != (isinstance(w, int)):
        raise ModelLoadError(
            f"input {fed[0].name!r} has shape {list(dims)}: height and width must be both "
            "fixed or both dynamic"
        )
    return GraphLayout(
        family=detect_family(graph),
        input_name=fed[0].name,
        input_shape=dims,
        batch=batch,
        size=size,
        output_names=tuple(o.name for o in graph.output),
    )


def scrfd_roles(layout: GraphLayout, outputs: list[np.ndarray]) -> list[OutputRole]:
    """Each output's role from the shape it had for the probe input (names are ignored)."""
    _, _, img_h, img_w = layout.probe_shape()
    widths = [int(o.shape[-1]) for o in outputs]
    if any(w not in SCRFD_ROLES for w in widths) or (len(outputs) == 9) != (10 in widths):
        raise ModelLoadError(
            f"SCRFD outputs of widths {widths}; expected per-stride score (1), box (4) and "
            "optionally keypoint (10) outputs, 3 of each"
        )
    roles: list[OutputRole] = []
    for head, role in SCRFD_ROLES.items():
        members = [i for i, w in enumerate(widths) if w == head]
        if not members:
            continue
        if len(members) != len(SCRFD_STRIDES):
            raise ModelLoadError(
                f"{len(members)} {role} outputs (width {head}); expected {len(SCRFD_STRIDES)}, "
                f"one per stride {SCRFD_STRIDES}"
            )
        # More anchors = finer stride, whatever the names or their order.
        members.sort(key=lambda i: -int(np.prod(outputs[i].shape[:-1])))
        for i, stride in zip(members, SCRFD_STRIDES, strict=True):
            anchors = int(np.prod(outputs[i].shape[:-1]))
            cells = (img_h // stride) * (img_w // stride)
            if cells == 0 or anchors % cells:
                raise ModelLoadError(
                    f"output {layout.output_names[i]!r}: {anchors} anchors for {cells} cells of "
                    f"stride {stride} at {img_w}x{img_h}; expected a multiple"
                )
            roles.append(
                OutputRole(
                    layout.output_names[i], tuple(outputs[i].shape), role, stride, anchors // cells
                )
            )
    return roles


def _ends_in_sigmoid(graph: onnx.GraphProto, names: list[str]) -> bool:
    producer = {out: node for node in graph.node for out in node.output}
    for name in names:
        node = producer.get(name)
        while node is not None and node.op_type in _SHAPE_OPS:
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Sigmoid":
            return False
    return bool(names)


def scores_already_sigmoid(model: onnx.ModelProto | onnx.GraphProto, scores: list[str]) -> bool:
    """True when the score outputs are probabilities: the graph's metadata says so (a fetched
    model), or each is produced by a Sigmoid through shape-only ops."""
    if isinstance(model, onnx.ModelProto):
        meta = {p.key: p.value for p in model.metadata_props}
        if SIGMOID_KEY in meta:
            return bool(meta[SIGMOID_KEY] == "1")
        graph = model.graph
    else:
        graph = model
    return _ends_in_sigmoid(graph, scores)


def static_score_outputs(graph: onnx.GraphProto) -> list[str]:
    """Outputs declared with a last axis of 1 (no probe run needed)."""
    return [o.name for o in graph.output if _dims(o) and _dims(o)[-1] == 1]
