"""A detector's background tasks under its supervisor, on real Redis with the real model: a
task that fails is logged and restarted while the detector stays alive in the served-model
hash (what `/v1/status` and `detect` read); one that keeps failing takes the detector out of
that hash and stops it, and the process exits 1 (issue 25, item 1).

The failure is injected by replacing the trim function the detector calls (no test hook in
the service): the bug that killed the task in the field (an `int('None')` in the trim) is
fixed, and no real input makes the trim raise on demand any more."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams import serving
from facestream.common.streams.connection import async_client
from facestream.detector import worker
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector
from tests.support.procs import Procs, base_env

MakeSettings = Callable[..., Settings]
FAST = {
    "trim_every_ms": 100,
    "task_max_failures": 3,
    "task_failure_window_s": 5.0,
    "task_backoff_max_s": 1.0,
}


def test_a_failed_trim_is_restarted_and_the_detector_stays_alive(
    make_settings: MakeSettings,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(**FAST)
    real_trim = worker.trim_acked
    calls = 0

    async def fails_once(client: Any, stream: str, keep: int = 0) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("invalid literal for int() with base 10: 'None'")
        return await real_trim(client, stream, keep)

    monkeypatch.setattr(worker, "trim_acked", fails_once)

    async def scenario(det: Detector, client: Redis, keys: Keys) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + 10
        while calls < 4 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        failed_at_ms = int(time.time() * 1000)
        await asyncio.sleep(3 * settings.trim_every_ms / 1000)  # a refresh after the restart
        entries = await client.hgetall(keys.serving(settings.detector_group))
        until = int(entries[settings.consumer.encode()].decode().partition(":")[0])
        await publish(client, keys, make_event(photo_png["camera"], "after"))
        [result] = await wait_results(client, keys, 1)
        assert result["id"] == "after" and len(result["faces"]) == 1
        return until - failed_at_ms, serving.live_detectors(entries)

    with structlog.testing.capture_logs() as logs:
        fresh_for_ms, alive = with_detector(settings, builtin_model, scenario)
    assert calls >= 4  # the trim ran again after its failure
    assert settings.consumer in alive
    assert fresh_for_ms > 20_000  # refreshed after the failure (its time is 30 s)
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [e["task"] for e in failed] == ["trim"] and failed[0]["exc_info"] is True
    assert "task_restarted" in [e["event"] for e in logs]
    stopped = [e for e in logs if e["event"] == "detector_stopped"]
    assert stopped and "failed_task" not in stopped[0]


def test_a_trim_that_keeps_failing_stops_the_detector_and_takes_it_out_of_service(
    make_settings: MakeSettings,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    r: redis.Redis,
) -> None:
    settings = make_settings(**FAST)
    keys = Keys(settings.prefix, settings.partitions)

    async def always_fails(client: Any, stream: str, keep: int = 0) -> int:
        raise ValueError("a bug in the trim")

    monkeypatch.setattr(worker, "trim_acked", always_fails)

    async def main() -> tuple[float, str | None, list[dict[str, Any]]]:
        client = async_client(settings)
        det = Detector(settings, client, builtin_model)
        started = time.monotonic()
        try:
            await asyncio.wait_for(det.run(), settings.task_failure_window_s + 10)
            answered = await wait_results(client, keys, 1)
        finally:
            await client.aclose()
        return time.monotonic() - started, det.member.failed, answered

    # Work waiting before the detector starts: it is answered before the detector stops.
    r.xgroup_create(keys.images, settings.detector_group, id="0", mkstream=True)
    publish_sync(r, keys, make_event(photo_png["camera"], "in-hand"))
    with structlog.testing.capture_logs() as logs:
        took, failed, answered = asyncio.run(main())
    assert failed == "trim"
    assert took < settings.task_failure_window_s + 5  # the model load and the stop included
    assert [a["id"] for a in answered] == ["in-hand"]  # work in hand finished, not dropped
    assert r.hget(keys.serving(settings.detector_group), settings.consumer) is None
    events = [e["event"] for e in logs]
    assert "not_advertising" in events  # out of service while the task was down
    assert "task_gave_up" in events
    [stopped] = [e for e in logs if e["event"] == "detector_stopped"]
    assert stopped["failed_task"] == "trim"


def publish_sync(r: redis.Redis, keys: Keys, event: Any) -> None:
    from facestream.common.contract.schema import EVENT_FIELD

    r.xadd(keys.images, {EVENT_FIELD: event.to_wire()})


INJECT = """
import runpy
from facestream.common.streams import trim

async def broken(client, stream, keep=0):
    raise ValueError("a bug in the trim (injected by the test)")

trim.trim_acked = broken
runpy.run_module("facestream.detector", run_name="__main__")
"""


@pytest.mark.slow
def test_a_detector_process_whose_task_keeps_failing_exits_1(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = base_env(
        redis_url,
        prefix,
        FACESTREAM_CONSUMER="gives-up",
        **{f"FACESTREAM_{k.upper()}": v for k, v in FAST.items()},
    )
    procs = Procs(tmp_path, env)
    proc = procs.start("detector", ["-c", INJECT])
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs.stop()
        raise AssertionError(f"the detector did not exit:\n{procs.logs()}") from None
    lines = [
        json.loads(x)
        for x in (tmp_path / "detector.log").read_text().splitlines()
        if x.startswith("{")
    ]
    events = [line["event"] for line in lines]
    assert code == 1, procs.logs()
    assert "task_gave_up" in events and "detector_stopped" in events


def test_an_inference_thread_that_dies_is_started_again_on_the_same_queue(
    builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """The thread dies outside a model call (its queue step raises): the supervisor logs it
    and a new thread answers what was queued, as the old one would have."""
    from facestream.common.supervise import RestartPolicy, Supervisor
    from facestream.detector.batcher import DynamicBatcher
    from tests.support.helpers import decoded

    prepared = builtin_model.prepare(decoded(photo_png["astronaut"]))

    async def go() -> tuple[list[list[Any]], list[str], list[dict[str, Any]]]:
        batcher = DynamicBatcher(builtin_model, max_batch=1, max_wait_ms=0)
        take, died = batcher._take, 0

        def dies_once() -> Any:
            nonlocal died
            if not died:
                died += 1
                raise RuntimeError("a bug in the queue step")
            return take()

        batcher._take = dies_once  # type: ignore[method-assign]
        gave_up: list[str] = []
        sup = Supervisor(RestartPolicy(max_failures=3, window_s=5.0), gave_up.append)
        with structlog.testing.capture_logs() as logs:
            sup.start("inference", batcher.run)
            answer = await asyncio.wait_for(batcher.detect([prepared]), 10)
            await sup.close()
        batcher.close()
        return answer, gave_up, logs

    answer, gave_up, logs = asyncio.run(go())
    assert answer == [builtin_model.detect([prepared.image])[0]]
    assert gave_up == []
    [failed] = [e for e in logs if e["event"] == "task_failed"]
    assert failed["task"] == "inference"
