"""Images that are cheap to send and expensive to decode, made by the tests (issue #25)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def scan_bomb(scans: int = 20_000, size: tuple[int, int] = (2000, 1500)) -> bytes:
    """A valid progressive JPEG whose last scan (a luma AC refinement, 15 bytes) is repeated
    `scans` times: about 300 KB that libjpeg decodes in ~1.6 ms a scan at 2000x1500 (~30 s for
    20,000 scans). libjpeg only warns about the repeated refinement and decodes every one."""
    buf = io.BytesIO()
    Image.new("RGB", size, (128, 120, 110)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    # Entropy-coded data never holds 0xFFDA (0xFF is stuffed), so this is the last SOS marker.
    last = data.rindex(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + data[last:-2] * scans + b"\xff\xd9"


def jpeg_scans(data: bytes) -> int:
    """The SOS markers in a JPEG Pillow wrote (for checking the test's own files)."""
    return data.count(b"\xff\xda")


def rle8_bmp(width: int = 64, height: int = 64) -> bytes:
    """A BI_RLE8 BMP (Pillow decodes it in pure Python): rows of 2-pixel runs, 256 greys."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    rows = b""
    for y in range(height):
        for x in range(0, width, 2):
            rows += bytes((2, (x + y) % 256))
        rows += b"\x00\x00"  # end of line
    rows += b"\x00\x01"  # end of bitmap
    return _bmp(width, height, 8, 1, palette, rows)


def rle4_bmp(width: int = 64, height: int = 64) -> bytes:
    """A BI_RLE4 BMP: rows of 4-pixel runs alternating two of 16 greys."""
    palette = b"".join(bytes((i * 17, i * 17, i * 17, 0)) for i in range(16))
    rows = b""
    for y in range(height):
        for x in range(0, width, 4):
            rows += bytes((4, ((x + y) % 16) << 4 | ((x + y + 1) % 16)))
        rows += b"\x00\x00"
    rows += b"\x00\x01"
    return _bmp(width, height, 4, 2, palette, rows)


def _bmp(w: int, h: int, bits: int, compression: int, palette: bytes, rows: bytes) -> bytes:
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bits, compression, len(rows), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunk_before_iend(png: bytes, chunk: bytes, times: int = 1) -> bytes:
    """`png` with `chunk` inserted `times` times after its pixel data (before IEND)."""
    assert png[-12:-8] == b"\x00\x00\x00\x00" and png[-8:-4] == b"IEND"
    return png[:-12] + chunk * times + png[-12:]
