"""Wire contract v1: image events in, results out, both one msgpack map in one stream field.

See docs/contract.md. Decoding is defensive: explicit msgpack size limits, exact types, and a
`SchemaError` carrying the error code that the result will report.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

VERSION = 1
EVENT_FIELD = b"event"
RESULT_FIELD = b"result"
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 256
MAX_REPLY_TO_CHARS = 512
# Deep enough for any real metadata, shallow enough that every JSON encoder on the way out
# (orjson stops at 255, json's recursion at ~1000) and every recursive walk handles it.
MAX_META_DEPTH = 32
# What msgpack can carry: an int outside it cannot be packed at all.
META_INT_RANGE = (-(2**63), 2**64 - 1)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ErrorCode(StrEnum):
    BAD_EVENT = "bad_event"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_COMPLEX = "too_complex"
    HASH_MISMATCH = "hash_mismatch"
    INFERENCE_FAILED = "inference_failed"
    MAX_DELIVERIES = "max_deliveries"


class SchemaError(ValueError):
    """An event or image that cannot be answered with faces; `code` goes into the result."""

    def __init__(self, code: ErrorCode, message: str, event_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class Limits:
    max_event_bytes: int = 24 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_meta_bytes: int = 4096


DEFAULT_LIMITS = Limits()  # also the settings' defaults (common/settings.py)

# Libraries name the objects they fail on (Pillow: `<_io.BytesIO object at 0x7f...>`): a
# Python repr that means nothing to whoever reads an error message.
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def without_reprs(message: str) -> str:
    """An error message as results and answers carry it: no Python object reprs."""
    return _OBJECT_REPR.sub("", message)


@dataclass(slots=True)
class ImageEvent:
    id: str
    image: bytes
    sha256: str | None = None
    source: str | None = None
    ts_ms: int | None = None
    meta: dict[str, Any] | None = None
    reply_to: str | None = None
    crops: bool = False  # each face of the result also carries an aligned 112x112 JPEG

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "id": self.id, "image": self.image}
        for name in ("sha256", "source", "ts_ms", "meta", "reply_to"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.crops:  # only when asked: events stay byte for byte what old readers know
            body["crops"] = True
        return msgpack.packb(body, use_bin_type=True)

    def content_sha256(self) -> str:
        """The verified content hash: computed, and compared with the claimed one if any."""
        actual = hashlib.sha256(self.image).hexdigest()
        if self.sha256 is not None and self.sha256 != actual:
            raise SchemaError(
                ErrorCode.HASH_MISMATCH,
                f"sha256 {self.sha256} does not match the image bytes ({actual})",
                self.id,
            )
        return actual


class _BadKeys:
    """Stands in for a msgpack map with a key that is not a string: decoding goes on, so the
    event's id is still known and the error result can carry it."""

    __slots__ = ()


def _map(pairs: list[tuple[Any, Any]]) -> dict[str, Any] | _BadKeys:
    if all(type(k) is str for k, _ in pairs):
        return dict(pairs)
    return _BadKeys()


def meta_problem(meta: Any) -> str | None:
    """Why `meta` cannot travel (None when it can): a map with string keys, at most
    MAX_META_DEPTH containers deep, of JSON-like values (bin allowed), ints that msgpack
    packs and finite floats. Walked without recursion, so any depth is refused, not crashed on.
    """
    if not isinstance(meta, Mapping):
        return "meta must be a JSON object / map"
    stack: list[tuple[Any, int]] = [(meta, 1)]
    lo, hi = META_INT_RANGE
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_META_DEPTH:
                return f"meta is nested deeper than {MAX_META_DEPTH} levels"
            if isinstance(value, Mapping):
                if not all(type(k) is str for k in value):
                    return "meta keys must be strings"
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, _BadKeys):
            return "meta keys must be strings"
        elif value is None or isinstance(value, bool | str | bytes):
            continue
        elif isinstance(value, int):
            if not lo <= value <= hi:
                return f"meta holds an integer outside {lo}..{hi}"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return "meta holds a non-finite number"
        else:
            return f"meta holds a {type(value).__name__}, not a JSON value"
    return None


def _opt(body: Mapping[str, Any], name: str, kind: type, event_id: str) -> Any:
    value = body.get(name)
    # bool is an int subclass; a True timestamp is not a timestamp.
    if value is not None and (type(value) is not kind):
        raise SchemaError(ErrorCode.BAD_EVENT, f"field {name!r} must be {kind.__name__}", event_id)
    return value


