"""Deadlines for unfinished requests: uvicorn has none for a request's headers or body, so a
client that sends half a request holds its connection (and a slot of the connection limit)
for ever. This protocol closes a connection whose headers are not complete within the header
timeout (counted from the connection's start or the request's first byte) or whose body is
not complete within the body timeout (counted from the end of the headers).

The timeouts ride on the ASGI app (`http_timeouts`, set by the gateway's factory from its
Settings in each worker), because uvicorn builds its protocol objects itself, in every worker
process, from nothing but its own Config.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeouts(app: Any) -> tuple[float, float] | None:
    while app is not None:  # through uvicorn's own wrappers, if any
        found = getattr(app, "http_timeouts", None)
        if found is not None:
            return (float(found[0]), float(found[1]))
        app = getattr(app, "app", None)
    return None


class DeadlineProtocol(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float | None) -> None:
        self._disarm()
        if seconds:
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        # The app sees a disconnect (its body read ends); the client sees the socket close.
        if not self.transport.is_closing():
            self.transport.close()

    def _limits(self) -> tuple[float, float]:
        return _timeouts(self.app) or (0.0, 0.0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits()[0])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a pipelined or keep-alive request's own header clock
            self._arm(self._limits()[0])

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._limits()[1])

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
