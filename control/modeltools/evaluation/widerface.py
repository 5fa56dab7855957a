"""WIDER FACE val ground truth, from the official .mat files or the plain-text box list.

The official evaluation reads `wider_face_val.mat` (events, files, boxes) and, per subset, a
`wider_<subset>_val.mat` whose `gt_list` holds the 1-based indices of the faces that subset
counts: every other face of the image (too small, heavily occluded, flagged invalid, ...) is an
"ignore" face. `wider_face_val_bbx_gt.txt` carries the boxes and each face's invalid flag but no
subsets, so from it only "all" (every valid face counted) can be scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUBSETS = ("easy", "medium", "hard")
ALL = "all"
VAL_MAT = "wider_face_val.mat"
VAL_TXT = "wider_face_val_bbx_gt.txt"
INVALID_COLUMN = 7  # x y w h blur expression illumination *invalid* occlusion pose


class GroundTruthError(ValueError):
    """The ground truth is missing or not in a layout this reader knows (one line)."""


class NeedsScipy(GroundTruthError):
    """A .mat file to read and no scipy to read it with."""


@dataclass(frozen=True)
class ImageTruth:
    name: str  # "<event>/<file>.jpg", relative to the images directory
    boxes: np.ndarray  # (k, 4) float64, x y w h as annotated
    keep: dict[str, np.ndarray] = field(default_factory=dict)  # subset -> (k,) bool counted


@dataclass(frozen=True)
class GroundTruth:
    images: list[ImageTruth]
    subsets: tuple[str, ...]
    source: list[str]  # the files read
    note: str = ""  # why a subset is missing, if one is


def subset_mat(subset: str) -> str:
    return f"wider_{subset}_val.mat"


def read_txt(path: Path) -> GroundTruth:
    """`wider_face_val_bbx_gt.txt`: a name line, a count line, then one line per face (an image
    with no face has one line of zeros all the same)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"{path}: cannot be read: {exc}") from None
    lines = [line for line in lines if line]
    images: list[ImageTruth] = []
    i = 0
    while i < len(lines):
        name = lines[i]
        try:
            count = int(lines[i + 1])
        except (IndexError, ValueError):
            raise GroundTruthError(f"{path}:{name}: no face count after the image name") from None
        rows = lines[i + 2 : i + 2 + max(count, 1)]
        if len(rows) < max(count, 1):
            raise GroundTruthError(f"{path}:{name}: {count} faces announced, fewer lines follow")
        i += 2 + max(count, 1)
        values = [_floats(path, name, row) for row in rows[:count]]
        boxes = np.array([v[:4] for v in values], np.float64).reshape(-1, 4)
        invalid = np.array([len(v) > INVALID_COLUMN and v[INVALID_COLUMN] != 0 for v in values])
        images.append(ImageTruth(name, boxes, {ALL: ~invalid.astype(bool).reshape(-1)}))
    return GroundTruth(images, (ALL,), [str(path)], "no subset files: valid faces only")


def _floats(path: Path, name: str, row: str) -> list[float]:
    try:
        values = [float(v) for v in row.split()]
    except ValueError:
        raise GroundTruthError(f"{path}:{name}: not a face line: {row[:60]!r}") from None
    if len(values) < 4:
        raise GroundTruthError(f"{path}:{name}: a face needs x y w h: {row[:60]!r}")
    return values


