"""`facestream model fetch damofd`: DamoFD-0.5G (ICLR 2023) from ModelScope, exported to ONNX,
checked and installed in the registry.

No mmcv, no mmdet: ModelScope's client only downloads the snapshot; the network is built in
plain PyTorch (damofd_net.py) and the checkpoint loaded with strict key checking. Needs torch
>= 2.5 (the TorchScript exporter behind `dynamo=False`), modelscope to download, scikit-image
for the sample photo: the `damofd` extra. Nothing here runs at detector start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.detector.model.graph import SIGMOID_KEY
from facestream.detector.model.registry import RegistryEntry, write_entry
from facestream.detector.model.resize import bilinear_float, fit_size
from facestream.detector.model.types import DecodedImage

MODEL_ID = "damo/cv_ddsar_face-detection_iclr23-damofd"
# The hub revision fetched: a tag, so a re-published snapshot never changes what is installed
# silently (`--revision` picks another; the entry records the one used).
REVISION = "v1.0.0"
NAME = "damofd"
CONFIG = "configuration.json"  # ModelScope's: its model type must be damofd
MODEL_CONFIG = "DamoFD_lms.py"  # mmdet-style config: present in a real snapshot, never executed
CHECKPOINT = "pytorch_model.pt"  # a dict with `state_dict`
INPUT_SIZE = 640
MIN_TORCH = (2, 5)
HINT = "pip install 'facestream[damofd]'"

log = get_logger(__name__)
Step = Callable[[str], None]


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    """A photo with one known face: the fetched network must find it before it is installed
    (strict key loading proves the names, not that the weights are trained ones)."""

    name: str
    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    face: tuple[float, float, float, float]  # x1, y1, x2, y2
    min_iou: float = 0.5


def astronaut() -> Sample:
    """scikit-image's astronaut (NASA, public domain). The box is the built-in RetinaFace's on
    this photo; any trained face detector's box overlaps it far beyond IoU 0.5."""
    import skimage.data

    data: Any = skimage.data  # untyped package
    return Sample("astronaut", data.astronaut(), (177.75, 56.89, 273.05, 177.29))


def missing_requirements(downloading: bool) -> list[str]:
    wanted = ["torch", "skimage"] + (["modelscope"] if downloading else [])
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def require(downloading: bool) -> None:
    missing = missing_requirements(downloading)
    if missing:
        raise FetchError(
            f"fetching damofd needs {', '.join(missing)}, not installed: {HINT} "
            "(detectors need none of it, only the fetched directory)"
        )
    import torch

    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise FetchError(
            f"torch {torch.__version__} is too old: the export needs torch >= 2.5 ({HINT})"
        )


def download(cache_dir: Path | None, revision: str) -> Path:
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        path = snapshot_download(
            MODEL_ID, revision=revision, cache_dir=str(cache_dir) if cache_dir else None
        )
    except Exception as exc:
        raise FetchError(
            f"downloading {MODEL_ID} (revision {revision}) from ModelScope failed: {exc}. "
            "Without internet, fetch on a machine that has it and copy the installed "
            "directory, or pass a downloaded copy with --from-dir (docs/models.md)"
        ) from None
    return Path(path)


