"""`facestream migrate import-cache`: start facestream with the warm cache of the service it
replaces.

That design keeps one Redis hash per image, `face_detection:<key>` with `<key>` the URL-safe
base64 of the image's sha256 digest, fields `boxes`, `keypoints`, `scores` (JSON lists) and
`timestamp`, with a 24 h TTL. Each entry becomes a facestream cache entry for the same model,
keeping its remaining TTL, and its hash goes into the Bloom filter. The source is only read
(SCAN, TYPE, HGETALL, PTTL: never KEYS, never a write), so the import is safe to re-run.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from facestream.common.cache.bloom import open_bloom
from facestream.common.cache.lookup import CacheView
from facestream.common.cache.store import queue_unsized
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import Face
from facestream.common.progress import Progress
from facestream.common.settings import Settings
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient

BATCH = 500


class ModelMismatch(ValueError):
    pass


@dataclass
class ImportReport:
    read: int = 0
    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "imported": self.imported, "skipped": dict(self.skipped)}


def sha_of(key: str, prefix: str) -> str:
    raw = key[len(prefix) :]
    try:
        digest = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("key is not URL-safe base64") from None
    if len(digest) != 32:
        raise ValueError("key is not a sha256 digest")
    return digest.hex()


def faces_of(fields: dict[str, str]) -> list[Face]:
    try:
        boxes = json.loads(fields["boxes"])
        keypoints = json.loads(fields["keypoints"])
        scores = json.loads(fields["scores"])
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]}") from None
    except json.JSONDecodeError:
        raise ValueError("malformed JSON") from None
    if not (
        isinstance(boxes, list)
        and isinstance(keypoints, list)
        and isinstance(scores, list)
        and len(boxes) == len(keypoints) == len(scores)
    ):
        raise ValueError("boxes, keypoints and scores do not line up")
    faces = []
    for box, kps, score in zip(boxes, keypoints, scores, strict=True):
        if not (
            isinstance(box, list)
            and len(box) == 4
            and isinstance(kps, list)
            and len(kps) == 10
            and isinstance(score, int | float)
        ):
            raise ValueError("a face is not 4 box numbers, 10 keypoint numbers and a score")
        faces.append(
            Face(
                [float(v) for v in box],
                float(score),
                [[float(kps[i]), float(kps[i + 1])] for i in range(0, 10, 2)],
            )
        )
    return faces


async def import_cache(
    settings: Settings,
    source: AsyncClient,
    target: AsyncClient,
    prefix: str,
    source_model: str,
    model_name: str,
    model_tag: str,
) -> ImportReport:
    if source_model != model_name:
        raise ModelMismatch(
            f"the source cache holds faces found by {source_model!r}; this facestream serves "
            f"{model_name!r} ({model_tag}). Importing would answer with another model's faces: "
            f"run the import with FACESTREAM_MODEL set to {source_model!r}'s ONNX file."
        )
    keys = Keys(settings.prefix, settings.partitions)
    scripts = Scripts(target)
    bloom = await open_bloom(target, scripts, keys, model_tag, settings)
    view = CacheView(target, scripts, keys, model_tag)
    report = ImportReport()
    progress = Progress(int(await source.dbsize()), "import")
    batch: list[str] = []

    async def flush() -> None:
        pipe = source.pipeline(transaction=False)
        for key in batch:
            pipe.type(key)
            pipe.hgetall(key)
            pipe.pttl(key)
        replies = await pipe.execute(raise_on_error=False)
        writes: list[tuple[str, list[Face], int, int]] = []  # sha, faces, ttl, created
        added = []
        for i, key in enumerate(batch):
            kind, fields, ttl = replies[3 * i : 3 * i + 3]
            report.read += 1
            reason = None
            if kind != "hash":
                reason = f"not a hash ({kind})"
            elif ttl == -2:
                reason = "expired while importing"
            else:
                try:
                    sha = sha_of(key, prefix)
                    faces = faces_of(fields)
                except ValueError as exc:
                    reason = str(exc)
            if reason is not None:
                report.skipped[reason] += 1
                continue
            ttl_ms = ttl if ttl > 0 else settings.cache_ttl_s * 1000  # no TTL: ours
            writes.append((sha, faces, ttl_ms, _created(fields)))
            added.append(sha)
            report.imported += 1

        def build(write: Any) -> None:
            for sha, faces, ttl_ms, created_ms in writes:
                queue_unsized(write, view, sha, faces, ttl_ms, created_ms)
            bloom.queue_add(write, added)  # after the entries it vouches for

        await scripts.run(target, build)
        progress.advance(len(batch), f"{report.imported} imported")
        batch.clear()

    async for key in source.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            await flush()
    if batch:
        await flush()
    progress.close()
    return report


def _created(fields: dict[str, str]) -> int:
    try:
        return int(float(fields.get("timestamp", "0")) * 1000)
    except ValueError:
        return 0
