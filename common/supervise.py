"""Every long-lived background task of a service runs under one `Supervisor`, so none dies
silently.

A task is a coroutine function run again after it fails: an exception is logged with the
task's name and its traceback (`task_failed`), and the task is started afresh after a backoff
(0.5 s, doubling, capped). A task that fails `max_failures` times within `window_s` is given up
(`task_gave_up`) and the supervisor's `on_give_up` ends the process through its normal stop,
which then exits non-zero, so whatever runs it (`facestream up`, compose, Kubernetes) starts
a fresh one. The cap on the backoff is at most `window_s / max_failures`, so a task that fails
at once on every start is always given up within the window.

A task that returns while the supervisor is not stopping ended without being asked: that
counts as a failure too. Stopping is never a failure: `close` sets `stopped` (which a task's
loop waits on, so it ends by itself even where a library swallowed a cancellation: redis-py's
asyncio client can) and cancels every task; nothing restarts.

`healthy` is false while a critical task is waiting to be restarted or was given up: the
services stop refreshing what tells others they are alive (a detector's served-model entry, a
gateway's `/readyz`) until it runs again.

Tasks that belong to one request (a batch being inferred, a coalesced round trip) are not
supervised: their failure is their caller's answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from facestream.common.log import get_logger
from facestream.common.settings import SupervisionSettings

log = get_logger(__name__)

FIRST_BACKOFF_S = 0.5


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_failures: int = 5
    window_s: float = 60.0
    backoff_max_s: float = 10.0

    @classmethod
    def of(cls, settings: SupervisionSettings) -> RestartPolicy:
        return cls(
            settings.task_max_failures,
            settings.task_failure_window_s,
            settings.task_backoff_max_s,
        )

    @property
    def cap_s(self) -> float:
        # Room for every restart before the give-up inside one window.
        return min(self.backoff_max_s, self.window_s / self.max_failures)

    def delay_s(self, consecutive: int) -> float:
        """The wait before the restart after the `consecutive`-th failure in a row (1, 2...)."""
        return min(self.cap_s, FIRST_BACKOFF_S * 2.0 ** min(consecutive - 1, 30))


class TaskEnded(RuntimeError):
    """A supervised task returned while nothing asked it to stop."""


@dataclass(slots=True)
class _Task:
    name: str
    run: Callable[[], Awaitable[None]]
    critical: bool
    task: asyncio.Task[None] | None = None
    down: bool = False  # failed and waiting to restart, or given up
    failures: int = 0  # all failures, for the logs and tests


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy,
        on_give_up: Callable[[str], None],
        logger: Any = None,
    ) -> None:
        self.policy = policy
        self.on_give_up = on_give_up
        self.log = logger if logger is not None else log
        self.gave_up: str | None = None  # the first task given up
        self.stopped = asyncio.Event()  # set by `close`: the tasks' loops end on it
        self._tasks: dict[str, _Task] = {}

    def start(
        self, name: str, run: Callable[[], Awaitable[None]], *, critical: bool = True
    ) -> None:
        """Run `run()` as the task `name` until `close`; a critical task's absence makes the
        supervisor unhealthy."""
        known = self._tasks.get(name)
        if known is not None and known.task is not None and not known.task.done():
            raise RuntimeError(f"a task named {name!r} is already supervised")
        entry = _Task(name, run, critical)
        entry.task = asyncio.create_task(self._keep(entry), name=name)
        self._tasks[name] = entry

    @property
    def healthy(self) -> bool:
        return not self.down()

    def down(self) -> list[str]:
        """The critical tasks not running now."""
        return [t.name for t in self._tasks.values() if t.critical and t.down]

    def running(self, name: str) -> bool:
        entry = self._tasks.get(name)
        return (
            entry is not None
            and not entry.down
            and entry.task is not None
            and not entry.task.done()
        )

    def failures(self, name: str) -> int:
        entry = self._tasks.get(name)
        return entry.failures if entry is not None else 0

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    async def close(self) -> None:
        """Stop and cancel every task and wait for them: nothing restarts from here on."""
        self.stopped.set()
        tasks = [t.task for t in self._tasks.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, entry: _Task) -> None:
        policy = self.policy
        recent: deque[float] = deque()
        consecutive = 0
        while not self.stopping:
            started = time.monotonic()
            try:
                await entry.run()
                if self.stopping:
                    return
                raise TaskEnded(f"task {entry.name} returned without being asked to stop")
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.stopping:
                    self.log.warning("task_failed_while_stopping", task=entry.name, exc_info=True)
                    return
                now = time.monotonic()
                entry.down = True
                entry.failures += 1
                if now - started >= policy.cap_s:
                    consecutive = 0  # it ran a while: start the backoff over
                consecutive += 1
                recent.append(now)
                while recent and recent[0] < now - policy.window_s:
                    recent.popleft()
                if len(recent) >= policy.max_failures:
                    self.log.error(
                        "task_gave_up",
                        task=entry.name,
                        failures=len(recent),
                        window_s=policy.window_s,
                        hint="the process stops and exits non-zero, to be started afresh",
                        exc_info=True,
                    )
                    if self.gave_up is None:
                        self.gave_up = entry.name
                        self.on_give_up(entry.name)
                    return
                delay = policy.delay_s(consecutive)
                self.log.error(
                    "task_failed",
                    task=entry.name,
                    failures=len(recent),
                    restart_in_s=delay,
                    exc_info=True,
                )
            await asyncio.sleep(delay)
            entry.down = False
            self.log.info("task_restarted", task=entry.name)
