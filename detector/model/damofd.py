"""`facestream model fetch damofd`: DamoFD-0.5G (ICLR 2023) from ModelScope, exported to ONNX
and installed in the registry.

ModelScope builds the network from the model's own config with mmcv-full 1.x and mmdet 2.x, so
those, torch and modelscope must be importable (the `damofd` extra plus mmcv-full, which has
no wheels on PyPI: docs/models.md). Nothing here runs at detector start.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from facestream.common.log import get_logger
from facestream.detector.model.registry import RegistryEntry, write_entry

MODEL_ID = "damo/cv_ddsar_face-detection_iclr23-damofd"
NAME = "damofd"
CHECKPOINT = "pytorch_model.pt"  # ModelScope's TORCH_MODEL_FILE, what DamoFdDetect loads
INPUT_SIZE = 640
# Import name -> what to install; mmcv must be the full 1.x build (compiled ops), which
# ModelScope's SCRFD code and mmdet 2.x import.
REQUIREMENTS = {
    "torch": "facestream[damofd]",
    "modelscope": "facestream[damofd]",
    "mmdet": "facestream[damofd]",
    "mmcv": "mmcv-full 1.x (OpenMMLab's wheels or a source build, docs/models.md)",
}

log = get_logger(__name__)
Step = Callable[[str], None]


class FetchError(RuntimeError):
    pass


def missing_requirements() -> list[str]:
    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def require() -> None:
    missing = missing_requirements()
    if missing:
        wants = sorted({REQUIREMENTS[m] for m in missing})
        raise FetchError(
            f"fetching damofd needs {', '.join(missing)}, which are not installed: "
            f"install {' and '.join(wants)} (`pip install 'facestream[damofd]'`); "
            "detectors need none of them, only the fetched directory"
        )


def download(cache_dir: Path | None) -> Path:
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        path = snapshot_download(MODEL_ID, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:
        raise FetchError(
            f"downloading {MODEL_ID} from ModelScope failed: {exc}. On a machine without "
            "internet, fetch on one that has it and copy the model directory (docs/models.md)"
        ) from None
    return Path(path)


def build_detector(source: Path) -> Any:
    """The mmdet SCRFD detector exactly as ModelScope's pipeline builds and loads it."""
    from modelscope.models import Model

    if not (source / CHECKPOINT).is_file():
        raise FetchError(f"{source}: no {CHECKPOINT}; not a copy of {MODEL_ID}")
    # The model's config is a Python file that mmcv executes; it comes from ModelScope's own
    # repository of this fixed model id.
    model = Model.from_pretrained(str(source), device="cpu", trust_remote_code=True)
    detector = model.detector
    detector = getattr(detector, "module", detector)  # MMDataParallel wraps it
    # MMDataParallel moves it to the first GPU when there is one; the export runs on the CPU.
    return detector.cpu().eval()


def layout(detector: Any) -> dict[str, Any]:
    """Strides, anchors and test thresholds, read from the built head rather than assumed."""
    head = detector.bbox_head
    generator = head.anchor_generator
    offset = float(getattr(generator, "center_offset", 0.0))
    if offset != 0.0:
        raise FetchError(f"anchor centre offset {offset}: the SCRFD decoder assumes 0")
    test_cfg = getattr(head, "test_cfg", None) or {}
    nms = test_cfg.get("nms", {}) if hasattr(test_cfg, "get") else {}
    return {
        "strides": tuple(int(s[0]) for s in generator.strides),
        "anchors_per_cell": int(head.num_anchors),
        "score_threshold": float(test_cfg.get("score_thr", 0.3)),
        "nms_iou": float(nms.get("iou_threshold", 0.45)),
    }


def heads_of(detector: Any) -> Callable[[Any], Any]:
    def heads(x: Any) -> Any:
        return detector.bbox_head(detector.extract_feat(x))

    return heads


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
    root: Path, cache_dir: Path | None, source: Path | None, step: Step | None = None
) -> RegistryEntry:
    """Download (unless `source` is a downloaded copy), build, export, check, install."""
    say = step or (lambda _msg: None)
    require()
    from facestream.detector.model.export import (
        ExportMismatch,
        SCRFDOutputs,
        check_export,
        check_inputs,
        export_onnx,
    )

    say("download")
    path = source if source is not None else download(cache_dir)
    say("build")
    detector = build_detector(path)
    shape = layout(detector)
    say("export")
    net = SCRFDOutputs(heads_of(detector), detector)
    graph = export_onnx(net, shape["strides"], INPUT_SIZE)
    say("check")
    try:
        check = check_export(net, graph, check_inputs(INPUT_SIZE))
    except ExportMismatch as exc:
        raise FetchError(f"the export was not installed: {exc}") from None
    log.info("damofd_export_checked", **check.as_dict())
    entry = RegistryEntry(
        name=NAME,
        family="scrfd",
        source=f"modelscope:{MODEL_ID}",
        input_size=INPUT_SIZE,
        # ModelScope's SCRFDPreprocessor: RGB, (x - 127.5) / 128, keep-ratio resize to fit
        # 640 (small images scaled up), padded to a 640 x 640 square with zeros.
        bgr=False,
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        pad_square=True,
        sigmoid_in_graph=True,
        weights_sha256=sha256_file(path / CHECKPOINT),
        onnx_sha256=hashlib.sha256(graph).hexdigest(),
        exporter=versions("torch", "onnx", "modelscope", "mmdet", "mmcv-full", "mmcv"),
        check=check.as_dict(),
        **shape,
    )
    say("install")
    write_entry(root, entry, graph)
    return entry
