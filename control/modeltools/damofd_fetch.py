"""`facestream model fetch damofd`: DamoFD-0.5G (ICLR 2023) from ModelScope, exported to ONNX,
checked and installed in the registry.

No mmcv, no mmdet: ModelScope's client only downloads the snapshot (damofd_hub.py); the network
is built in plain PyTorch (damofd_net.py) and the checkpoint loaded with strict key checking
(only BatchNorm's unused step counters may be absent). Needs torch >= 2.5 (the TorchScript
exporter behind `dynamo=False`), modelscope to download, scikit-image for the sample photo:
the `damofd` extra. Nothing here runs at detector start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.control.modeltools.damofd_hub import (
    CHECKPOINT,
    MODEL_IDS,
    Candidate,
    FetchError,
    Hub,
    candidates,
    download,
    locate,
    modelscope_hub,
    read_snapshot,
)
from facestream.detector.model.graph import SIGMOID_KEY
from facestream.detector.model.registry import RegistryEntry, write_entry
from facestream.detector.model.resize import bilinear_float, fit_size
from facestream.detector.model.types import DecodedImage

MODEL_ID = MODEL_IDS[0]
NAME = "damofd"
INPUT_SIZE = 640
MIN_TORCH = (2, 5)
HINT = "pip install 'facestream[damofd]'"

log = get_logger(__name__)
Step = Callable[[str], None]


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


def build(state: dict[str, Any]) -> tuple[Any, int]:
    """The network with the checkpoint's weights, and how many BatchNorm step counters the
    checkpoint lacked (accepted: unused at inference)."""
    from facestream.control.modeltools.damofd_net import DamoFD, load_strict

    net = DamoFD()
    mismatch = load_strict(net, state)
    if mismatch:
        raise FetchError(
            f"the checkpoint does not fit DamoFD-0.5G ({mismatch.describe()}); nothing installed"
        )
    absent = len(mismatch.absent_counters)
    log.info(
        "damofd_checkpoint_loaded",
        tensors=len(state),
        num_batches_tracked_missing=absent,
        note="BatchNorm step counters, unused at inference: left at 0" if absent else None,
    )
    return net.eval(), absent


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
    revision: str | None = None,
    model_id: str | None = None,
    hub: Hub | None = None,
    sample: Sample | None = None,
) -> RegistryEntry:
    """Download (unless `source` is a downloaded copy), build, export, check, install.

    Downloads try each published name at v1.1, then at the hub's default (damofd_hub.py);
    `revision` / `model_id` replace those lists. `hub` replaces ModelScope's client."""
    say = step or (lambda _msg: None)
    if source is not None and (revision or model_id):
        raise FetchError(
            "--revision and --model-id choose what to download; with --from-dir nothing is "
            "downloaded (the entry records the copy's checkpoint digest)"
        )
    require(downloading=source is None and hub is None)
    from facestream.control.modeltools.damofd_net import STRIDES
    from facestream.control.modeltools.export import (
        ExportMismatch,
        SCRFDOutputs,
        check_export,
        check_inputs,
        export_onnx,
    )

    say("download")
    fetched: Candidate | None = None
    if source is None:
        fetched, path = download(candidates(model_id, revision), cache_dir, hub or modelscope_hub)
    else:
        path = locate(source)
    say("build")
    net, absent = build(read_snapshot(path))
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
        source=_source(fetched),
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
        model_id=fetched.model_id if fetched else None,
        revision=fetched.revision if fetched else None,
    )
    chosen = sample or astronaut()
    iou = check_sample(settings, entry, graph, chosen)
    entry = RegistryEntry(
        **{
            **entry.__dict__,
            "check": {
                **check.as_dict(),
                "sample": chosen.name,
                "iou": iou,
                "num_batches_tracked_missing": absent,
            },
        }
    )
    log.info("damofd_export_checked", sample_iou=round(iou, 3), **check.as_dict())
    say("install")
    write_entry(root, entry, graph)
    return entry


def _source(fetched: Candidate | None) -> str:
    if fetched is None:  # --from-dir: which name or revision the copy came from is not known
        return f"modelscope:{MODEL_ID}"
    if fetched.revision is None:
        return f"modelscope:{fetched.model_id} (hub default revision)"
    return f"modelscope:{fetched.model_id}@{fetched.revision}"
