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
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facestream.common.settings import ModelSettings
from facestream.detector.model.entry import FORMAT_VERSION, NAME_RE, EntrySchema, describe
from facestream.detector.model.trust import TrustError, TrustMode, check_model_dir

ENTRY_FILE = "entry.json"
ONNX_FILE = "model.onnx"
# Installed files: readable by the detector's user (a container's, other than the fetcher's),
# writable by their owner only, which the loader's trust check requires.
FILE_MODE, DIR_MODE = 0o644, 0o755


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
    model_id: str | None = None  # the hub's name downloaded; None: installed from a local copy
    revision: str | None = None  # the hub revision downloaded; None: the hub's default
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
        version = raw.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:  # `true` == 1 in Python
            raise RegistryError(
                f"{where}: format_version {raw.get('format_version')!r}, this facestream "
                f"reads {FORMAT_VERSION}; re-run `facestream model fetch`"
            )
        return cls._checked(text, where)

    def validate(self, where: str) -> None:
        self._checked(self.to_json(), where)

    @classmethod
    def _checked(cls, text: str, where: str) -> RegistryEntry:
        """The entry as the schema reads it (strict JSON types, ranges): a violation is one
        RegistryError naming every bad field."""
        try:
            checked = EntrySchema.model_validate_json(text)
        except ValidationError as exc:
            raise RegistryError(f"{where}: {describe(exc)}") from None
        return cls(**checked.model_dump())


def model_dir(settings: ModelSettings) -> Path:
    if settings.model_dir:
        return Path(settings.model_dir).expanduser()
    # XDG's cache directory: where a fetched model lands when nothing else is configured.
    return Path.home() / ".cache" / "facestream" / "models"


def is_registry_name(value: str) -> bool:
    return value != "builtin" and NAME_RE.match(value) is not None and not value.endswith(".onnx")


def read_entry(root: Path, name: str, trust: TrustMode = "owner") -> RegistryEntry:
    """The entry of an installed model, after the registry, its directory and the entry file
    passed the trust checks (detector/model/trust.py)."""
    path = root / name / ENTRY_FILE
    if not path.is_file() and not path.is_symlink():
        installed = ", ".join(e.name for e in list_entries(root)) or "none"
        raise RegistryError(
            f"model {name!r} is not installed in {root} (installed: {installed}); "
            f"run `facestream model fetch {name}` on a machine with internet and copy "
            "the directory here (docs/models.md)"
        )
    _trusted(root, name, trust)
    entry = RegistryEntry.from_json(_read(path).decode("utf-8", "replace"), str(path))
    if entry.name != name:
        # The graph is read from the entry's name: another directory's, which was not checked.
        raise RegistryError(f"{path}: name {entry.name!r} is not its directory's ({name!r})")
    return entry


def read_graph(root: Path, entry: RegistryEntry, trust: TrustMode = "owner") -> bytes:
    path = root / entry.name / ONNX_FILE
    if not path.is_file() and not path.is_symlink():
        raise RegistryError(f"{path}: missing; the model directory is incomplete")
    _trusted(root, entry.name, trust)
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.onnx_sha256:
        raise RegistryError(
            f"{path}: sha256 {digest[:12]}... does not match the entry's "
            f"{entry.onnx_sha256[:12]}...; the file was changed or truncated in transit"
        )
    return data


def scan_entries(root: Path, trust: TrustMode = "owner") -> tuple[list[RegistryEntry], list[str]]:
    """Installed entries by name, and one line for each directory refused (untrusted, not a
    valid entry)."""
    if not root.is_dir():
        return [], []
    entries, refused = [], []
    for path in sorted(root.glob(f"*/{ENTRY_FILE}")):
        try:
            entries.append(read_entry(root, path.parent.name, trust))
        except RegistryError as exc:
            refused.append(str(exc))
    return entries, refused


def list_entries(root: Path) -> list[RegistryEntry]:
    """Installed entries, by name; unreadable ones are left out (`model list` names them)."""
    return scan_entries(root, "any")[0]


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
    order: a detector reading the folder meanwhile never sees half a model. A target that is
    a symbolic link is refused, never written through."""
    if target.is_symlink():
        raise RegistryError(
            f"{target}: a symbolic link (to {os.readlink(target)}); not installing through "
            "it: remove the link, or set FACESTREAM_MODEL_DIR to the directory it points to"
        )
    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp's 0600 would hide it from the detector
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target / name)
    return target


def _trusted(root: Path, name: str, trust: TrustMode) -> None:
    try:
        check_model_dir(root, name, (ENTRY_FILE, ONNX_FILE), trust)
    except TrustError as exc:
        raise RegistryError(str(exc)) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot be read: {exc.strerror}") from None