def read_snapshot(source: Path) -> dict[str, Any]:
    """The checkpoint's state_dict, after checking the snapshot is DamoFD's."""
    import torch

    for name in (CONFIG, CHECKPOINT):
        if not (source / name).is_file():
            raise FetchError(f"{source}: no {name}; not a snapshot of {MODEL_ID}")
    try:
        config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
        kind = config.get("model", {}).get("type")
    except (ValueError, AttributeError) as exc:
        raise FetchError(f"{source / CONFIG}: unreadable: {exc}") from None
    if kind != "damofd":
        raise FetchError(f"{source / CONFIG}: model type {kind!r}, expected 'damofd'")
    try:
        # Tensors and plain containers only: a checkpoint is data, never code to run.
        checkpoint = torch.load(source / CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FetchError(f"{source / CHECKPOINT}: not a loadable checkpoint: {exc}") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise FetchError(f"{source / CHECKPOINT}: no state_dict in the checkpoint")
    return state


def build(state: dict[str, Any]) -> Any:
    from facestream.detector.model.damofd_net import DamoFD, load_strict

    net = DamoFD()
    mismatch = load_strict(net, state)
    if mismatch:
        raise FetchError(
            f"the checkpoint does not fit DamoFD-0.5G ({mismatch.describe()}); nothing installed"
        )
    return net.eval()


def check_sample(settings: Settings, entry: RegistryEntry, graph: bytes, sample: Sample) -> float:
    """Serves the sample photo with the exported graph exactly as a detector would; the IoU of
    the best face with the known one, or FetchError when it is not found."""
    from facestream.detector.model.loader import load_model

    h, w = sample.pixels.shape[:2]
    tw, th = fit_size(w, h, entry.input_size, upscale=True, rule="mmcv")
    pixels = bilinear_float(sample.pixels, tw, th) if (tw, th) != (w, h) else sample.pixels
    with tempfile.TemporaryDirectory() as tmp:
        write_entry(Path(tmp), entry, graph)
        # The entry's own defaults, whatever this machine's overrides.
        plain = dict.fromkeys(("input_size", "score_threshold", "nms_iou", "max_faces"))
        plain.update(model=entry.name, model_dir=tmp, score_activation="auto", letterbox=False)
        chosen = settings.model_copy(update=plain)
        faces = load_model(chosen).detect([DecodedImage(pixels, w, h, tw / w, th / h)])[0]
    best = max((_iou(f.box, sample.face) for f in faces), default=0.0)
    if best < sample.min_iou:
        raise FetchError(
            f"the exported network does not find the face on the sample photo {sample.name} "
            f"({len(faces)} faces, best IoU {best:.2f} < {sample.min_iou}): these are not "
            "trained DamoFD weights; nothing installed"
        )
    return best


def _iou(a: list[float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(*dists: str) -> dict[str, str]:
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def fetch(
    settings: Settings,
    root: Path,
    cache_dir: Path | None,
    source: Path | None,
    step: Step | None = None,
    *,
    revision: str = REVISION,
    sample: Sample | None = None,
) -> RegistryEntry:
    """Download (unless `source` is a downloaded copy), build, export, check, install."""
    say = step or (lambda _msg: None)
    require(downloading=source is None)
    from facestream.detector.model.damofd_net import STRIDES
    from facestream.detector.model.export import (
        ExportMismatch,
        SCRFDOutputs,
        check_export,
        check_inputs,
        export_onnx,
    )

    say("download")
    path = source if source is not None else download(cache_dir, revision)
    say("build")
    net = build(read_snapshot(path))
    say("export")
    wrapped = SCRFDOutputs(net, net)
    meta = {SIGMOID_KEY: "1", "facestream.pad_square": "1", "facestream.input_size": "640"}
    graph = export_onnx(wrapped, STRIDES, INPUT_SIZE, metadata=meta)
    say("check")
    try:
        check = check_export(wrapped, graph, check_inputs(INPUT_SIZE))
    except ExportMismatch as exc:
        raise FetchError(f"the export was not installed: {exc}") from None
    entry = RegistryEntry(
        name=NAME,
        family="scrfd",
        source=f"modelscope:{MODEL_ID}" + (f"@{revision}" if source is None else ""),
        input_size=INPUT_SIZE,
        # ModelScope's SCRFDPreprocessor: RGB, (x - 127.5) / 128, keep-ratio resize to fit
        # 640 (small images scaled up), padded to a 640 x 640 square with zeros.
        bgr=False,
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        pad_square=True,
        strides=STRIDES,
        anchors_per_cell=2,
        sigmoid_in_graph=True,
        # ModelScope's face-detection defaults (ScrfdDetect's score_thr; the config's NMS).
        score_threshold=0.3,
        nms_iou=0.45,
        weights_sha256=sha256_file(path / CHECKPOINT),
        onnx_sha256=hashlib.sha256(graph).hexdigest(),
        exporter=versions("torch", "onnx", "modelscope"),
        check=check.as_dict(),
    )
    chosen = sample or astronaut()
    iou = check_sample(settings, entry, graph, chosen)
    entry = RegistryEntry(
        **{**entry.__dict__, "check": {**check.as_dict(), "sample": chosen.name, "iou": iou}}
    )
    log.info("damofd_export_checked", sample_iou=round(iou, 3), **check.as_dict())
    say("install")
    write_entry(root, entry, graph)
    return entry
