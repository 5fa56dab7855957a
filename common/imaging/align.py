"""112x112 face crops aligned to the five-point template recognition models are trained on.

The template is the standard ArcFace one (left eye, right eye, nose, left and right mouth
corner, in 112x112 pixels). A similarity transform (rotation, uniform scale, translation; no
shear, so faces keep their proportions) is fitted from the template to the detected landmarks
by least squares (Umeyama's closed form), and Pillow samples the photo through it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facestream.common.contract.schema import Face
from facestream.common.imaging.photo import MAX_JPEG_SCANS, open_oriented
from facestream.common.log import get_logger

log = get_logger(__name__)

CROP_SIZE = 112
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
JPEG_QUALITY = 90


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the similarity transform that best maps `src` points onto `dst`
    (least squares): dst ~ M @ [x, y, 1]."""
    n = len(src)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    u, sv, vt = np.linalg.svd(dc.T @ sc / n)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: forbid it
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    var_s = float((sc**2).sum()) / n
    scale = float((sv * d).sum()) / var_s if var_s > 0 else 1.0
    shift = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, shift[:, None]])


def aligned_crop(photo: Image.Image, kps: Sequence[Sequence[float]]) -> Image.Image:
    """The face whose five landmarks are `kps` (photo pixels), aligned into CROP_SIZE^2."""
    points = np.asarray(kps, dtype=np.float64)[:5, :2]
    # Pillow's AFFINE maps each output pixel to where it samples the input: exactly the
    # transform from template space to photo space, so no inversion is needed.
    m = similarity(TEMPLATE, points)
    coeffs = (m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2])
    return photo.transform(
        (CROP_SIZE, CROP_SIZE),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
    )


def crop_jpeg(photo: Image.Image, kps: Sequence[Sequence[float]]) -> bytes:
    out = io.BytesIO()
    aligned_crop(photo, kps).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class CropCaps:
    """What one result's crops may add: at most `max_crops` crops and `max_bytes` of JPEG."""

    max_crops: int = 64
    max_bytes: int = 1024 * 1024


def crops_or_faces(
    image: bytes,
    faces: list[Face],
    max_pixels: int,
    caps: CropCaps | None,
    max_scans: int,
    about: str,
) -> tuple[list[Face], int]:
    """`faces_with_crops`, except that a failure returns the faces without crops (all counted
    as omitted) and logs why: a crop is an extra, its failure must not lose the answer.
    `about` names the result in the log line."""
    try:
        return faces_with_crops(image, faces, max_pixels, caps, max_scans)
    except Exception as exc:
        log.warning("crops_failed", result=about, reason=f"{type(exc).__name__}: {exc}")
        return faces, len(faces)


def faces_with_crops(
    image: bytes,
    faces: list[Face],
    max_pixels: int,
    caps: CropCaps | None = None,
    max_scans: int = MAX_JPEG_SCANS,
) -> tuple[list[Face], int]:
    """New Face objects carrying their crops (the given ones may be shared by other results
    and the cache write, so they are not changed), and how many faces were left without one.

    Crops are cut in the faces' order until either cap would be passed; the faces after that
    carry none (docs/contract.md, "Crops"). Decodes the image once at full size, and only when
    at least one crop will be cut: on a cache hit that decode is the whole cost of the crops.
    """
    caps = caps or CropCaps()
    if not faces:
        return faces, 0
    if caps.max_crops <= 0 or caps.max_bytes <= 0:
        return list(faces), len(faces)
    photo = open_oriented(image, max_pixels, max_scans)
    out: list[Face] = []
    used = 0
    for face in faces[: caps.max_crops]:
        crop = crop_jpeg(photo, face.kps)
        if used + len(crop) > caps.max_bytes:
            break
        used += len(crop)
        out.append(Face(face.box, face.score, face.kps, crop))
    omitted = len(faces) - len(out)
    return out + list(faces[len(out) :]), omitted
