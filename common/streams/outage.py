"""Riding out a Redis outage: backoff with jitter, and one log line when it starts and one when
it ends (not one per retry)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from facestream.common.streams.errors import REDIS_ERRORS, connection_race

T = TypeVar("T")


class Outage:
    def __init__(self, log: Any, what: str = "redis", first_s: float = 0.1, max_s: float = 5.0):
        self.log = log
        self.what = what
        self.first_s = first_s
        self.max_s = max_s
        self._delay = first_s
        self._since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self.log.warning(f"{self.what}_unavailable", error=str(exc) or type(exc).__name__)
        # Full jitter around the exponential step: members that lost Redis together do not
        # all come back in the same millisecond.
        wait = self._delay * (0.5 + random.random())
        self._delay = min(self._delay * 2, self.max_s)
        return wait

    def ok(self) -> None:
        if self._since is not None:
            self.log.info(
                f"{self.what}_available",
                down_s=round(time.monotonic() - self._since, 1),
                failures=self.failures,
            )
        self._since = None
        self._delay = self.first_s
        self.failures = 0


async def until_available(
    step: Callable[[], Awaitable[T]], stop: asyncio.Event, log: Any, what: str = "redis"
) -> T | None:
    """Run `step` until it gets through Redis (backing off while it cannot), or `stop` is
    set (None): a service started before Redis waits for it instead of crash-looping."""
    outage = Outage(log, what)
    while not stop.is_set():
        try:
            result = await step()
        except Exception as exc:
            if not isinstance(exc, REDIS_ERRORS) and not connection_race(exc):
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), outage.failed(exc))
            continue
        outage.ok()
        return result
    return None
