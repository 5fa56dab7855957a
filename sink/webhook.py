"""The `webhook` sink: POST each result as JSON to a URL, with retries and backoff.

Retried: connection errors, timeouts, 408, 429 and 5xx, with exponential backoff and jitter
(a Retry-After header is honoured). Permanent: any other 4xx at once, or retries exhausted; such
results go to the dead-letter stream with the reason.
"""

from __future__ import annotations

import asyncio
import random

import httpx

from facestream.common.settings import SinkSettings
from facestream.sink.files import UNSERIALISABLE, to_json
from facestream.sink.runner import Item, WriteOutcome

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class WebhookSink:
    kind = "webhook"

    def __init__(self, settings: SinkSettings) -> None:
        if not settings.webhook_url:
            raise ValueError("the webhook sink needs FACESTREAM_WEBHOOK_URL")
        self.url = settings.webhook_url
        self.retries = settings.webhook_retries
        self.backoff_s = settings.webhook_backoff_ms / 1000
        self.timeout = settings.webhook_timeout_s
        self.concurrency = asyncio.Semaphore(settings.webhook_concurrency)
        self.client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)

    async def _post(self, item: Item) -> str | None:
        """None when delivered, else why it never will be."""
        assert self.client is not None and item.result is not None
        try:
            body = to_json(item.result)
        except UNSERIALISABLE as exc:  # costs only this result, and is no reason to retry
            return f"unserialisable result: {type(exc).__name__}: {exc}"[:300]
        last = ""
        for attempt in range(self.retries + 1):
            delay = self.backoff_s * 2**attempt * (0.5 + random.random())
            try:
                async with self.concurrency:
                    resp = await self.client.post(
                        self.url, content=body, headers={"content-type": "application/json"}
                    )
                if resp.status_code < 300:
                    return None
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in RETRYABLE:
                    return f"permanent failure: {last}"
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.isdigit():
                    delay = min(float(retry_after), 60.0)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(min(delay, 30.0))
        return f"gave up after {self.retries + 1} attempts: {last}"

    async def write(self, items: list[Item]) -> WriteOutcome:
        reasons = await asyncio.gather(*(self._post(i) for i in items))
        written = [i for i, r in zip(items, reasons, strict=True) if r is None]
        dead = [(i, r) for i, r in zip(items, reasons, strict=True) if r is not None]
        return WriteOutcome(written, dead)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
