"""Which model the detectors serve, told to the gateways: each live detector keeps its model tag
in one hash per group, with the time it is good until. A gateway answering cache hits itself
must read the entries of the model the detectors would answer with, and of no other: while
detectors disagree (a model being rolled out), it answers nothing itself.

Beside its `<consumer>` field (`<until>:<tag>`, the format every reader parses), a detector
keeps a `load:<consumer>` field: `load:` and a JSON map with its own `until`, its recent model
time per image and its model slots, from which a gateway estimates how long a new photo would
wait (ingest/http/admission.py). Readers that predate it see a value whose time does not parse,
i.e. an entry out of its time: never a live detector, never a served tag. (A detector that
predates it deletes such fields as stale when it refreshes its own; they come back with the
next refresh of the detector that owns them.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facestream.common.streams.types import AsyncClient

LOAD = "load:"  # the prefix of a load field's name and of its value


@dataclass(frozen=True, slots=True)
class Load:
    """What a detector tells the gateways about its capacity: the model's recent time per
    image (a call's time over the images it ran on, so a batch counts as what it cost each)
    and how many model calls it runs at once (one: detector/batcher.py)."""

    image_s: float
    slots: int = 1

    def encode(self, until_ms: int) -> str:
        body = {"until": until_ms, "image_ms": round(self.image_s * 1000, 3), "slots": self.slots}
        return LOAD + json.dumps(body, separators=(",", ":"))


class LoadMeter:
    """A detector's Load from its model's running totals (seconds in model calls, images run):
    the average over the images since the previous advertisement, or the last one known while
    none ran (the model has not become faster by idling); None before any image ran."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._images = 0
        self._image_s: float | None = None

    def load(self, model_s: float, images: int) -> Load | None:
        if images > self._images and model_s >= self._seconds:
            self._image_s = (model_s - self._seconds) / (images - self._images)
            self._seconds, self._images = model_s, images
        return None if self._image_s is None else Load(self._image_s)


def _now_ms() -> int:
    return int(time.time() * 1000)


def load_field(consumer: str) -> str:
    return LOAD + consumer


async def advertise(
    client: AsyncClient,
    key: str,
    consumer: str,
    model_tag: str,
    ttl_ms: int,
    load: Load | None = None,
) -> None:
    """Keep `consumer`'s entry (and its load, when known) fresh, and drop the entries of
    detectors that stopped without withdrawing theirs (killed) once they are past their time."""
    now = _now_ms()
    entries = await client.hgetall(key)
    stale = [name for name, value in entries.items() if _expiry(value) < now]
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, consumer, f"{now + ttl_ms}:{model_tag}")
    if load is not None:
        pipe.hset(key, load_field(consumer), load.encode(now + ttl_ms))
    if stale:
        pipe.hdel(key, *stale)
    await pipe.execute()


async def withdraw(client: AsyncClient, key: str, consumer: str) -> None:
    await client.hdel(key, consumer, load_field(consumer))


async def served_tag(client: AsyncClient, key: str) -> str | None:
    """The one model tag every live detector serves; None when none is live or they differ."""
    tags = set(live_detectors(await client.hgetall(key)).values())
    return tags.pop() if len(tags) == 1 else None


def live_detectors(entries: Mapping[Any, Any], now_ms: int | None = None) -> dict[str, str]:
    """consumer -> model tag of the entries still in their time: the detectors alive now.
    Pure, so the synchronous CLI check and the gateway's status read one rule. (A load field's
    value does not start with its time: `_until` reads 0, out of its time, as older readers do.)"""
    now = _now_ms() if now_ms is None else now_ms
    return {_text(name): _tag(value) for name, value in entries.items() if _until(value) >= now}


def live_loads(entries: Mapping[Any, Any], now_ms: int | None = None) -> dict[str, Load]:
    """consumer -> Load of the live detectors that tell theirs (an older one does not)."""
    now = _now_ms() if now_ms is None else now_ms
    live = live_detectors(entries, now)
    loads: dict[str, Load] = {}
    for name, value in entries.items():
        consumer = _text(name).removeprefix(LOAD)
        if not _text(name).startswith(LOAD) or consumer not in live:
            continue
        body = _load_body(value)
        if body is None or _int(body.get("until")) < now:
            continue
        image_ms, slots = body.get("image_ms"), _int(body.get("slots"))
        if isinstance(image_ms, int | float) and image_ms > 0 and slots > 0:
            loads[consumer] = Load(float(image_ms) / 1000, slots)
    return loads


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _until(value: bytes | str) -> int:
    head, _, _ = _text(value).partition(":")
    return int(head) if head.isdigit() else 0


def _expiry(value: bytes | str) -> int:
    """When an entry of either kind (served model, load) is past its time."""
    body = _load_body(value)
    return _until(value) if body is None else _int(body.get("until"))


def _load_body(value: bytes | str) -> dict[str, Any] | None:
    text = _text(value)
    if not text.startswith(LOAD):
        return None
    try:
        body = json.loads(text.removeprefix(LOAD))
    except ValueError:
        return {}  # unreadable: out of its time
    return body if isinstance(body, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tag(value: bytes | str) -> str:
    return _text(value).partition(":")[2]
