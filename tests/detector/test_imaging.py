"""Image decoding: formats, limits checked before decode, orientation, scaling."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facestream.common.contract.imagetypes import sniff_format
from facestream.common.contract.schema import ErrorCode, SchemaError
from facestream.common.imaging.drawing import draw_faces
from facestream.common.imaging.photo import open_oriented, to_rgb8
from facestream.detector.imaging import decode_image, fit_size, image_size
from tests.conftest import encode
from tests.support.bombs import png_chunk, png_with_chunk_before_iend
from tests.support.faces import detect, iou

BIG = 1 << 30


def decode(data: bytes, max_side: int | None = 640, **kw: int) -> object:
    return decode_image(
        data,
        max_bytes=kw.get("max_bytes", BIG),
        max_pixels=kw.get("max_pixels", BIG),
        max_side=max_side,
        upscale=False,
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_allowed_formats_decode(photos: dict[str, np.ndarray], fmt: str) -> None:
    data = encode(photos["astronaut"], fmt)
    assert sniff_format(data) == fmt
    img = decode(data)
    assert (img.width, img.height) == (512, 512)
    assert img.pixels.shape == (512, 512, 3) and img.pixels.dtype == np.uint8


def test_greyscale_becomes_rgb(photos: dict[str, np.ndarray]) -> None:
    img = decode(encode(photos["camera"]))
    assert img.pixels.shape == (512, 512, 3)


def test_gif_and_text_are_refused(photos: dict[str, np.ndarray]) -> None:
    for data in (encode(photos["astronaut"], "GIF"), b"hello world, not an image"):
        with pytest.raises(SchemaError) as info:
            decode(data)
        assert info.value.code == ErrorCode.UNDECODABLE


def test_truncated_and_corrupt(photos: dict[str, np.ndarray]) -> None:
    jpeg = encode(photos["astronaut"], "JPEG")
    for data in (jpeg[: len(jpeg) // 2], jpeg[:20], b"\x89PNG\r\n\x1a\n" + b"\0" * 50):
        with pytest.raises(SchemaError) as info:
            decode(data)
        assert info.value.code == ErrorCode.UNDECODABLE


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size and whose body is tiny: a decompression bomb's
    shape. The pixel cap must stop it from the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\0" * 100)
    idat_chunk = b"IDAT" + idat
    body += struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    return b"\x89PNG\r\n\x1a\n" + body


def test_pixel_cap_from_header() -> None:
    with pytest.raises(SchemaError) as info:
        decode(png_header_claiming(100_000, 100_000), max_pixels=40_000_000)
    assert info.value.code == ErrorCode.TOO_MANY_PIXELS
    assert "10000000000" in info.value.message or "100000x100000" in info.value.message
    with pytest.raises(SchemaError) as info:
        decode(png_header_claiming(8000, 6000), max_pixels=40_000_000)
    assert info.value.code == ErrorCode.TOO_MANY_PIXELS
    assert "8000x6000" in info.value.message


def test_byte_cap(photos: dict[str, np.ndarray]) -> None:
    with pytest.raises(SchemaError) as info:
        decode(encode(photos["astronaut"]), max_bytes=1000)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_large_jpeg_is_scaled_to_fit(photos: dict[str, np.ndarray]) -> None:
    big = np.asarray(Image.fromarray(photos["astronaut"]).resize((2000, 1500)))
    img = decode(encode(big, "JPEG"))
    assert (img.width, img.height) == (2000, 1500)
    assert img.pixels.shape == (480, 640, 3)
    assert img.scale_x == pytest.approx(0.32) and img.scale_y == pytest.approx(0.32)


def test_exif_orientation_applied(photos: dict[str, np.ndarray]) -> None:
    tall = photos["astronaut"][:, :300]  # 300 wide, 512 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displays after a 90 degree turn
    buf = io.BytesIO()
    Image.fromarray(tall).save(buf, "JPEG", exif=exif.tobytes())
    img = decode(buf.getvalue())
    assert (img.width, img.height) == (512, 300)
    assert img.pixels.shape == (300, 512, 3)


def test_fit_size() -> None:
    assert fit_size(1280, 960, 640, upscale=False) == (640, 480)
    assert fit_size(320, 240, 640, upscale=False) == (320, 240)
    assert fit_size(320, 240, 640, upscale=True) == (640, 480)
    assert fit_size(320, 240, None, upscale=True) == (320, 240)


def test_mmcv_resize_rule_rounds_halves_up() -> None:
    # 1280 x 641 to fit 640: 320.5 rows, which mmcv makes 321 and round() would make 320.
    assert fit_size(1280, 641, 640, upscale=True, rule="mmcv") == (640, 321)
    assert fit_size(1280, 641, 640, upscale=True) == (640, 320)
    assert fit_size(320, 240, (640, 640), upscale=True, rule="mmcv") == (640, 480)


def test_mmcv_resize_equals_opencv_on_float32(photos: dict[str, np.ndarray]) -> None:
    """ModelScope's Resize is cv2.resize(INTER_LINEAR) on the float32 image; ours is numpy."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference here only")
    big = np.asarray(Image.fromarray(photos["astronaut"]).resize((3072, 2304)))
    img = decode_image(
        encode(big, "JPEG", quality=95),
        max_bytes=BIG,
        max_pixels=BIG,
        max_side=640,
        upscale=True,
        resize="mmcv",
    )
    assert img.pixels.shape == (480, 640, 3) and img.pixels.dtype == np.float32
    full = np.asarray(Image.open(io.BytesIO(encode(big, "JPEG", quality=95))).convert("RGB"))
    ref = cv2.resize(full.astype(np.float32), (640, 480), interpolation=cv2.INTER_LINEAR)
    assert float(np.max(np.abs(img.pixels - ref))) < 1e-3
    small = decode_image(
        encode(photos["coffee"]),
        max_bytes=BIG,
        max_pixels=BIG,
        max_side=640,
        upscale=True,
        resize="mmcv",
    )
    up = cv2.resize(photos["coffee"].astype(np.float32), (640, 427), interpolation=cv2.INTER_LINEAR)
    assert small.pixels.shape == (427, 640, 3) and float(np.max(np.abs(small.pixels - up))) < 1e-3


