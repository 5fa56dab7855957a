"""A one-line progress display for long CLI work, on a terminal only."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        self.total = total
        self.label = label
        self.out = stream or sys.stderr
        self.enabled = self.out.isatty()
        self.done = 0
        self.note = ""
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        rate = self.done / max(now - self._started, 1e-6)
        bar = "#" * filled + "-" * (width - filled)
        left = max(self.total - self.done, 0)
        eta = f"ETA {_clock(left / rate)}" if rate > 0 and left else _clock(now - self._started)
        line = f"\r{self.label} [{bar}] {self.done}/{self.total} {rate:.1f}/s {eta} {self.note}"
        self.out.write(line[:200].ljust(80))
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