def read_mat(val: Path, subsets: dict[str, Path]) -> GroundTruth:
    """The official files: boxes from `val`, per subset the faces its `gt_list` keeps. With no
    subset file, "all": the faces `invalid_label_list` does not flag (every face without it)."""
    gt = _loadmat(val)
    try:
        events = [_text(e) for e in _cells(gt["event_list"])]
        files = [[_text(f) for f in _cells(e)] for e in _cells(gt["file_list"])]
        boxes = [[_numbers(b, 4) for b in _cells(e)] for e in _cells(gt["face_bbx_list"])]
        flags = gt.get("invalid_label_list")
        invalid = (
            [[_numbers(b, 1)[:, 0] != 0 for b in _cells(e)] for e in _cells(flags)]
            if flags is not None
            else None
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise GroundTruthError(f"{val}: not WIDER FACE's val ground truth: {exc}") from None
    if not (len(events) == len(files) == len(boxes)) or any(
        len(f) != len(b) for f, b in zip(files, boxes, strict=True)
    ):
        raise GroundTruthError(f"{val}: events, files and boxes do not line up")
    keeps: dict[str, list[list[np.ndarray]]] = {}
    for subset, path in subsets.items():
        keeps[subset] = _subset(path, boxes)
    if not keeps:
        keeps[ALL] = (
            [[~flags for flags in event] for event in invalid]
            if invalid is not None
            else [[np.ones(len(b), bool) for b in event] for event in boxes]
        )
    images = []
    for e, event in enumerate(events):
        for j, name in enumerate(files[e]):
            keep = {s: keeps[s][e][j] for s in keeps}
            images.append(ImageTruth(f"{event}/{name}.jpg", boxes[e][j], keep))
    order = tuple(s for s in (*SUBSETS, ALL) if s in keeps)
    note = "" if subsets else "no wider_<subset>_val.mat files: valid faces only"
    return GroundTruth(images, order, [str(val), *map(str, subsets.values())], note)


def _subset(path: Path, boxes: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    try:
        kept = _loadmat(path)["gt_list"]
        lists = [[_numbers(k, 1)[:, 0] for k in _cells(e)] for e in _cells(kept)]
    except (KeyError, ValueError, TypeError) as exc:
        raise GroundTruthError(f"{path}: no usable gt_list: {exc}") from None
    if len(lists) != len(boxes) or any(len(a) != len(b) for a, b in zip(lists, boxes, strict=True)):
        raise GroundTruthError(f"{path}: its gt_list does not line up with wider_face_val.mat")
    out: list[list[np.ndarray]] = []
    for event_lists, event_boxes in zip(lists, boxes, strict=True):
        row = []
        for index, faces in zip(event_lists, event_boxes, strict=True):
            if np.any(index < 1) or np.any(index > len(faces)) or np.any(index % 1):
                raise GroundTruthError(f"{path}: a face index outside 1..{len(faces)}")
            mask = np.zeros(len(faces), bool)
            mask[index.astype(np.int64) - 1] = True  # MATLAB's indices start at 1
            row.append(mask)
        out.append(row)
    return out


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        import scipy.io
    except ImportError:
        raise NeedsScipy(
            f"{path.name}: reading .mat files needs scipy (pip install 'facestream[eval]'); "
            f"or give {VAL_TXT} (all faces only)"
        ) from None
    try:
        data: dict[str, Any] = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy's MatReadError and friends: any unreadable file
        raise GroundTruthError(f"{path}: not a readable .mat file: {exc}") from None
    return data


def _cells(value: Any) -> list[Any]:
    """A MATLAB cell array (an object array of any shape) as a flat list."""
    return list(np.asarray(value, dtype=object).reshape(-1))


def _text(value: Any) -> str:
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got an array of {value.size}")
        value = value.reshape(-1)[0]
    return str(value)


def _numbers(value: Any, columns: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, columns))
    if array.size % columns:
        raise ValueError(f"expected rows of {columns} numbers, got shape {array.shape}")
    return array.reshape(-1, columns)


def gt_dirs(root: Path, gt_dir: Path | None) -> list[Path]:
    """Where the ground truth may sit: as the data set unpacks (wider_face_split/, and
    eval_tools/ground_truth/ from the official eval tools), or where --gt-dir says."""
    found = [gt_dir] if gt_dir is not None else []
    found += [root / "wider_face_split", root / "eval_tools" / "ground_truth"]
    found += [root / "ground_truth", root]
    return found


def _first(dirs: Iterable[Path], name: str) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def find_ground_truth(root: Path, gt_dir: Path | None = None) -> GroundTruth:
    """The .mat files when scipy can read them (easy / medium / hard), else the text list."""
    dirs = gt_dirs(root, gt_dir)
    val, txt = _first(dirs, VAL_MAT), _first(dirs, VAL_TXT)
    subsets = {s: p for s in SUBSETS if (p := _first(dirs, subset_mat(s))) is not None}
    if val is not None and (subsets or txt is None):
        try:
            return read_mat(val, subsets)
        except NeedsScipy as exc:
            if txt is None:
                raise
            fallback = read_txt(txt)
            return GroundTruth(fallback.images, fallback.subsets, fallback.source, str(exc))
    if txt is not None:
        return read_txt(txt)
    where = ", ".join(str(d) for d in dirs)
    raise GroundTruthError(f"no {VAL_MAT} or {VAL_TXT} in {where}")


def images_dir(root: Path) -> Path:
    for candidate in (root / "WIDER_val" / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    raise GroundTruthError(f"no WIDER_val/images/ (or images/) under {root}")


def select(images: list[ImageTruth], every: int, limit: int | None) -> Iterator[ImageTruth]:
    """Every `every`-th image in the ground truth's order, at most `limit` of them."""
    chosen = images[::every]
    yield from chosen if limit is None else chosen[:limit]
