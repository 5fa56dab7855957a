"""Aligned crops: the eyes of a face with known landmarks land on the template's eyes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from facestream.common.contract.schema import Face, ImageEvent, Limits, Result, decode_event
from facestream.common.imaging.align import (
    CROP_SIZE,
    TEMPLATE,
    CropCaps,
    faces_with_crops,
    similarity,
)


def _photo_with_landmarks(
    angle_deg: float, scale: float, shift: tuple[float, float]
) -> tuple[bytes, list[list[float]]]:
    """A grey photo with a red dot on the left eye and a blue one on the right: the template's
    points rotated, scaled and moved by a known similarity."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    kps = (scale * TEMPLATE @ rot.T + np.array(shift)).tolist()
    img = Image.new("RGB", (640, 480), (128, 128, 128))
    pen = ImageDraw.Draw(img)
    radius = 2.5 * scale
    for (x, y), colour in zip(kps[:2], [(255, 0, 0), (0, 0, 255)], strict=True):
        pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue(), kps


def _centroid(px: np.ndarray, channel: int) -> tuple[float, float]:
    others = [c for c in range(3) if c != channel]
    mask = (px[..., channel] > 180) & (px[..., others].max(axis=-1) < 110)
    ys, xs = np.nonzero(mask)
    assert len(xs), "the dot is not in the crop"
    # +0.5: a pixel's centre, the coordinates' convention (pixel i covers [i, i+1)).
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def test_similarity_recovers_a_known_transform() -> None:
    a = math.radians(30)
    m = np.array([[2 * math.cos(a), -2 * math.sin(a), 10], [2 * math.sin(a), 2 * math.cos(a), -5]])
    dst = TEMPLATE @ m[:, :2].T + m[:, 2]
    assert np.allclose(similarity(TEMPLATE, dst), m, atol=1e-9)


def test_the_eyes_land_within_2_px_of_the_template() -> None:
    for angle, scale, shift in [(0, 1.0, (0, 0)), (17, 2.6, (220, 40)), (-35, 1.7, (300, 200))]:
        image, kps = _photo_with_landmarks(angle, scale, shift)
        face = Face([0, 0, 1, 1], 0.9, kps)
        (with_crop,), omitted = faces_with_crops(image, [face], 10_000_000)
        assert omitted == 0
        assert face.crop is None  # the given face is left alone (results share it)
        assert with_crop.crop is not None
        crop = Image.open(io.BytesIO(with_crop.crop))
        assert crop.format == "JPEG" and crop.size == (CROP_SIZE, CROP_SIZE)
        px = np.asarray(crop.convert("RGB")).astype(int)
        for channel, eye in ((0, TEMPLATE[0]), (2, TEMPLATE[1])):
            x, y = _centroid(px, channel)
            assert math.dist((x, y), eye) <= 2.0, (angle, scale, (x, y), eye)


def test_crops_travel_in_results_never_in_the_cache_or_by_default() -> None:
    face = Face([1, 2, 3, 4], 0.5, [[0, 0]] * 5, crop=b"\xff\xd8jpeg")
    result = Result(id="a", model="m", consumer="c", entry="1-0", done_ms=1, faces=[face])
    assert result.to_dict()["faces"][0]["crop"] == b"\xff\xd8jpeg"
    assert "crop" not in face.to_wire()  # what pack_faces caches: coordinates only
    plain = ImageEvent("a", b"\xff\xd8\xff")
    assert b"crops" not in plain.to_wire()  # old readers see the event they know
    assert decode_event(plain.to_wire(), Limits()).crops is False
    asked = ImageEvent("a", b"\xff\xd8\xff", crops=True)
    assert decode_event(asked.to_wire(), Limits()).crops is True
    # `crops_omitted` only where crops were asked for: other results are as they were.
    assert "crops_omitted" not in result.to_dict()
    result.crops_omitted = 2
    assert result.to_dict()["crops_omitted"] == 2


def _many_faces(n: int) -> tuple[bytes, list[Face]]:
    """A 1280x960 photo and `n` faces on it (the template moved around a grid)."""
    img = Image.effect_noise((1280, 960), 60).convert("RGB")  # noise: crops of real size
    out = io.BytesIO()
    img.save(out, "PNG")
    faces = []
    for i in range(n):
        shift = np.array([(i % 10) * 120 + 10, (i // 10) * 120 + 10])
        kps = (TEMPLATE + shift).tolist()
        faces.append(Face([*shift.tolist(), *(shift + 112).tolist()], 0.9 - i / 1000, kps))
    return out.getvalue(), faces


def test_crops_are_capped_in_count_and_bytes_and_the_rest_counted() -> None:
    image, faces = _many_faces(30)
    cut, omitted = faces_with_crops(image, faces, 10_000_000, CropCaps(max_crops=8))
    assert len(cut) == 30 and omitted == 22
    assert all(f.crop for f in cut[:8]) and not any(f.crop for f in cut[8:])
    # Coordinates are kept for every face, in the order given.
    assert [f.box for f in cut] == [f.box for f in faces]
    sizes = [len(f.crop or b"") for f in cut[:8]]
    budget = sum(sizes[:3]) + sizes[3] // 2  # room for three crops and half of the fourth
    cut, omitted = faces_with_crops(image, faces, 10_000_000, CropCaps(64, budget))
    assert [bool(f.crop) for f in cut[:4]] == [True, True, True, False] and omitted == 27
    assert sum(len(f.crop or b"") for f in cut) <= budget
    # No crop allowed: nothing is decoded (bytes that are no image do not fail).
    cut, omitted = faces_with_crops(b"not an image", faces, 10_000_000, CropCaps(0, 1 << 20))
    assert omitted == 30 and not any(f.crop for f in cut)
