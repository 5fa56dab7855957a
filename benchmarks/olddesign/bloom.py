"""The old design's Bloom filter: a plain Redis bitmap, k bit positions per image.

The old service kept its filter in Redis so every worker shares it; a bitmap read and set with
one BITFIELD command each is the simplest faithful form (no module such as RedisBloom needed).
Positions come from the image's sha256 by double hashing, so no extra hash is computed.
"""

from __future__ import annotations

import math
from typing import Any


class BitmapBloom:
    def __init__(self, key: str, capacity: int = 1_000_000, error_rate: float = 0.01) -> None:
        self.key = key
        self.bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))

    def positions(self, digest: bytes) -> list[int]:
        h1 = int.from_bytes(digest[:8], "big")
        h2 = int.from_bytes(digest[8:16], "big") | 1
        return [(h1 + i * h2) % self.bits for i in range(self.hashes)]

    def contains_args(self, digest: bytes) -> list[Any]:
        """BITFIELD arguments that read every position (all 1: "seen")."""
        args: list[Any] = []
        for p in self.positions(digest):
            args += ["GET", "u1", p]
        return args

    def add_args(self, digest: bytes) -> list[Any]:
        args: list[Any] = []
        for p in self.positions(digest):
            args += ["SET", "u1", p, 1]
        return args
