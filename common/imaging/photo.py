"""An image's pixels in the frame its face coordinates are in."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from facestream.common.contract.imagetypes import ALLOWED_FORMATS


class PhotoError(ValueError):
    """The bytes cannot be opened as an allowed image within the pixel limit."""


def open_oriented(data: bytes, max_pixels: int) -> Image.Image:
    """RGB pixels at full size, EXIF orientation applied: the frame results are reported in
    (detector/imaging.py measures the same way). The pixel cap is checked from the header,
    before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w <= 0 or h <= 0 or w * h > max_pixels:
                raise PhotoError(f"image is {w}x{h} pixels, limit {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img)
            return img if img.mode == "RGB" else img.convert("RGB")
    except PhotoError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise PhotoError(f"cannot decode image: {exc}") from None
