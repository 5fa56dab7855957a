"""glibc's allocator, told how a long-running process uses it (elsewhere, musl or macOS, these
calls do not exist and nothing is done).

- `keep_freed_memory`: a detector allocates and frees the same few large buffers per photo
  (the decoded pixels, ~0.9 MB at 640x480, the model's float input, ~3.7 MB). glibc served
  them by fresh mmaps or from arena tops it trimmed back, so each photo paid 300-600 page
  faults on first touch (~1 ms of kernel time in a VM; docs/performance.md, "A cheaper new
  photo"). Fixed thresholds keep buffers up to `mmap_below` in the arenas and free memory
  up to `trim_above` in them: after the first photos, no faults.
- `trim`: after a burst of large buffers (the gateway's full-size draws), hand free pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 64 << 20) -> bool:
    """Serve allocations under `mmap_below` bytes from the arenas and keep up to `trim_above`
    bytes free in them; True when glibc took both."""
    libc = _libc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_below) and libc.mallopt(_M_TRIM_THRESHOLD, trim_above)
    )


def trim() -> None:
    """Return free heap pages to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
