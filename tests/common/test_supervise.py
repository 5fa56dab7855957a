"""The background-task supervisor (common/supervise.py) on its own, with asyncio: a failed task
is logged by name and restarted after a backoff, one that keeps failing is given up within
the window, and stopping never restarts anything. The failures are raised on purpose by the
tasks under test: they stand in for any bug a background loop can hit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog

from facestream.common.settings import Settings
from facestream.common.supervise import RestartPolicy, Supervisor

FAST = RestartPolicy(max_failures=3, window_s=3.0, backoff_max_s=0.2)


def test_the_backoff_doubles_from_half_a_second_up_to_its_cap() -> None:
    policy = RestartPolicy(max_failures=5, window_s=60.0, backoff_max_s=10.0)
    assert [policy.delay_s(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    # The cap leaves room for every restart before the give-up inside one window.
    assert RestartPolicy(max_failures=5, window_s=5.0, backoff_max_s=10.0).cap_s == 1.0


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(task_max_failures=7, task_failure_window_s=30, task_backoff_max_s=2)
    assert RestartPolicy.of(settings) == RestartPolicy(7, 30.0, 2.0)
    assert RestartPolicy.of(Settings()) == RestartPolicy()


def test_a_failed_task_is_logged_by_name_and_restarted() -> None:
    async def main() -> tuple[int, list[bool], list[str], list[dict[str, Any]]]:
        runs = 0
        health: list[bool] = []
        gave_up: list[str] = []
        sup = Supervisor(FAST, gave_up.append)

        async def housekeeping() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise ValueError("invalid literal for int() with base 10: 'None'")
            await asyncio.Event().wait()  # healthy from here on

        with structlog.testing.capture_logs() as logs:
            sup.start("trim", housekeeping)
            await asyncio.sleep(0.05)  # failed, waiting out its first backoff
            health.append(sup.healthy)
            await asyncio.sleep(0.5)
            health.append(sup.healthy)
            await sup.close()
        return runs, health, gave_up, logs

    runs, health, gave_up, logs = asyncio.run(main())
    assert runs == 2 and gave_up == []
    assert health == [False, True]  # down while waiting to restart, up once it runs again
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert len(failed) == 1 and failed[0]["task"] == "trim" and failed[0]["exc_info"] is True
    assert failed[0]["log_level"] == "error"
    assert [e["task"] for e in logs if e["event"] == "task_restarted"] == ["trim"]


def test_a_task_that_keeps_failing_is_given_up_within_the_window() -> None:
    async def main() -> tuple[float, list[str], int, bool, list[dict[str, Any]]]:
        gave_up: list[str] = []
        done = asyncio.Event()
        sup = Supervisor(FAST, lambda name: (gave_up.append(name), done.set()))
        runs = 0

        async def broken() -> None:
            nonlocal runs
            runs += 1
            raise RuntimeError("always")

        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            sup.start("advertise", broken)
            await asyncio.wait_for(done.wait(), FAST.window_s)
            took = time.monotonic() - started
            healthy = sup.healthy
            await sup.close()
        return took, gave_up, runs, healthy, logs

    took, gave_up, runs, healthy, logs = asyncio.run(main())
    assert gave_up == ["advertise"] and runs == FAST.max_failures
    assert took < FAST.window_s
    assert healthy is False  # a task given up stays down
    [last] = [e for e in logs if e["event"] == "task_gave_up"]
    assert last["task"] == "advertise" and last["failures"] == FAST.max_failures


def test_a_task_that_returns_unasked_counts_as_a_failure() -> None:
    async def main() -> list[dict[str, Any]]:
        sup = Supervisor(FAST, lambda name: None)
        runs = 0

        async def quits() -> None:
            nonlocal runs
            runs += 1
            if runs > 1:
                await asyncio.Event().wait()

        with structlog.testing.capture_logs() as logs:
            sup.start("gauges", quits, critical=False)
            await asyncio.sleep(0.05)
            assert sup.healthy  # not critical: its absence does not make the process unwell
            await asyncio.sleep(0.5)
            assert sup.running("gauges")
            await sup.close()
        return logs

    [failed] = [e for e in asyncio.run(main()) if e["event"] == "task_failed"]
    assert failed["task"] == "gauges"


@pytest.mark.parametrize("while_in_backoff", [False, True])
def test_closing_cancels_without_restarting_or_logging_a_failure(while_in_backoff: bool) -> None:
    async def main() -> tuple[int, list[dict[str, Any]]]:
        sup = Supervisor(RestartPolicy(backoff_max_s=5.0), lambda name: None)
        runs = 0

        async def task() -> None:
            nonlocal runs
            runs += 1
            if while_in_backoff:
                raise RuntimeError("fails once, then waits 0.5 s to restart")
            await asyncio.Event().wait()

        with structlog.testing.capture_logs() as logs:
            sup.start("lock_keeper", task)
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await sup.close()
            assert time.monotonic() - started < 0.3  # no backoff waited out
            await asyncio.sleep(0.7)  # past the backoff: nothing restarts
        return runs, logs

    runs, logs = asyncio.run(main())
    assert runs == 1
    events = [e["event"] for e in logs]
    assert "task_restarted" not in events
    assert events.count("task_failed") == (1 if while_in_backoff else 0)
