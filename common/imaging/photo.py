"""Image bytes -> upright 8-bit RGB pixels, the one way every service decodes them.

The detector (detector/imaging.py, which adds JPEG draft scaling and the model's resize), the
gateway's crops (common/imaging/align.py) and /v1/draw (common/imaging/drawing.py) all open images
here, so all three agree on:

- the budget, checked before anything is decoded: an allowed format by its magic bytes, the
  structure within budget (common/imaging/budget.py: JPEG scans, segment and chunk counts, no
  RLE BMP) and the pixel cap from the header;
- one orientation rule: the EXIF orientation Pillow reads (from JPEG, MPO, PNG and WebP alike;
  from XMP where there is no EXIF tag) is applied whatever the format, and sizes are reported
  after it;
- one depth rule: 16-bit and 32-bit pixels are scaled to 8 bits (never clipped), transparency
  is composited over white.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from facestream.common.contract.imagetypes import sniff_format
from facestream.common.contract.schema import ErrorCode, without_reprs
from facestream.common.imaging.budget import decode_cost_problem, png_exif

# Default of FACESTREAM_MAX_JPEG_SCANS (common/settings.py): callers without settings get it.
MAX_JPEG_SCANS = 100
ORIENTATION_TAG = 0x0112
SWAPS_AXES = frozenset({5, 6, 7, 8})
JPEG_FAMILY = frozenset({"JPEG", "MPO"})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What Pillow raises on bytes it cannot read.
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "the header is not readable"
    return without_reprs(str(exc)).strip() or type(exc).__name__


@contextmanager
def _quiet() -> Iterator[None]:
    """Pillow warns about hostile input (bomb-sized headers, thousands of bad EXIF tags in one
    image); the outcome is in the result, so the warnings are dropped rather than logged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class PhotoError(ValueError):
    """The bytes cannot be opened as an allowed image within the budget; `code` is the result's
    error code (docs/contract.md)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.UNDECODABLE) -> None:
        super().__init__(message)
        self.code = code


def open_checked(data: bytes, max_pixels: int, max_scans: int = MAX_JPEG_SCANS) -> Image.Image:
    """The image opened (header read, no pixel decoded yet) once every check that can be made
    before decoding has passed. Raises PhotoError."""
    fmt = sniff_format(data)
    if fmt is None:
        raise PhotoError("not a JPEG, PNG, WebP or BMP image")
    problem = decode_cost_problem(data, fmt, max_scans)
    if problem is not None:
        raise PhotoError(f"{problem}: refused before decoding", ErrorCode.TOO_COMPLEX)
    try:
        with _quiet():
            img = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at open for sizes far past its limit (and ours).
        raise PhotoError(str(exc), ErrorCode.TOO_MANY_PIXELS) from None
    except _UNREADABLE as exc:
        raise PhotoError(f"cannot decode {fmt} image: {_reason(exc)}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise PhotoError("image has no pixels")
    if w * h > max_pixels:
        raise PhotoError(
            f"image is {w}x{h} = {w * h} pixels, limit {max_pixels}", ErrorCode.TOO_MANY_PIXELS
        )
    return img


def _tag(value: object) -> int:
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def header_orientation(img: Image.Image, data: bytes) -> int:
    """The EXIF orientation (1..8) without decoding pixels. A PNG may carry its eXIf chunk after
    the pixel data, where Pillow only looks after decoding: that one is read from the bytes."""
    try:
        with _quiet():
            if img.format == "PNG" and "exif" not in img.info:
                payload = png_exif(data)
                if payload is not None:
                    exif = Image.Exif()
                    exif.load(payload)
                    return _tag(exif.get(ORIENTATION_TAG))
            return _tag(img.getexif().get(ORIENTATION_TAG))
    except _UNREADABLE:
        return 1  # an unreadable EXIF block orients nothing, as in orient()


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in SWAPS_AXES else (width, height)


def orient(img: Image.Image) -> tuple[Image.Image, int]:
    """The decoded image turned upright by its EXIF orientation, and that orientation."""
    img.load()
    try:
        orientation = _tag(img.getexif().get(ORIENTATION_TAG))
    except _UNREADABLE:
        orientation = 1
    if orientation == 1:
        return img, 1
    return img.transpose(_TRANSPOSE[orientation]), orientation


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16- and 32-bit single-channel pixels as 8-bit L, scaled by their depth: I;16 (and an I
    image within 0..65535) keeps its high byte, values within 0..255 stay as they are (a float
    image within 0..1 is scaled by 255), anything else (negative, past 16 bits) is stretched
    from its minimum to its maximum. None of the accepted formats decodes to I or F today
    (Pillow reads 16-bit PNG grey as I;16, other 16-bit PNGs straight to 8 bits)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray((a >> 8).astype(np.uint8))
    finite = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(finite.min()), float(finite.max())
    if img.mode == "F" and lo >= 0 and hi <= 1:
        out = finite * 255
    elif lo >= 0 and hi <= 255:
        out = finite
    elif lo >= 0 and hi <= 65535 and img.mode == "I":
        out = np.floor(finite / 256)
    else:
        out = (finite - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(finite)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def to_rgb8(img: Image.Image) -> Image.Image:
    """Decoded pixels of any mode as 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _wide_to_l(img).convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        lowest = img.getchannel("A").getextrema()[0]
        if isinstance(lowest, int) and lowest < 255:
            # Over white, as a viewer shows it: what is under transparent pixels is arbitrary.
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def upright_rgb8(img: Image.Image) -> tuple[Image.Image, int]:
    """An opened image decoded, turned upright and made 8-bit RGB; the orientation applied.
    Raises PhotoError when the pixels cannot be decoded."""
    try:
        with _quiet():
            upright, orientation = orient(img)
            return to_rgb8(upright), orientation
    except _UNREADABLE as exc:
        raise PhotoError(f"cannot decode {img.format or 'the'} image: {_reason(exc)}") from None


def open_oriented(data: bytes, max_pixels: int, max_scans: int = MAX_JPEG_SCANS) -> Image.Image:
    """Upright 8-bit RGB pixels at full size: the frame results are reported in (the detector
    measures the same way). Every check is made before anything is decoded."""
    return upright_rgb8(open_checked(data, max_pixels, max_scans))[0]


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height after EXIF orientation, from the header alone; None if unreadable or
    over the decode budget. Cheap enough for an event loop: Pillow reads the segments before the
    pixel data in Python, and the budget check bounds how many there are."""
    fmt = sniff_format(data)
    if fmt is None or decode_cost_problem(data, fmt, MAX_JPEG_SCANS, header_only=True):
        return None
    try:
        with _quiet():
            img = Image.open(io.BytesIO(data), formats=(fmt,))
            w, h = img.size
    except (*_UNREADABLE, Image.DecompressionBombError):
        return None
    return upright_size(w, h, header_orientation(img, data))
