"""Image bytes -> RGB pixels scaled to fit the model, with every limit checked before decoding.

Pillow, not OpenCV: it reads the pixel size from the header without decoding (so the pixel cap
stops decompression bombs before any allocation), takes an explicit format allow-list, and its
JPEG draft mode decodes large photos directly at 1/2, 1/4 or 1/8 scale (libjpeg-turbo's DCT
scaling), which is most of the decode cost saved when the model only needs 640 px.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from facestream.common.contract.imagetypes import ALLOWED_FORMATS, sniff_format
from facestream.common.contract.schema import ErrorCode, SchemaError
from facestream.detector.model.resize import ResizeRule, bilinear_float, fit_size
from facestream.detector.model.types import DecodedImage

_EXIF_SWAPS_AXES = {5, 6, 7, 8}
__all__ = ["ResizeRule", "decode_image", "fit_size", "image_size"]


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height (after EXIF orientation) from the header alone; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            turned = img.format == "JPEG" and img.getexif().get(0x0112, 1) in _EXIF_SWAPS_AXES
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return (h, w) if turned else (w, h)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int | tuple[int, int] | None,
    upscale: bool,
    resize: ResizeRule = "pillow",
) -> DecodedImage:
    if len(data) > max_bytes:
        raise SchemaError(ErrorCode.TOO_LARGE, f"image is {len(data)} bytes, limit {max_bytes}")
    if sniff_format(data) is None:
        raise SchemaError(ErrorCode.UNDECODABLE, "not a JPEG, PNG, WebP or BMP image")
    try:
        with warnings.catch_warnings():
            # Our own pixel cap applies; Pillow's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = img.format
            raw_w, raw_h = img.size
            if raw_w <= 0 or raw_h <= 0:
                raise SchemaError(ErrorCode.UNDECODABLE, "image has no pixels")
            if raw_w * raw_h > max_pixels:
                raise SchemaError(
                    ErrorCode.TOO_MANY_PIXELS,
                    f"image is {raw_w}x{raw_h} = {raw_w * raw_h} pixels, limit {max_pixels}",
                )
            orientation = img.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
            width, height = (raw_h, raw_w) if orientation in _EXIF_SWAPS_AXES else (raw_w, raw_h)
            target = fit_size(width, height, max_side, upscale, resize)
            if fmt == "JPEG" and target != (width, height) and resize == "pillow":
                draft_target = target if orientation not in _EXIF_SWAPS_AXES else target[::-1]
                img.draft("RGB", draft_target)
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            if img.size == target:
                pixels = np.asarray(img)
            elif resize == "mmcv":
                pixels = bilinear_float(np.asarray(img), target[0], target[1])
            else:
                pixels = np.asarray(img.resize(target, Image.Resampling.BILINEAR))
    except SchemaError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at open for sizes far past its limit (and ours).
        raise SchemaError(ErrorCode.TOO_MANY_PIXELS, str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise SchemaError(ErrorCode.UNDECODABLE, f"cannot decode image: {exc}") from None
    return DecodedImage(pixels, width, height, target[0] / width, target[1] / height)
