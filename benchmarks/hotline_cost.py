"""CPU per Redis call: redis-py's asyncio client against a hotline (common/streams/hotline.py).

The calls the gateway and the detectors make per request or per new photo, each run N times
in a row on one connection to a fresh redis-server, on asyncio and on uvloop (the gateway's
loop), both ways; the process's CPU time per call is printed (it includes the socket's system
calls, which both pay alike). A benchmark, not a test: run it on an otherwise idle machine.

    python -m benchmarks.hotline_cost [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop

from benchmarks.common import machine, redis_server, table
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client, hotline
from facestream.common.streams.scripts import Scripts
from facestream.common.streams.types import AsyncPipeline

Call = Callable[[Scripts, Any], Awaitable[Any]]


async def _script(scripts: Scripts, client: Any) -> Any:
    # lock_release.lua on a lock nobody holds: a script call with little work of its own.
    return await scripts.run_one(client, "lock_release", ["bench:lock"], ["token"])


async def _write(scripts: Scripts, client: Any) -> Any:
    # A write step's shape: a script, a reply added to a stream and its expiry.
    def build(pipe: AsyncPipeline) -> None:
        scripts.lock_release(pipe, "bench:lock", "token")
        pipe.xadd("bench:replies", {"result": b"x" * 300}, maxlen=100, approximate=True)
        pipe.pexpire("bench:replies", 60_000)

    return await scripts.run(client, build)


async def _xadd(scripts: Scripts, client: Any) -> Any:
    # A new photo's event: about the size of a 640x480 JPEG.
    if scripts.hotline is None:
        return await client.xadd("bench:images", {"event": b"x" * 56_000}, maxlen=100)
    pipe = scripts.hotline.pipeline().xadd("bench:images", {"event": b"x" * 56_000}, maxlen=100)
    return await pipe.execute()


CALLS: dict[str, Call] = {
    "one script (EVALSHA)": _script,
    "a write step (script, XADD, PEXPIRE)": _write,
    "XADD of 56 KB": _xadd,
}


async def per_call_us(url: str, with_hotline: bool, call: Call, n: int) -> float:
    settings = Settings(redis_url=url, redis_hotline=with_hotline)
    client = async_client(settings)
    scripts = Scripts(client, hotline(settings, client))
    try:
        for _ in range(50):  # connect, load the scripts, warm up
            await call(scripts, client)
        started = time.process_time()
        for _ in range(n):
            await call(scripts, client)
        return (time.process_time() - started) / n * 1e6
    finally:
        scripts.close()
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    runners: dict[str, Callable[[Coroutine[Any, Any, float]], float]] = {
        "asyncio": asyncio.run,
        "uvloop": uvloop.run,
    }
    rows: list[list[object]] = []
    with redis_server() as url:
        for name, call in CALLS.items():
            for loop_name, run in runners.items():
                # Alternated, each twice: the machine's drift falls on both alike.
                base = [run(per_call_us(url, False, call, args.calls)) for _ in range(2)]
                fast = [run(per_call_us(url, True, call, args.calls)) for _ in range(2)]
                b, f = min(base), min(fast)
                rows.append([name, loop_name, f"{b:.0f}", f"{f:.0f}", f"{b / f:.2f}x"])
    table(
        f"CPU per call, us (the lower of two runs of {args.calls:,} calls each)",
        ["call", "loop", "redis-py", "hotline", "redis-py / hotline"],
        rows,
    )


if __name__ == "__main__":
    main()
