"""The image formats facestream accepts, recognised by their magic bytes."""

from __future__ import annotations

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


def sniff_format(data: bytes) -> str | None:
    """The allowed format these bytes start like, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None
