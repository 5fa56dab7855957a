"""`builtin-int8` as a detector reads it: the installed int8 copy of the built-in RetinaFace and
its manifest (`<model dir>/builtin-int8/{model.onnx, quantized.json}`).

`facestream model quantize builtin` (control/modeltools/quantize.py) makes and installs the
copy; a detector only reads it, and refuses it unless the manifest says it was made from this
detector's own fp32 graph and the graph on disk is the one the manifest names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

QUANTIZED_NAME = "builtin-int8"
MANIFEST_FILE = "quantized.json"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1


class QuantizeError(RuntimeError):
    pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / QUANTIZED_NAME / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise QuantizeError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise QuantizeError(f"{path}: not a format {FORMAT_VERSION} manifest; re-run quantize")
    return raw


def read_quantized(root: Path, source_sha256: str) -> bytes:
    """The installed int8 graph, checked to be a copy of the fp32 graph with this digest."""
    rerun = "run `facestream model quantize builtin` (needs the demo extra's sample photos)"
    manifest = read_manifest(root)
    if manifest is None:
        raise QuantizeError(f"{QUANTIZED_NAME} is not installed in {root}; {rerun}")
    if manifest.get("source_sha256") != source_sha256:
        raise QuantizeError(
            f"{QUANTIZED_NAME} in {root} was quantised from another model (sha256 "
            f"{str(manifest.get('source_sha256'))[:12]}...), not this detector's built-in "
            f"({source_sha256[:12]}...); {rerun}"
        )
    path = root / QUANTIZED_NAME / ONNX_FILE
    data = path.read_bytes() if path.is_file() else b""
    if sha256(data) != manifest.get("onnx_sha256"):
        raise QuantizeError(f"{path}: missing or not the graph its manifest names; {rerun}")
    return data
