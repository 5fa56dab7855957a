"""Sample photos for the demo and the tests, taken from installed packages (never downloaded):
scikit-image's data set and matplotlib's sample data (the `demo` extra installs both)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class SamplesUnavailable(RuntimeError):
    pass


def lfw_mosaic() -> np.ndarray:
    """20 real face photos (LFW, shipped by scikit-image) tiled 5 x 4 into one 640 x 512 image:
    an image with many faces, at a size that needs neither scaling nor padding."""
    import skimage.data

    data: Any = skimage.data  # untyped package
    faces: np.ndarray = (data.lfw_subset()[:20] * 255).astype(np.uint8)
    tiles = np.array(
        [np.asarray(Image.fromarray(f).resize((128, 128), Image.Resampling.BICUBIC)) for f in faces]
    )
    return tiles.reshape(4, 5, 128, 128).transpose(0, 2, 1, 3).reshape(512, 640)


def sample_pixels() -> dict[str, np.ndarray]:
    """name -> RGB or greyscale uint8 pixels."""
    try:
        import matplotlib.cbook
        import skimage.data
    except ImportError as exc:
        raise SamplesUnavailable(
            "sample photos need scikit-image and matplotlib "
            f"(pip install 'facestream[demo]'): {exc}"
        ) from None
    grace = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    data: Any = skimage.data  # untyped package
    return {
        "astronaut": data.astronaut(),  # one face, colour
        "camera": data.camera(),  # one face, greyscale
        "grace_hopper": np.asarray(Image.open(grace).convert("RGB")),  # one face, 512 x 600
        "lfw_mosaic": lfw_mosaic(),  # twenty faces
        "coffee": data.coffee(),  # no face
    }


def encode(pixels: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **options)
    return buf.getvalue()


def sample_photos() -> dict[str, bytes]:
    """name -> encoded image bytes (PNG: lossless, so the pixels are exactly the package's)."""
    return {name: encode(px) for name, px in sample_pixels().items()}


def write_samples(directory: Path) -> list[Path]:
    """The sample photos as PNG files in `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in sample_photos().items():
        path = directory / f"{name}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
