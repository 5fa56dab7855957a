"""Latency kept apart by what a request asked of the system, from the client's own knowledge of
the workload it generated (neither system has to say):

- `new`: the first send of a never-sent photo (a model run somewhere);
- `joined`: a photo whose earlier request is still unanswered when this one is sent (it can
  only wait for that run: single-flight, or the old design's lock);
- `hit`: a photo already answered once (the cache can answer).

A request whose photo was sent before but failed, with none in flight, counts as `new` again:
nothing was cached for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HIT = "hit"
NEW = "new"
JOINED = "joined"
CLASSES = (HIT, NEW, JOINED)


class Classifier:
    """Which class a request is in, at the moment it is sent. `image` is the photo's index in
    the workload (benchmarks.loadgen.Workload.pick)."""

    def __init__(self) -> None:
        self.answered: set[int] = set()
        self.in_flight: dict[int, int] = {}

    def kind(self, image: int) -> str:
        """The class a request for `image` sent now would be in (nothing is recorded)."""
        if image in self.answered:
            return HIT
        return JOINED if self.in_flight.get(image) else NEW

    def send(self, image: int) -> str:
        kind = self.kind(image)
        self.in_flight[image] = self.in_flight.get(image, 0) + 1
        return kind

    def done(self, image: int, answered: bool) -> None:
        left = self.in_flight[image] - 1
        if left:
            self.in_flight[image] = left
        else:
            del self.in_flight[image]
        if answered:
            self.answered.add(image)


@dataclass(frozen=True)
class ClassStats:
    n: int
    p50_ms: float
    p99_ms: float

    def cell(self) -> str:
        """'p50 / p99 (n)' for a table; '-' when the class had no answers."""
        if not self.n:
            return "-"
        return f"{self.p50_ms:.1f} / {self.p99_ms:.1f} ({self.n:,})"


@dataclass
class ByClass:
    """Answered requests' latencies in seconds, per class."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CLASSES})

    def add(self, kind: str, latency_s: float) -> None:
        self.seconds[kind].append(latency_s)

    def all(self) -> list[float]:
        return [s for c in CLASSES for s in self.seconds[c]]

    def stats(self) -> dict[str, ClassStats]:
        return {c: summarize(self.seconds[c]) for c in CLASSES}


def summarize(latencies_s: list[float]) -> ClassStats:
    if not latencies_s:
        return ClassStats(0, 0.0, 0.0)
    ms = np.asarray(latencies_s) * 1000
    return ClassStats(len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def merge_rounds(rounds: list[dict[str, ClassStats]]) -> dict[str, ClassStats]:
    """One figure per class from several rounds of a point: the rounds' median p50 and p99,
    their answers added up."""
    out = {}
    for kind in CLASSES:
        seen = [r[kind] for r in rounds if kind in r and r[kind].n]
        if seen:
            out[kind] = ClassStats(
                sum(c.n for c in seen),
                float(np.median([c.p50_ms for c in seen])),
                float(np.median([c.p99_ms for c in seen])),
            )
    return out


def cell(stats: dict[str, ClassStats], kind: str) -> str:
    return stats[kind].cell() if kind in stats else "-"
