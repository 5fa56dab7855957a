"""Image bytes -> RGB pixels scaled to fit the model, with every limit checked before decoding.

Pillow, not OpenCV: it reads the pixel size from the header without decoding (so the pixel cap
stops decompression bombs before any allocation), takes an explicit format allow-list, and its
JPEG draft mode decodes large photos directly at 1/2, 1/4 or 1/8 scale (libjpeg-turbo's DCT
scaling), which is most of the decode cost saved when the model only needs 640 px. Opening,
the decode budget, orientation and bit depth are common/imaging/photo.py's, shared with the
gateway's crops and drawings, so all agree on the frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facestream.common.contract.schema import ErrorCode, SchemaError
from facestream.common.imaging.photo import (
    JPEG_FAMILY,
    MAX_JPEG_SCANS,
    PhotoError,
    header_orientation,
    image_size,
    open_checked,
    upright_rgb8,
    upright_size,
)
from facestream.detector.model.resize import ResizeRule, bilinear_float, fit_size
from facestream.detector.model.types import DecodedImage

__all__ = ["ResizeRule", "decode_image", "fit_size", "image_size"]


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int | tuple[int, int] | None,
    upscale: bool,
    resize: ResizeRule = "pillow",
    max_scans: int = MAX_JPEG_SCANS,
) -> DecodedImage:
    if len(data) > max_bytes:
        raise SchemaError(ErrorCode.TOO_LARGE, f"image is {len(data)} bytes, limit {max_bytes}")
    try:
        img = open_checked(data, max_pixels, max_scans)
        raw_w, raw_h = img.size
        if img.format in JPEG_FAMILY and resize == "pillow":
            # A JPEG's orientation is in its header, so the draft size can be known up front.
            turn = header_orientation(img, data)
            width, height = upright_size(raw_w, raw_h, turn)
            target = fit_size(width, height, max_side, upscale, resize)
            if target != (width, height):
                img.draft("RGB", upright_size(*target, turn))
        upright, orientation = upright_rgb8(img)
        width, height = upright_size(raw_w, raw_h, orientation)
        target = fit_size(width, height, max_side, upscale, resize)
        if upright.size == target:
            pixels = np.asarray(upright)
        elif resize == "mmcv":
            pixels = bilinear_float(np.asarray(upright), target[0], target[1])
        else:
            pixels = np.asarray(upright.resize(target, Image.Resampling.BILINEAR))
    except PhotoError as exc:
        raise SchemaError(exc.code, str(exc)) from None
    except (OSError, ValueError) as exc:  # the resize of pixels Pillow could not finish
        raise SchemaError(ErrorCode.UNDECODABLE, f"cannot decode image: {exc}") from None
    return DecodedImage(pixels, width, height, target[0] / width, target[1] / height)
