"""A result cache entry: what it holds, how it is read, and the result it answers with.

One hash per (image, model), `Keys.cache(sha256, model)`, written only by cache_put.lua:

    faces       msgpack list of the result's face maps ({box, score, kps}), as a result carries
                them (`pack_faces`)
    width       the image's size in pixels, decimal digits; missing on entries imported from
    height      the old design (`facestream migrate`), whose readers then decode the image
    model       the model tag that found them (also in the key)
    created_ms  when they were found

Its readers: lookup_or_lock.lua (the detector, with the single-flight lock) and
cached_answers.lua (the gateway), both parsed here (`Entry.read`); `cached_result` builds the
result either answers with. A change to the format is a change to this package alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from facestream.common.contract.schema import Face, ImageEvent, Result

# The fields a reader asks for, in the order the scripts return them.
READ_FIELDS = ("faces", "width", "height")


@dataclass(frozen=True, slots=True)
class Entry:
    faces: bytes  # packed, as stored
    width: int  # 0: not recorded (an imported entry)
    height: int

    @property
    def sized(self) -> bool:
        """Whether the entry answers on its own; else the image's header gives its size."""
        return self.width > 0 and self.height > 0

    @classmethod
    def read(cls, row: list[Any]) -> Entry | None:
        """An entry from a script's or HMGET's (faces, width, height); None: no entry."""
        faces, width, height = row
        if faces is None:
            return None
        return cls(bytes(faces), size_of(width), size_of(height))


def size_of(value: Any) -> int:
    """A positive size in decimal digits, else 0: the rule cached_answers.lua applies too
    (`sized`), so an entry the script publishes is one its reader answers with."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or not value.isdigit():  # bytes.isdigit: ASCII only
        return 0
    return int(value)


def cached_result(
    event: ImageEvent,
    *,
    sha256: str,
    model: str,
    consumer: str,
    entry: str,
    done_ms: int,
    width: int | None,
    height: int | None,
    faces: list[Face],
) -> Result:
    """The result a cache entry answers `event` with, whoever answers: a detector (`entry` the
    images-stream entry it acks) or a gateway at the door (`entry` ""). Crops, where the event
    asks for them, are cut from the image by the caller (`crops_or_faces`): the entry holds
    coordinates only."""
    return Result.answering(
        event,
        model=model,
        consumer=consumer,
        entry=entry,
        done_ms=done_ms,
        sha256=sha256,
        width=width,
        height=height,
        faces=faces,
        cached=True,
    )


# What cached_answers.lua appends to a result head, in this order, from the entry.
APPENDED = ("width", "height", "faces")


def result_head(result: dict[str, Any]) -> bytes:
    """The bytes cached_answers.lua splices: a result map (`Result.to_dict()`'s shape) packed
    without width, height and faces, its map header counting them. The script appends the
    three from the cache entry (`cmsgpack.pack("width", w, "height", h, "faces")` and then the
    stored faces as they are), so a hit reaches the results stream in the look-up's round trip
    and its packed faces are never unpacked. Map order means nothing to a msgpack reader: the
    entry reads exactly as `pack_result` of the whole map."""
    body = {k: v for k, v in result.items() if k not in APPENDED}
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(body) + len(APPENDED))]
    for key, value in body.items():
        parts += [packer.pack(key), packer.pack(value)]
    return b"".join(parts)
