"""Publishing image events onto the images stream (wire contract v1)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import redis

from common.keys import Keys
from common.schema import EVENT_FIELD, ImageEvent
from common.settings import Settings


def make_event(
    image: bytes,
    event_id: str | None = None,
    *,
    source: str | None = None,
    meta: dict[str, Any] | None = None,
    reply_to: str | None = None,
) -> ImageEvent:
    return ImageEvent(
        id=event_id or uuid.uuid4().hex,
        image=image,
        sha256=hashlib.sha256(image).hexdigest(),
        source=source,
        ts_ms=int(time.time() * 1000),
        meta=meta,
        reply_to=reply_to,
    )


class Publisher:
    """Synchronous publisher: one XADD per event, or one pipeline for many."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.client = client
        self.keys = Keys(settings.prefix)

    def publish(self, event: ImageEvent) -> str:
        entry = self.client.xadd(self.keys.images, {EVENT_FIELD: event.to_wire()})
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def publish_many(self, events: list[ImageEvent]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.keys.images, {EVENT_FIELD: event.to_wire()})
        return [e.decode() if isinstance(e, bytes) else str(e) for e in pipe.execute()]
