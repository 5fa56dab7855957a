"""The real photos `facestream model quantize builtin` calibrates on and checks against.

Every face photo the installed packages ship, never a download: scikit-image's and
matplotlib's sample photos (the `demo` extra, facestream.control.samples), the rest of
scikit-image's 100 LFW faces as four more mosaics, and InsightFace's sample photos when the
insightface package is installed (the dev extra pins it; read as files, never imported). Each
photo four times: as shipped, mirrored, and both again at a quarter of the size, because
small faces are where an int8 copy loses them first (docs/models.md, "builtin-int8").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facestream.control.samples import sample_pixels

LFW_MOSAICS = 5  # scikit-image's lfw_subset: 100 faces, then 100 non-faces
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def lfw_mosaic(index: int) -> np.ndarray:
    """Faces [20 * index, 20 * index + 20) of lfw_subset tiled as samples.lfw_mosaic tiles the
    first twenty (index 0 is that mosaic)."""
    import skimage.data

    data: Any = skimage.data  # untyped package
    faces = (data.lfw_subset()[20 * index : 20 * index + 20] * 255).astype(np.uint8)
    tiles = np.array(
        [np.asarray(Image.fromarray(f).resize((128, 128), Image.Resampling.BICUBIC)) for f in faces]
    )
    return tiles.reshape(4, 5, 128, 128).transpose(0, 2, 1, 3).reshape(512, 640)


def insightface_photos() -> dict[str, np.ndarray]:
    """insightface/data/images/* when insightface is installed; {} otherwise. Located with
    find_spec: importing insightface would import its whole model zoo."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        return {}
    folder = Path(spec.origin).parent / "data" / "images"
    if not folder.is_dir():
        return {}
    return {
        f"insightface_{path.stem}": np.asarray(Image.open(path).convert("RGB"))
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in PHOTO_SUFFIXES
    }


def originals() -> dict[str, np.ndarray]:
    """name -> pixels (RGB or greyscale uint8) of every photo above, as shipped. Raises
    control.samples.SamplesUnavailable without the demo extra."""
    photos = dict(sample_pixels())
    for index in range(1, LFW_MOSAICS):
        photos[f"lfw_mosaic_{index + 1}"] = lfw_mosaic(index)
    photos.update(insightface_photos())
    return photos


def with_variants(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each photo, mirrored, at 25 % (Pillow's 4x4 box reduction) and at 25 % mirrored."""
    out: dict[str, np.ndarray] = {}
    for name, pixels in photos.items():
        quarter = np.asarray(Image.fromarray(pixels).reduce(4))
        out[name] = pixels
        out[f"{name}_mirrored"] = np.ascontiguousarray(pixels[:, ::-1])
        out[f"{name}_25pc"] = quarter
        out[f"{name}_25pc_mirrored"] = np.ascontiguousarray(quarter[:, ::-1])
    return out


def photo_set() -> dict[str, np.ndarray]:
    return with_variants(originals())
