"""The gateway's reply reader under its supervisor, on real Redis: a reader that fails is
restarted and `/readyz` says not ready while it is down; one that keeps failing is given up
and the gateway process exits 1 after its graceful stop (issue 25, item 1).

The failure is injected by a read that raises a non-Redis error (a client whose XREAD does,
or, in the process, a reader replaced before the gateway starts): a bug of the reader's own
cannot be produced on demand, and Redis errors are an outage the reader rides out."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from starlette.testclient import TestClient

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import RESULT_FIELD
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.supervise import RestartPolicy
from facestream.control.embedded import free_port
from facestream.ingest.http.app import create_app
from facestream.ingest.http.reply_router import ReplyRouter
from facestream.ingest.http.state import gateway_of
from tests.support.procs import Procs, base_env

MakeSettings = Callable[..., Settings]


class Failing:
    """A real client whose XREAD fails while `failing` is set: a bug in the read path."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise KeyError("a bug in the reply reader")
        return await self._client.xread(*args, **kwargs)


def wait_until(check: Callable[[], bool], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_readyz_says_not_ready_while_the_reply_reader_is_down(
    make_settings: MakeSettings, r: redis.Redis
) -> None:
    # Never given up here: a give-up would stop this (the test's) process.
    settings = make_settings(task_max_failures=10_000, task_backoff_max_s=0.5)
    keys = Keys(settings.prefix, settings.partitions)
    r.xgroup_create(keys.parts[0].images, settings.detector_group, id="0", mkstream=True)
    with TestClient(create_app(settings)) as http:
        router: ReplyRouter = gateway_of(http.app).replies
        assert wait_until(lambda: http.get("/readyz").status_code == 200)
        # The gateway's reader reads through its own connection (a hotline): fail the read itself.
        read, failing = router._read, [True]

        async def broken() -> Any:
            if failing[0]:
                raise KeyError("a bug in the reply reader")
            return await read()

        router._read = broken  # type: ignore[method-assign]
        assert wait_until(lambda: http.get("/readyz").status_code == 503)
        down = http.get("/readyz")
        failing[0] = False
        assert wait_until(lambda: http.get("/readyz").status_code == 200)
        # The restarted reader reads on: a reply added now is read.
        reply = r.xadd(
            router.stream,
            {RESULT_FIELD: msgpack.packb({"id": "x", "sha256": "s", "entry": "1-1"})},
        ).decode()
        assert wait_until(lambda: router._last == reply)
    assert down.json() == {"status": "not_ready", "reason": "reply reader not running"}


def test_a_reader_that_keeps_failing_is_given_up(make_settings: MakeSettings) -> None:
    settings = make_settings()
    keys = Keys(settings.prefix, settings.partitions)
    policy = RestartPolicy(max_failures=3, window_s=2.0, backoff_max_s=0.1)

    async def main() -> tuple[list[str], bool, dict[str, Any]]:
        client = async_client(settings)
        gave_up: list[str] = []
        router = ReplyRouter(Failing(client), keys, 60, 50, policy, gave_up.append)
        await router.start()
        waiter = router.expect("a", "b")
        deadline = time.monotonic() + policy.window_s
        while not gave_up and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        healthy = router.healthy
        await router.stop()  # given an on_give_up: it does not exit the process
        await client.aclose()
        return gave_up, healthy, {"done": waiter.fut.done()}

    gave_up, healthy, waiter = asyncio.run(main())
    assert gave_up == ["reply_reader"]
    assert healthy is False
    assert waiter == {"done": False}


INJECT = """
import runpy
from facestream.ingest.http import reply_router as replies

async def broken(self):
    raise KeyError("a bug in the reply reader (injected by the test)")

replies.ReplyRouter._run = broken
runpy.run_module("facestream.ingest", run_name="__main__")
"""


@pytest.mark.slow
def test_a_gateway_whose_reply_reader_keeps_failing_exits_1(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = base_env(
        redis_url,
        prefix,
        FACESTREAM_HTTP_PORT=free_port(),
        FACESTREAM_TASK_MAX_FAILURES=3,
        FACESTREAM_TASK_FAILURE_WINDOW_S=5,
    )
    procs = Procs(tmp_path, env)
    proc = procs.start("gateway", ["-c", INJECT])
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs.stop()
        raise AssertionError(f"the gateway did not exit:\n{procs.logs()}") from None
    text = (tmp_path / "gateway.log").read_text()
    events = [json.loads(x)["event"] for x in text.splitlines() if x.startswith("{")]
    assert code == 1, procs.logs()
    assert events.count("task_failed") == 2 and "task_gave_up" in events
    assert "gateway_exiting" in events
