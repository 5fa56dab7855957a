"""The images a detector holds, one flight per distinct image, and every move between states.

    read -> RESOLVING --hit------------------------------------------> answered
                      --lock acquired--> PARKED --dispatch--> INFERRING --> answered
                      --busy (another worker infers it)--> DEFERRED --due--> RESOLVING

Each image is in at most one state, so an entry for an image already in flight rides along
with it (no second look-up, no second inference). PARKED is the only state that grows with
misses while inference is saturated: the detector stops reading once `max_parked` images wait
there (or `max_deferred` entries are deferred), so what it holds stays bounded while hits, which
leave at once, never wait behind misses. Parked images leave partition by partition in turn.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass

from facestream.detector import metrics
from facestream.detector.jobs import Job


class State(enum.Enum):
    RESOLVING = "resolving"  # its Bloom check and cache / lock look-up are in flight
    DEFERRED = "deferred"  # another worker holds its lock: re-checked when due
    PARKED = "parked"  # its lock is ours: waiting for an inference slot
    INFERRING = "inferring"  # being decoded and inferred


@dataclass(slots=True)
class Flight:
    state: State
    jobs: list[Job]
    due: float = 0.0  # DEFERRED: monotonic time of the next re-check
    delay_ms: int = 0  # DEFERRED: the backoff that led to `due`
    parked_at: float = 0.0  # PARKED: since when (perf_counter), for its `parked` stage


class Flights:
    def __init__(self) -> None:
        # Insertion order is kept: parked images are dispatched first come, first served.
        self._by_sha: dict[str, Flight] = {}
        self._count = dict.fromkeys(State, 0)  # images per state
        # Entries per state, kept as they move: the readers ask before every read.
        self._entries = dict.fromkeys(State, 0)
        self._turn = 0  # the partition whose parked images go first at the next dispatch

    def __contains__(self, sha: str) -> bool:
        return sha in self._by_sha

    def state(self, sha: str) -> State | None:
        flight = self._by_sha.get(sha)
        return None if flight is None else flight.state

    def join(self, job: Job) -> State | None:
        """Add an entry to its image's flight, if the image is in flight; the state it joined."""
        flight = self._by_sha.get(job.sha)
        if flight is None:
            return None
        flight.jobs.append(job)
        self._entries[flight.state] += 1
        return flight.state

    def _move(self, sha: str, flight: Flight, state: State) -> None:
        self._count[flight.state] -= 1
        self._entries[flight.state] -= len(flight.jobs)
        flight.state = state
        self._count[state] += 1
        self._entries[state] += len(flight.jobs)
        self._by_sha[sha] = flight

    def resolve(self, sha: str, jobs: list[Job]) -> list[Job]:
        """A new image, or a deferred one that came due: its look-up starts. The list returned
        is the flight's own: entries that join meanwhile are in it."""
        flight = self._by_sha.get(sha)
        if flight is None:
            flight = self._by_sha[sha] = Flight(State.RESOLVING, jobs)
            self._count[State.RESOLVING] += 1
            self._entries[State.RESOLVING] += len(jobs)
        else:
            self._move(sha, flight, State.RESOLVING)
        return flight.jobs

    def defer(self, sha: str, due: float, delay_ms: int) -> None:
        flight = self._by_sha[sha]
        flight.due, flight.delay_ms = due, delay_ms
        self._move(sha, flight, State.DEFERRED)

    def queue_for_inference(self, sha: str) -> None:
        flight = self._by_sha[sha]
        flight.parked_at = time.perf_counter()
        self._move(sha, flight, State.PARKED)

    def dispatch(self, limit: int) -> list[str]:
        """Up to `limit` parked images, now inferring: oldest first within a partition, and
        the partitions in turn, so a backlog on one never starves a quiet one."""
        queues: dict[int, list[str]] = {}
        for sha, flight in self._by_sha.items():
            if flight.state is State.PARKED:
                queues.setdefault(flight.jobs[0].part.index, []).append(sha)
        order = sorted(queues, key=lambda index: (index - self._turn) % (max(queues) + 1))
        taken: list[str] = []
        while len(taken) < limit and any(queues.values()):
            for index in order:
                if queues[index] and len(taken) < limit:
                    taken.append(queues[index].pop(0))
                    self._turn = index + 1
        now = time.perf_counter()
        for sha in taken:
            flight = self._by_sha[sha]
            metrics.STAGE_PARKED.observe(now - flight.parked_at)
            self._move(sha, flight, State.INFERRING)
        return taken

    def end(self, sha: str) -> list[Job]:
        """The image is answered (or given back): its flight ends with all its entries."""
        flight = self._by_sha.pop(sha)
        self._count[flight.state] -= 1
        self._entries[flight.state] -= len(flight.jobs)
        return flight.jobs

    def jobs(self, sha: str) -> list[Job]:
        return self._by_sha[sha].jobs

    def due(self, now: float) -> list[str]:
        return [
            sha for sha, f in self._by_sha.items() if f.state is State.DEFERRED and f.due <= now
        ]

    def delay_of(self, sha: str) -> int:
        return self._by_sha[sha].delay_ms

    def next_due(self) -> float | None:
        return min(
            (f.due for f in self._by_sha.values() if f.state is State.DEFERRED), default=None
        )

    def count(self, state: State) -> int:
        """Images in `state`."""
        return self._count[state]

    def entries_in(self, state: State) -> int:
        return self._entries[state]

    def held(self, partition: int) -> set[str]:
        """Entry ids of one partition held in any state (they are in the pending list too)."""
        return {job.entry for job in self._all() if job.part.index == partition}

    def _all(self) -> Iterator[Job]:
        for flight in self._by_sha.values():
            yield from flight.jobs
