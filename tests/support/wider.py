"""A small data set laid out as WIDER FACE val, with known faces: real LFW face photos (the
sample mosaic's tiles, facestream.control.samples) pasted on a noisy grey canvas at known boxes,
its ground truth written in the official formats (.mat files, the text list, RetinaFace's
landmark label.txt). Nothing is downloaded.

What is in it, by construction:
- 16 annotated faces the built-in model finds (score >= 0.8, IoU >= 0.69 with the annotation
  convention below, measured at every size used here), counted in every subset;
- 1 annotated box on empty canvas: a face no model can find (recall 16 / 17 at best);
- 2 pasted faces left unannotated: false positives of any model that finds faces;
- 1 annotated face flagged invalid: an ignore face in every subset (finding it is no error);
- 3 tiny faces (20 px), counted in "hard" only: ignore faces in easy and medium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from facestream.control.samples import encode, lfw_mosaic

TILE = 128
# Mosaic tiles the built-in model finds well at 128..176 px (tiles 4 and 9 it does not).
GOOD_TILES = (0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
# The annotation convention: where a face sits in its tile (the built-in model's mean box on
# the mosaic, as fractions of the tile), like an annotator's tight box around the face.
FACE_IN_TILE = (0.055, 0.025, 0.826, 0.985)
SUBSETS = ("easy", "medium", "hard")


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x y w h
    subsets: tuple[str, ...] = SUBSETS  # where it counts
    invalid: bool = False
    points: np.ndarray | None = None  # (5, 2) landmarks, if annotated


@dataclass
class Picture:
    event: str
    name: str
    pixels: np.ndarray
    faces: list[Face] = field(default_factory=list)


def tiles() -> np.ndarray:
    return lfw_mosaic().reshape(4, TILE, 5, TILE).transpose(0, 2, 1, 3).reshape(20, TILE, TILE)


def canvas(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (110 + rng.normal(0, 4, (768, 1024))).clip(0, 255).astype(np.uint8)


def paste(
    pixels: np.ndarray, tile: np.ndarray, x: int, y: int, size: int
) -> tuple[tuple[float, float, float, float], float]:
    """The tile at (x, y) scaled to size; returns the face's annotated box and the scale."""
    pixels[y : y + size, x : x + size] = np.asarray(
        Image.fromarray(tile).resize((size, size), Image.Resampling.BICUBIC)
    )
    fx1, fy1, fx2, fy2 = FACE_IN_TILE
    box = (x + fx1 * size, y + fy1 * size, (fx2 - fx1) * size, (fy2 - fy1) * size)
    return box, size / TILE


def pictures(tile_points: dict[int, np.ndarray] | None = None) -> list[Picture]:
    """The set described in the module's docstring. `tile_points`: landmarks per tile (in
    tile pixels) to annotate the counted faces with, mapped by the paste's offset and scale."""
    faces = tiles()
    order = iter(GOOD_TILES * 2)
    out: list[Picture] = []

    def row(picture: Picture, n: int, size: int, y: int, annotate: bool = True) -> None:
        for i in range(n):
            k = next(order)
            x = 40 + i * 200
            box, scale = paste(picture.pixels, faces[k], x, y, size)
            if annotate:
                pts = None
                if tile_points is not None and k in tile_points:
                    pts = np.asarray(tile_points[k]) * scale + np.array([x, y])
                picture.faces.append(Face(box, points=pts))

    a = Picture("0--Parade", "0_Parade_marchingband_1_1", canvas(1))
    row(a, 5, 160, 100)
    b = Picture("0--Parade", "0_Parade_marchingband_1_2", canvas(2))
    row(b, 5, 144, 420)
    b.faces.append(Face((420.0, 100.0, 120.0, 150.0)))  # empty canvas: a certain miss
    c = Picture("1--Handshaking", "1_Handshaking_1", canvas(3))
    row(c, 4, 128, 100)
    row(c, 2, 128, 420, annotate=False)  # real faces nobody annotated: false positives
    box, _ = paste(c.pixels, faces[next(order)], 440, 420, 176)
    c.faces.append(Face(box, subsets=(), invalid=True))
    d = Picture("1--Handshaking", "1_Handshaking_2", canvas(4))
    row(d, 2, 176, 100)
    for i in range(3):
        box, _ = paste(d.pixels, faces[next(order)], 100 + 60 * i, 600, 20)
        d.faces.append(Face(box, subsets=("hard",)))
    return [*out, a, b, c, d]


def _cells(rows: list[object]) -> np.ndarray:
    cells = np.empty((len(rows), 1), dtype=object)
    for i, value in enumerate(rows):
        cells[i, 0] = value
    return cells


def write(root: Path, pics: list[Picture], *, mats: bool = True, txt: bool = True) -> None:
    """WIDER_val/images/<event>/<name>.jpg, wider_face_split/ (val .mat and the text list),
    eval_tools/ground_truth/wider_<subset>_val.mat, WIDER_val/label.txt (landmarks)."""
    for p in pics:
        path = root / "WIDER_val" / "images" / p.event / f"{p.name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(np.stack([p.pixels] * 3, axis=-1), "JPEG", quality=92))
    split = root / "wider_face_split"
    split.mkdir(parents=True, exist_ok=True)
    events = list(dict.fromkeys(p.event for p in pics))
    by_event = [[p for p in pics if p.event == e] for e in events]
    if mats:
        boxes = [
            _cells([np.array([f.box for f in p.faces]).reshape(-1, 4) for p in ps])
            for ps in by_event
        ]
        scipy.io.savemat(
            split / "wider_face_val.mat",
            {
                "event_list": _cells(events),
                "file_list": _cells([_cells([p.name for p in ps]) for ps in by_event]),
                "face_bbx_list": _cells(boxes),
                "invalid_label_list": _cells(
                    [
                        _cells([np.array([[int(f.invalid)] for f in p.faces]) for p in ps])
                        for ps in by_event
                    ]
                ),
            },
        )
        tools = root / "eval_tools" / "ground_truth"
        tools.mkdir(parents=True, exist_ok=True)
        for subset in SUBSETS:
            kept = [
                _cells(
                    [
                        np.array([[i + 1] for i, f in enumerate(p.faces) if subset in f.subsets])
                        for p in ps
                    ]
                )
                for ps in by_event
            ]
            scipy.io.savemat(tools / f"wider_{subset}_val.mat", {"gt_list": _cells(kept)})
    if txt:
        lines = []
        for p in pics:
            lines += [f"{p.event}/{p.name}.jpg", str(len(p.faces))]
            for f in p.faces:
                x, y, w, h = f.box
                lines.append(f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} 0 0 0 {int(f.invalid)} 0 0 ")
            if not p.faces:
                lines.append("0 0 0 0 0 0 0 0 0 0 ")
        (split / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    labels = []
    for p in pics:
        labels.append(f"# {p.event}/{p.name}.jpg")
        for f in p.faces:
            x, y, w, h = f.box
            marks = (
                " ".join(f"{px:.2f} {py:.2f} 0.0" for px, py in f.points) + " 0.9"
                if f.points is not None
                else " ".join(["-1.0"] * 15) + " -1.0"
            )
            labels.append(f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {marks}")
    (root / "WIDER_val" / "label.txt").write_text("\n".join(labels) + "\n")
