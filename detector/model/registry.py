"""The model registry: one directory per exported model, `model.onnx` + `entry.json`.

`facestream model fetch` writes an entry; a detector with `FACESTREAM_MODEL=<name>` reads it.
The entry holds everything the decoder and pre-processing need, so a detector never guesses
(family, input size, normalisation, strides, anchors), and the digests that tie the graph to
the weights it was exported from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from facestream.common.settings import Settings

ENTRY_FILE = "entry.json"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
FAMILIES = ("scrfd",)


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    family: str  # decoder to use; only the SCRFD family is exported today
    source: str  # where the weights came from, e.g. modelscope:<model id>
    input_size: int  # long side an image is scaled to fit
    bgr: bool  # channel order fed to the graph
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Pad every image to input_size x input_size (ModelScope's SCRFD pre-processing pads to a
    # fixed 640 square); else pad to a multiple of 32.
    pad_square: bool
    strides: tuple[int, ...]
    anchors_per_cell: int
    sigmoid_in_graph: bool  # scores leave the graph as probabilities
    score_threshold: float
    nms_iou: float
    weights_sha256: str  # the source checkpoint the graph was exported from
    onnx_sha256: str  # the exported graph, checked at load
    exporter: dict[str, str] = field(default_factory=dict)  # tool versions used to export
    check: dict[str, Any] = field(default_factory=dict)  # export-vs-PyTorch figures
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> RegistryEntry:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"{where}: not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: expected a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"{where}: format_version {raw.get('format_version')!r}, this facestream "
                f"reads {FORMAT_VERSION}; re-run `facestream model fetch`"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in raw and n not in ("exporter", "check"))
        if missing:
            raise RegistryError(f"{where}: missing fields {missing}")
        values = {k: v for k, v in raw.items() if k in names}
        for key in ("mean", "std", "strides"):
            values[key] = tuple(values[key])
        entry = cls(**values)
        entry.validate(where)
        return entry

    def validate(self, where: str) -> None:
        problems = []
        if not NAME_RE.match(self.name):
            problems.append(f"name {self.name!r} is not a registry name")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {FAMILIES}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need three values, std > 0")
        if not self.strides or any(s <= 0 for s in self.strides) or self.anchors_per_cell < 1:
            problems.append("strides and anchors_per_cell must be positive")
        if not 32 <= self.input_size <= 4096:
            problems.append(f"input_size {self.input_size} outside 32..4096")
        if not (0 <= self.score_threshold <= 1 and 0 < self.nms_iou <= 1):
            problems.append("score_threshold must be in [0, 1] and nms_iou in (0, 1]")
        if problems:
            raise RegistryError(f"{where}: " + "; ".join(problems))


def model_dir(settings: Settings) -> Path:
    if settings.model_dir:
        return Path(settings.model_dir).expanduser()
    # XDG's cache directory: where a fetched model lands when nothing else is configured.
    return Path.home() / ".cache" / "facestream" / "models"


def is_registry_name(value: str) -> bool:
    return value != "builtin" and NAME_RE.match(value) is not None and not value.endswith(".onnx")


def read_entry(root: Path, name: str) -> RegistryEntry:
    path = root / name / ENTRY_FILE
    if not path.is_file():
        installed = ", ".join(e.name for e in list_entries(root)) or "none"
        raise RegistryError(
            f"model {name!r} is not installed in {root} (installed: {installed}); "
            f"run `facestream model fetch {name}` on a machine with internet and copy "
            "the directory here (docs/models.md)"
        )
    return RegistryEntry.from_json(path.read_text(encoding="utf-8"), str(path))


def read_graph(root: Path, entry: RegistryEntry) -> bytes:
    path = root / entry.name / ONNX_FILE
    if not path.is_file():
        raise RegistryError(f"{path}: missing; the model directory is incomplete")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.onnx_sha256:
        raise RegistryError(
            f"{path}: sha256 {digest[:12]}... does not match the entry's "
            f"{entry.onnx_sha256[:12]}...; the file was changed or truncated in transit"
        )
    return data


def list_entries(root: Path) -> list[RegistryEntry]:
    """Installed entries, by name; unreadable ones are left out (`model info` names them)."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob(f"*/{ENTRY_FILE}")):
        try:
            out.append(RegistryEntry.from_json(path.read_text(encoding="utf-8"), str(path)))
        except (RegistryError, TypeError, OSError):
            continue
    return out


def write_entry(root: Path, entry: RegistryEntry, graph: bytes) -> Path:
    """Installs graph and entry; each file is renamed into place, the entry last, so a reader
    never sees an entry whose graph is not all there."""
    entry.validate("new entry")
    if hashlib.sha256(graph).hexdigest() != entry.onnx_sha256:
        raise RegistryError("the entry's onnx_sha256 is not the graph's")
    return install_files(
        root / entry.name, {ONNX_FILE: graph, ENTRY_FILE: entry.to_json().encode()}
    )


def install_files(target: Path, files: dict[str, bytes]) -> Path:
    """Write each file whole or not at all (a temporary file synced, then renamed over), in
    order: a detector reading the folder meanwhile never sees half a model."""
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target / name)
    return target
