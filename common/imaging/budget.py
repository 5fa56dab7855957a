"""What an image would cost to decode, judged from the structure of its bytes before any of it
is decoded.

Pixel count is checked from the header elsewhere (common/imaging/photo.py); this catches the
files whose cost is not in their pixel count:

- a progressive JPEG re-decodes the whole coefficient buffer once per scan, so a small file with
  thousands of (near-empty) scans costs seconds to minutes. Real progressive JPEGs have about
  ten scans (libjpeg's default script has 10, mozjpeg's optimised ones a dozen or so); the
  limit is a setting, after libjpeg-turbo's own scan limit (djpeg -maxscans).
- JPEG marker segments and PNG chunks before and between the pixel data are read by Pillow in
  Python, one loop turn each: millions of tiny ones cost seconds. No real file comes near
  MAX_SEGMENTS.
- run-length-encoded BMPs (BI_RLE8, BI_RLE4) are decoded by Pillow in pure Python, holding the
  GIL, about 100 times slower than a JPEG of the same size: refused.

Every walk here is bounded: regular expressions (C) skip entropy-coded data and garbage, and
each Python loop turn consumes one segment or chunk, of which at most MAX_SEGMENTS are read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MAX_SEGMENTS = 65_536

# Outside a scan, a marker is 0xFF then any byte but 0x00 or 0xFF (0xFF runs are fill bytes: the
# last one of a run starts the marker). Inside a scan's entropy-coded data 0xFF00 is a stuffed
# data byte and RST0..RST7 (0xFFD0..0xFFD7) belong to the scan, so neither ends it. One byte of
# look-behind each and no repetition, so every search is linear.
_MARKER = re.compile(rb"\xff[^\x00\xff]")
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0..7, SOI: no length field

BMP_RLE = {1: "RLE8", 2: "RLE4"}


def _jpeg_problem(data: bytes, max_scans: int, header_only: bool) -> str | None:
    # Segments up to the first scan: Pillow reads these in Python, one loop turn each.
    segments, pos = 0, 2  # past SOI
    while True:
        found = _MARKER.search(data, pos)
        if found is None or found.start() + 4 > len(data):
            return None  # truncated: the decoder says so
        pos = found.start()
        marker = data[pos + 1]
        if marker == _EOI:
            return None
        segments += 1
        if segments > MAX_SEGMENTS:
            return f"JPEG with more than {MAX_SEGMENTS} marker segments"
        if marker == _SOS:
            break
        pos += 2 if marker in _STANDALONE else 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None if header_only else _scans_past(data, pos, max_scans, segments)


def _scans_past(data: bytes, pos: int, max_scans: int, segments: int) -> str | None:
    """Scans counted from the first SOS at `pos` (entropy-coded data skipped by a regular
    expression, in C), and the segments between them."""
    scans = 0
    while True:
        marker = data[pos + 1]
        if marker == _EOI:
            return None  # the rest (an MPO's further pictures) is never decoded
        if marker in _STANDALONE:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans += 1
            if scans > max_scans:
                return f"JPEG with more than {max_scans} scans (limit {max_scans})"
            end = _SCAN_END.search(data, pos)
            if end is None:
                return None
            pos = end.start()
        else:
            found = _MARKER.search(data, pos)
            if found is None:
                return None
            pos = found.start()
        if pos + 4 > len(data):
            return None
        segments += 1
        if segments > MAX_SEGMENTS:
            return f"JPEG with more than {MAX_SEGMENTS} marker segments"


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, data offset, data length) of each chunk, up to MAX_SEGMENTS + 1 of them."""
    pos = 8
    for _ in range(MAX_SEGMENTS + 1):
        if pos + 8 > len(data):
            return
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        yield kind, pos + 8, length
        if kind == b"IEND":
            return
        pos += 12 + length


def png_exif(data: bytes) -> bytes | None:
    """The payload of a PNG's eXIf chunk, wherever it is (Pillow only sees one placed after the
    pixel data once the pixels are decoded); None when there is none."""
    for kind, start, length in _png_chunks(data):
        if kind == b"eXIf":
            return data[start : start + length]
    return None


def _png_problem(data: bytes) -> str | None:
    count = sum(1 for _ in _png_chunks(data))
    return f"PNG with more than {MAX_SEGMENTS} chunks" if count > MAX_SEGMENTS else None


def _bmp_problem(data: bytes) -> str | None:
    header_size = int.from_bytes(data[14:18], "little")
    if header_size < 40 or len(data) < 34:  # OS/2 1.x headers have no compression field
        return None
    rle = BMP_RLE.get(int.from_bytes(data[30:34], "little"))
    if rle is None:
        return None
    return f"run-length-encoded BMP ({rle}) is not accepted: send it as PNG or uncompressed BMP"


def decode_cost_problem(
    data: bytes, fmt: str, max_scans: int, *, header_only: bool = False
) -> str | None:
    """Why decoding these bytes (already sniffed as `fmt`) would cost more than the budget
    allows, or None when it is within it. `header_only`: only what opening the image (reading
    its header, no pixels) would cost, so a JPEG's scans are not counted."""
    if fmt == "JPEG":
        return _jpeg_problem(data, max_scans, header_only)
    if fmt == "PNG":
        return _png_problem(data)
    if fmt == "BMP":
        return _bmp_problem(data)
    return None  # WebP: libwebp parses and decodes in C, one frame
