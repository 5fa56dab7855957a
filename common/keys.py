"""Every Redis key name facestream uses, built in one place.

Keys that one Lua script touches together share a hash tag, so they land in one cluster slot:
the cache entry and the single-flight lock of one (image, model) both carry `{<sha256>}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MODEL_TAG = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")


def check_sha256(sha: str) -> str:
    if not _SHA256_HEX.match(sha):
        raise ValueError(f"not a lowercase hex sha256: {sha!r}")
    return sha


def check_model_tag(tag: str) -> str:
    if not _MODEL_TAG.match(tag):
        raise ValueError(f"model tag must match {_MODEL_TAG.pattern}: {tag!r}")
    return tag


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "facestream"

    @property
    def images(self) -> str:
        return f"{self.prefix}:images"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}:dlq"

    def cache(self, sha256: str, model_tag: str) -> str:
        return f"{self.prefix}:face:{{{sha256}}}:{model_tag}"

    def lock(self, sha256: str, model_tag: str) -> str:
        return f"{self.prefix}:lock:{{{sha256}}}:{model_tag}"

    def bloom(self, model_tag: str) -> str:
        return f"{self.prefix}:bloom:{model_tag}"

    def consumer_claim(self, group: str, consumer: str) -> str:
        """Liveness claim on a consumer name, so two processes never share one PEL."""
        return f"{self.prefix}:consumer:{group}:{consumer}"

    def reply_stream(self, name: str) -> str:
        return f"{self.prefix}:reply:{name}"