# --- one orientation rule, one depth rule (issue #25) ------------------------------------------

# How an upright picture is stored so that its EXIF orientation turns it back upright.
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}


def stored_with_orientation(upright: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    stored = Image.fromarray(upright).transpose(STORED[orientation])
    stored.save(buf, fmt, exif=exif.tobytes(), **options)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
@pytest.mark.parametrize("orientation", [6, 3])
def test_orientation_is_applied_for_every_format(
    photos: dict[str, np.ndarray], builtin_model: Any, fmt: str, orientation: int
) -> None:
    """The face is found where it is upright, in an upright-sized frame, whatever the format."""
    upright = photos["grace_hopper"]  # 512 wide, 600 high, one face
    data = stored_with_orientation(upright, orientation, fmt)
    img = decode(data)
    assert (img.width, img.height) == (512, 600)
    assert image_size(data) == (512, 600)
    want = detect(
        builtin_model, encode(upright, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    )
    got = detect(builtin_model, data)
    assert len(want) == 1 and len(got) == 1
    assert iou(got[0].box, want[0].box) > 0.9
    # The gateway's crops and drawings open it the same way.
    assert open_oriented(data, BIG).size == (512, 600)
    assert Image.open(io.BytesIO(draw_faces(data, [], BIG))).size == (512, 600)


def test_mpo_orientation_and_draft(photos: dict[str, np.ndarray]) -> None:
    """Pillow opens a JPEG with a multi-picture index as MPO: oriented and drafted as a JPEG."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(photos["grace_hopper"]).transpose(Image.Transpose.ROTATE_90)
    buf = io.BytesIO()
    stored.save(buf, "MPO", save_all=True, append_images=[stored], exif=exif.tobytes())
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert image_size(data) == (512, 600)
    img = decode(data, max_side=300)
    assert (img.width, img.height) == (512, 600) and img.pixels.shape == (300, 256, 3)
    assert open_oriented(data, BIG).size == (512, 600)


def test_header_size_is_refused_over_the_budget() -> None:
    """image_size runs on the detector's event loop: a flood of segments gets None at once."""
    jpeg = encode(np.zeros((8, 8, 3), np.uint8), "JPEG")
    assert image_size(jpeg) == (8, 8)
    assert image_size(jpeg[:2] + b"\xff\xfe\x00\x02" * 70_000 + jpeg[2:]) is None


def test_png_exif_after_the_pixels_counts_in_the_header_size(photos: dict[str, np.ndarray]) -> None:
    """Some writers put eXIf after IDAT, where Pillow sees it only after decoding."""
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = photos["astronaut"][:, :300]  # 300 wide, 512 high
    late = png_with_chunk_before_iend(encode(tall), png_chunk(b"eXIf", exif.tobytes()))
    assert image_size(late) == (512, 300)
    img = decode(late)
    assert (img.width, img.height) == (512, 300) and img.pixels.shape == (300, 512, 3)


def test_sixteen_bit_grey_is_scaled_not_clipped(
    photos: dict[str, np.ndarray], builtin_model: Any
) -> None:
    grey = photos["camera"]  # one face
    wide = encode(grey.astype(np.uint16) * 257)  # the same picture at 16 bits
    assert Image.open(io.BytesIO(wide)).mode == "I;16"
    img = decode(wide, max_side=None)
    assert np.array_equal(img.pixels[..., 0], grey)
    want, got = detect(builtin_model, encode(grey)), detect(builtin_model, wide)
    assert len(want) == 1 and len(got) == 1 and iou(got[0].box, want[0].box) > 0.99
    assert np.array_equal(np.asarray(open_oriented(wide, BIG))[..., 0], grey)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16B", [0, 257 * 100, 65535], [0, 100, 255]),
        ("I", [0, 257 * 100, 65535], [0, 100, 255]),
        ("I", [0, 100, 255], [0, 100, 255]),
        ("I", [-1000, 0, 1000], [0, 128, 255]),
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),
    ],
)
def test_wide_pixels_scale_to_eight_bits(
    mode: str, values: list[float], expected: list[int]
) -> None:
    dtype = {"I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    img = Image.frombytes(mode, (3, 1), np.array(values, dtype=dtype).tobytes())
    out = np.asarray(to_rgb8(img))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == expected


def test_transparency_is_over_white(photos: dict[str, np.ndarray]) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black ...
    rgba[:2, :, :] = (10, 20, 30, 255)  # ... under an opaque top half
    png = encode(rgba)
    px = decode(png).pixels
    assert px[0, 0].tolist() == [10, 20, 30] and px[3, 3].tolist() == [255, 255, 255]
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert np.asarray(to_rgb8(la))[3, 3].tolist() == [255, 255, 255]
    pal = Image.fromarray(photos["coffee"][:8, :8]).quantize(4)
    pal.info["transparency"] = 0
    out = np.asarray(to_rgb8(pal))
    assert (out[np.asarray(pal) == 0] == 255).all()
