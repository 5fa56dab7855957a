"""Where a cache hit's time goes at the gateway: the four parts Triton reports for a request
(perf_analyzer's queue, compute input, compute infer and compute output), in the order a hit
passes them on the raw-body fast path (ingest/http/fastpath.py), so they add up to its time in
the gateway from the request's headers to its answer's bytes:

    compute_input   request received -> its event made: the body read, the query parsed, the
                    image's sha256, the event built
    queue           event made -> its look-up batch sent: the rest of the event-loop cycle
                    (the batch is every request of the cycle, ingest/coalesce.py PerCycle),
                    the served-model check and the batch's result drafts
    compute_infer   the batch's look-up round trip (on one server one cached_answers.lua call:
                    the Bloom filter, the cache entries, the hits' results published)
    compute_output  round trip back -> the answer serialised: its body built, the request's
                    task woken, the JSON

Observed only for the requests the look-up answered (the hit class); a miss goes on to the
detectors, whose stages are `facestream_stage_seconds` (detector/metrics.py). The look-up
batch runs in a task of its own, so it cannot hand times back through the call: it finds each
request's clock here by its event (`looked_up`), for as long as the request waits (`timing`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from facestream.common.contract.schema import ImageEvent
from facestream.ingest.http import metrics


@dataclass(slots=True)
class HitClock:
    """One waiting request's times (`time.perf_counter()`) on its way through the hit path."""

    received: float  # the request's headers in, its body not read yet
    made: float = 0.0  # its event made
    sent: float = 0.0  # its look-up batch sent
    back: float = 0.0  # that round trip back
    hit: bool = False  # the look-up found it: the gateway answers it

    def observe(self) -> None:
        """Its answer is serialised: each of its four stages observed once."""
        done = time.perf_counter()
        metrics.HIT_INPUT.observe(self.made - self.received)
        metrics.HIT_QUEUE.observe(self.sent - self.made)
        metrics.HIT_INFER.observe(self.back - self.sent)
        metrics.HIT_OUTPUT.observe(done - self.back)


# The clocks of the requests waiting on this process's look-ups, by their event's id(): the
# event is alive (its request holds it) for as long as its clock is here.
_clocks: dict[int, HitClock] = {}


def start(event: ImageEvent, clock: HitClock) -> None:
    """`event`'s request waits for its answer from now: its look-up may stamp `clock`."""
    _clocks[id(event)] = clock


def stop(event: ImageEvent) -> None:
    """Its wait is over (answered or not): no more stamps."""
    _clocks.pop(id(event), None)


def looked_up(events: Iterable[ImageEvent], sent: float, found: Iterable[bool]) -> None:
    """A look-up batch's round trip, sent at `sent`, is back: per event of the batch whether
    the cache answers it. Requests with no clock (other routes) are passed over."""
    if not _clocks:
        return
    back = time.perf_counter()
    for event, hit in zip(events, found, strict=True):
        clock = _clocks.get(id(event))
        if clock is not None:
            clock.sent, clock.back, clock.hit = sent, back, hit