def decode_event(payload: bytes | None, limits: Limits) -> ImageEvent:
    """Parse one `event` field; raises SchemaError(code) for anything outside the contract."""
    if payload is None:
        raise SchemaError(ErrorCode.BAD_EVENT, "entry has no 'event' field")
    if len(payload) > limits.max_event_bytes:
        raise SchemaError(
            ErrorCode.TOO_LARGE, f"event is {len(payload)} bytes, limit {limits.max_event_bytes}"
        )
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            # Maps with non-string keys become _BadKeys instead of failing the whole event.
            strict_map_key=False,
            object_pairs_hook=_map,
            max_bin_len=limits.max_image_bytes,
            max_str_len=max(limits.max_meta_bytes, MAX_REPLY_TO_CHARS * 4),
            max_array_len=max(64, limits.max_meta_bytes),
            max_map_len=max(64, limits.max_meta_bytes),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        # msgpack reports an over-limit bin as ValueError too; name the likely cause.
        code = ErrorCode.TOO_LARGE if "exceeds max_bin_len" in str(exc) else ErrorCode.BAD_EVENT
        # Some (FormatError on a reserved byte) carry no message: the type is the reason.
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise SchemaError(code, f"not a valid msgpack event: {reason}") from None
    if isinstance(body, _BadKeys):
        raise SchemaError(ErrorCode.BAD_EVENT, "event keys must be strings")
    if not isinstance(body, dict):
        raise SchemaError(ErrorCode.BAD_EVENT, "event must be a msgpack map")

    raw_id = body.get("id")
    event_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_CHARS else ""
    if type(body.get("v")) is not int or body["v"] != VERSION:
        raise SchemaError(ErrorCode.BAD_EVENT, f"field 'v' must be {VERSION}", event_id)
    if not event_id:
        raise SchemaError(ErrorCode.BAD_EVENT, f"field 'id' must be a str of 1..{MAX_ID_CHARS}")
    image = body.get("image")
    if not isinstance(image, bytes) or not image:
        raise SchemaError(ErrorCode.BAD_EVENT, "field 'image' must be non-empty bin", event_id)

    sha = _opt(body, "sha256", str, event_id)
    if sha is not None:
        if not _HEX64.match(sha):
            raise SchemaError(ErrorCode.BAD_EVENT, "field 'sha256' must be 64 hex chars", event_id)
        sha = sha.lower()
    source = _opt(body, "source", str, event_id)
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise SchemaError(ErrorCode.BAD_EVENT, "field 'source' is too long", event_id)
    ts_ms = _opt(body, "ts_ms", int, event_id)
    if isinstance(body.get("meta"), _BadKeys):
        raise SchemaError(ErrorCode.BAD_EVENT, "meta keys must be strings", event_id)
    meta = _opt(body, "meta", dict, event_id)
    problem = meta_problem(meta) if meta is not None else None
    if problem is not None:
        raise SchemaError(ErrorCode.BAD_EVENT, problem, event_id)
    if meta is not None and len(msgpack.packb(meta, use_bin_type=True)) > limits.max_meta_bytes:
        raise SchemaError(
            ErrorCode.BAD_EVENT,
            f"field 'meta' packs to over {limits.max_meta_bytes} bytes",
            event_id,
        )
    reply_to = _opt(body, "reply_to", str, event_id)
    if reply_to is not None and not 0 < len(reply_to) <= MAX_REPLY_TO_CHARS:
        raise SchemaError(ErrorCode.BAD_EVENT, "field 'reply_to' is empty or too long", event_id)
    crops = _opt(body, "crops", bool, event_id)
    return ImageEvent(event_id, image, sha, source, ts_ms, meta, reply_to, bool(crops))


@dataclass(slots=True)
class Face:
    box: list[float]
    score: float
    kps: list[list[float]]
    # An aligned 112x112 JPEG, only in results whose event asked for crops: never cached
    # (pack_faces leaves it out), so a cache entry holds coordinates only.
    crop: bytes | None = None

    def to_wire(self, with_crop: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"box": self.box, "score": self.score, "kps": self.kps}
        if with_crop and self.crop is not None:
            body["crop"] = self.crop
        return body

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Face:
        return cls(list(body["box"]), float(body["score"]), [list(p) for p in body["kps"]])


@dataclass(slots=True)
class Result:
    id: str
    model: str
    consumer: str
    entry: str
    done_ms: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[Face] | None = None
    error: dict[str, str] | None = None
    cached: bool = False
    source: str | None = None
    meta: dict[str, Any] | None = None
    ts_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Only in results whose event asked for crops: faces left without one by the caps (or
    # because the image could not be decoded again), so a reader knows crops are missing.
    crops_omitted: int | None = None

    @classmethod
    def answering(
        cls,
        event: ImageEvent,
        *,
        model: str,
        consumer: str,
        entry: str,
        done_ms: int,
        sha256: str | None,
        **fields: Any,
    ) -> Result:
        """The result for `event`, built the same way by every producer (the detector, the
        gateway's cache answers): the event's id, source, meta and ts_ms carried over, the rest
        as given."""
        return cls(
            id=event.id,
            model=model,
            consumer=consumer,
            entry=entry,
            done_ms=done_ms,
            sha256=sha256,
            source=event.source,
            meta=event.meta,
            ts_ms=event.ts_ms,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": VERSION,
            "id": self.id,
            "sha256": self.sha256,
            "model": self.model,
            "width": self.width,
            "height": self.height,
        }
        if self.error is not None:
            body["error"] = self.error
        else:
            body["faces"] = [f.to_wire(with_crop=True) for f in self.faces or []]
            if self.crops_omitted is not None:
                body["crops_omitted"] = self.crops_omitted
        body.update(
            cached=self.cached,
            source=self.source,
            meta=self.meta,
            ts_ms=self.ts_ms,
            done_ms=self.done_ms,
            consumer=self.consumer,
            entry=self.entry,
        )
        return body

    def to_wire(self) -> bytes:
        return pack_result(self.to_dict())


def pack_result(body: dict[str, Any]) -> bytes:
    """A result map (`Result.to_dict()`'s shape) as the results stream carries it."""
    return msgpack.packb(body, use_bin_type=True)


def decode_result(payload: bytes) -> dict[str, Any]:
    """Results are produced by us; sinks read them as plain maps."""
    body = msgpack.unpackb(payload, raw=False)
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ValueError("not a v1 result")
    return body


def pack_faces(faces: list[Face]) -> bytes:
    return msgpack.packb([f.to_wire() for f in faces], use_bin_type=True)


def unpack_faces(payload: bytes) -> list[Face]:
    return [Face.from_wire(f) for f in msgpack.unpackb(payload, raw=False)]


def jsonable(value: Any) -> Any:
    """A result map made safe for JSON: bin values (possible inside `meta`) become base64."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
