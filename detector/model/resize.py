"""The size an image is scaled to, and bilinear resizing as OpenCV's INTER_LINEAR does it on
float32 pixels, in numpy.

mmcv resizes with cv2.resize on the float32 image (ModelScope's SCRFD / DamoFD pipeline), with
no antialiasing: each output pixel samples the two nearest source pixels per axis at
half-pixel-centred positions, edges replicated. OpenCV itself stays out of the detector (its
decoders are not limited the way Pillow's are, see detector/imaging.py), so this is the same
arithmetic written out; tests/detector/test_imaging.py pins it against cv2.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# "pillow": Pillow's antialiased bilinear on uint8, JPEG draft decoding (fast, the built-in
# model's reference). "mmcv": what mmcv's Resize (ModelScope's SCRFD / DamoFD pre-processing)
# does: sizes int(x * s + 0.5), a full decode, OpenCV-style bilinear on float32 pixels.
ResizeRule = Literal["pillow", "mmcv"]


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the weight of the high one, per output position."""
    # OpenCV's own order of operations: the scale is the inverse of dst / src, the position is
    # split into index and fraction in double precision, the fraction then kept as float32.
    scale = 1.0 / (dst / src)
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    low = np.floor(pos)
    frac = (pos - low).astype(np.float32)
    index = low.astype(np.int64)
    before = index < 0
    index[before], frac[before] = 0, 0.0
    after = index >= src - 1
    index[after], frac[after] = src - 1, 0.0
    return index, np.minimum(index + 1, src - 1), frac


def bilinear_float(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, c) pixels of any dtype -> (height, width, c) float32."""
    x0, x1, fx = _taps(pixels.shape[1], width)
    y0, y1, fy = _taps(pixels.shape[0], height)
    wx = fx[None, :, None]
    wy = fy[:, None, None]
    # Horizontal pass on the two source rows each output row needs, then the vertical one,
    # in float32: the order OpenCV computes in, so the rounding matches too.
    rows = []
    for ys in (y0, y1):
        band = pixels[ys]
        left = band[:, x0].astype(np.float32)
        right = band[:, x1].astype(np.float32)
        rows.append(left * (1.0 - wx) + right * wx)
    out: np.ndarray = rows[0] * (1.0 - wy) + rows[1] * wy
    return out.astype(np.float32, copy=False)


def fit_size(
    width: int,
    height: int,
    max_side: int | tuple[int, int] | None,
    upscale: bool,
    rule: ResizeRule = "pillow",
) -> tuple[int, int]:
    """The size an image is scaled to: fit `max_side` on the long side, or inside a
    (max width, max height) box for a graph with a fixed non-square input."""
    if max_side is None:
        return width, height
    if isinstance(max_side, tuple):
        scale = min(max_side[0] / width, max_side[1] / height)
    else:
        scale = max_side / max(width, height)
    if scale >= 1 and not upscale:
        return width, height
    if rule == "mmcv":
        # mmcv's rescale_size rounds halves up; Python's round() would round them to even.
        return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
    return max(1, round(width * scale)), max(1, round(height * scale))
