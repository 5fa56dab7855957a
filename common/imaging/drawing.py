"""Faces drawn on their photo: boxes, the five landmarks and scores, as a JPEG.

Shared by `facestream detect --draw` (control/client.py) and `POST /v1/draw` (the gateway),
which both hold the image bytes and the result's JSON-shaped faces; the drawing never detects
anything itself.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import ImageDraw, ImageFont

from facestream.common.imaging.photo import MAX_JPEG_SCANS, open_oriented

BOX = (0, 255, 102)
# Left eye, right eye, nose, left and right mouth corner: a colour each, so a swapped pair
# of landmarks shows at a glance.
LANDMARKS = ((255, 64, 64), (64, 128, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
JPEG_QUALITY = 92


def draw_faces(
    image: bytes,
    faces: Sequence[Mapping[str, Any]],
    max_pixels: int,
    max_scans: int = MAX_JPEG_SCANS,
) -> bytes:
    """`image` (any allowed format) as a JPEG of the same size with `faces` drawn on it, upright
    (common/imaging/photo.py: the frame the faces were measured in). Raises PhotoError when the
    bytes cannot be opened within the decode budget."""
    photo = open_oriented(image, max_pixels, max_scans)
    pen = ImageDraw.Draw(photo)
    # Lines and labels scale with the photo, so both a thumbnail and a 24 MP shot read well.
    line = max(2, round(min(photo.size) / 320))
    font = ImageFont.load_default(size=max(10, line * 6))
    for face in faces:
        x1, y1, x2, y2 = (float(v) for v in face["box"][:4])
        pen.rectangle((x1, y1, x2, y2), outline=BOX, width=line)
        radius = line + 1
        for (px, py), colour in zip(face.get("kps") or [], LANDMARKS, strict=False):
            pen.ellipse((px - radius, py - radius, px + radius, py + radius), fill=colour)
        label = f"{float(face['score']):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        height = bottom - top + 2 * line
        # Above the box when there is room, else just inside its top edge.
        ty = y1 - height if y1 - height >= 0 else y1
        pen.rectangle((x1, ty, x1 + right - left + 2 * line, ty + height), fill=BOX)
        pen.text((x1 + line, ty + line - top), label, fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
