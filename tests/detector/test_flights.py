"""The table of images in flight: every move keeps its counts, and parked images leave
partition by partition in turn (pure: no Redis, no model)."""

from __future__ import annotations

from facestream.common.contract.keys import Keys
from facestream.control.samples import sample_photos
from facestream.detector.flights import Flights, State
from facestream.detector.jobs import Job
from facestream.ingest.publisher import make_event

PARTS = Keys("t", 2).parts
IMAGE = next(iter(sample_photos().values()))


def job(sha: str, part: int = 0, entry: str = "1-0") -> Job:
    return Job(PARTS[part], entry, make_event(IMAGE, f"e-{sha}-{entry}"), sha)


def counts(f: Flights) -> dict[State, tuple[int, int]]:
    return {s: (f.count(s), f.entries_in(s)) for s in State}


def recount(f: Flights) -> dict[State, tuple[int, int]]:
    """The same counts, computed from the flights themselves."""
    out = dict.fromkeys(State, (0, 0))
    for sha in ("a", "b", "c"):
        state = f.state(sha)
        if state is not None:
            images, entries = out[state]
            out[state] = (images + 1, entries + len(f.jobs(sha)))
    return out


def test_every_move_keeps_the_counts() -> None:
    f = Flights()
    f.resolve("a", [job("a")])
    f.resolve("b", [job("b"), job("b", entry="2-0")])
    assert f.join(job("a", entry="3-0")) is State.RESOLVING
    assert f.join(job("c")) is None
    f.defer("a", due=1.0, delay_ms=20)
    assert f.join(job("a", entry="4-0")) is State.DEFERRED
    f.queue_for_inference("b")
    assert counts(f) == recount(f)
    assert counts(f)[State.DEFERRED] == (1, 3) and counts(f)[State.PARKED] == (1, 2)
    assert f.due(0.5) == [] and f.due(1.0) == ["a"]
    f.resolve("a", [])  # came due: looked up again, with its entries
    assert counts(f)[State.RESOLVING] == (1, 3)
    assert f.dispatch(4) == ["b"]
    assert counts(f) == recount(f)
    assert len(f.end("b")) == 2 and len(f.end("a")) == 3
    assert all(counts(f)[s] == (0, 0) for s in State)


def test_parked_images_leave_partition_by_partition() -> None:
    f = Flights()
    for i in range(4):  # a backlog on partition 0
        f.resolve(f"p0-{i}", [job(f"p0-{i}", 0)])
        f.queue_for_inference(f"p0-{i}")
    f.resolve("p1", [job("p1", 1)])  # one image on a quiet partition, parked last
    f.queue_for_inference("p1")
    first = f.dispatch(2)
    assert "p1" in first  # not behind the whole backlog
    assert f.dispatch(10) == [f"p0-{i}" for i in range(4) if f"p0-{i}" not in first]
