"""How many pixels of `/v1/draw` one gateway process holds at once, and memory given back after.

A draw decodes its photo at full size (3 bytes a pixel, plus the JPEG it encodes), so forty
concurrent draws of a 6300x6300 photo took a gateway from ~105 to ~820 MiB. Each draw reserves
its photo's pixels (read from the header, nothing decoded) when it is accepted and gives them
back once its JPEG is made; a draw that would pass the budget is refused at once (503
`overloaded`, Retry-After) rather than queued. A draw larger than the whole budget is still
admitted when nothing else is being drawn, so every photo the pixel limit allows can be drawn.

glibc keeps freed memory in its arenas (one per thread that allocated it), so a burst's peak
stayed the process's size long after. After a large draw, `malloc_trim(0)` hands the free
pages back (common/allocator.py).
"""

from __future__ import annotations

from facestream.common import allocator
from facestream.common.imaging.photo import image_size

# Below this many pixels a draw's buffers are small and trimming would cost more than it gives.
TRIM_FROM_PIXELS = 4_000_000


def header_pixels(image: bytes) -> int:
    """The photo's pixel count from its header (no decode, the decode budget's header checks
    first: this runs on the event loop); 0 when the header is unreadable or over that budget
    (the detector answers it `undecodable` or `too_complex`, and nothing is drawn)."""
    size = image_size(image)
    return size[0] * size[1] if size else 0


class DrawBudget:
    """Pixels of the draws in flight in this process, against `max_pixels` (0: no limit)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.in_flight = 0
        self.draws = 0

    def admit(self, pixels: int) -> bool:
        """Reserve `pixels` if they fit (or nothing else is drawn); False: refuse the draw."""
        fits = self.in_flight + pixels <= self.max_pixels
        if self.max_pixels and self.draws and not fits:
            return False
        self.in_flight += pixels
        self.draws += 1
        return True

    def release(self, pixels: int) -> None:
        self.in_flight -= pixels
        self.draws -= 1


def give_back(pixels: int) -> None:
    """After a draw of `pixels`: return free heap pages to the system (glibc only)."""
    if pixels >= TRIM_FROM_PIXELS:
        allocator.trim()
