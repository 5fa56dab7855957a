"""Token locks: the single-flight locks of images being inferred and the consumer-name claim.

A lock is `SET key token NX PX ttl`; release and extend check the token in Lua (a holder whose
lock expired and was taken over must not delete or extend the new holder's lock). While work
runs, `LockKeeper.run` extends every held lock each third of the TTL (as a supervised task,
common/supervise.py: Redis away is waited out here, anything else is the supervisor's).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from facestream.common.log import get_logger
from facestream.common.streams.errors import REDIS_ERRORS, connection_race
from facestream.common.streams.outage import Outage
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncClient, AsyncPipeline

log = get_logger(__name__)


def new_token() -> str:
    return secrets.token_hex(16)


class LockKeeper:
    def __init__(self, scripts: Scripts, ttl_ms: int) -> None:
        # Every token this process makes starts with its owner prefix (see lookup_or_lock.lua).
        self.owner = f"{secrets.token_hex(8)}."
        self.scripts = scripts
        self.ttl_ms = ttl_ms
        self._held: dict[str, str] = {}
        self.lost = 0

    def new_token(self) -> str:
        return self.owner + secrets.token_hex(12)

    def hold(self, key: str, token: str) -> None:
        self._held[key] = token

    def drop(self, key: str) -> None:
        self._held.pop(key, None)

    def token(self, key: str) -> str | None:
        return self._held.get(key)

    def __len__(self) -> int:
        return len(self._held)

    async def extend_all(self, client: AsyncClient) -> list[str]:
        """Extend every held lock in one round trip; returns the keys no longer ours."""
        held = list(self._held.items())
        if not held:
            return []

        def build(pipe: AsyncPipeline) -> None:
            for key, token in held:
                self.scripts.lock_extend(pipe, key, token, self.ttl_ms)

        replies = await self.scripts.run(client, build)
        lost = [key for (key, _), ok in zip(held, replies, strict=True) if not ok]
        for key in lost:
            # The work goes on; another worker may redo it, which the emit step tolerates.
            self._held.pop(key, None)
            self.lost += 1
            log.warning("lock_lost", key=key)
        return lost

    async def run(self, client: AsyncClient, stop: asyncio.Event) -> None:
        interval = self.ttl_ms / 3000
        outage = Outage(log, "lock_extension")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                await self.extend_all(client)
                outage.ok()
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS) and not connection_race(exc):
                    raise  # a bug, not an outage: the supervisor logs it and restarts us
                outage.failed(exc)  # Redis away: the next tick retries


class ConsumerNameInUse(RuntimeError):
    pass


async def claim_consumer_name(
    client: AsyncClient, key: str, ttl_ms: int, wait_s: float | None = None
) -> str:
    """Take the liveness claim of a consumer name, waiting out a crashed predecessor's claim."""
    token = new_token()
    deadline = time.monotonic() + (2 * ttl_ms / 1000 if wait_s is None else wait_s)
    while True:
        if await client.set(key, token, nx=True, px=ttl_ms):
            return token
        remaining = await client.pttl(key)
        if time.monotonic() >= deadline:
            raise ConsumerNameInUse(
                f"consumer name claim {key} is held by another live process; give each "
                "detector process its own FACESTREAM_CONSUMER"
            )
        log.info("consumer_name_busy", key=key, retry_in_ms=remaining)
        await asyncio.sleep(min(max(remaining, 50), 1000) / 1000)
