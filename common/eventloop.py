"""The event loop a service process runs on: uvloop where it is installed (uvicorn[standard]
brings it on Linux and macOS, and the gateway's workers already run on it), else asyncio's
own. uvloop does the same work in fewer instructions per callback, socket read and thread
wake-up, which is most of what a detector's loop does per photo (docs/performance.md, "A
cheaper new photo"). Only entry points call this; tests run services on pytest's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows, or a slim install without uvicorn[standard]
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name() -> str:
    """The running loop's kind, for the start-up log line."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
