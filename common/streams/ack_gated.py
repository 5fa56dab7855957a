"""The ack-gated scripts (emit, dead_letter, sink_dead_letter): each publishes only what its
XACK counted, so an entry settled twice (a claimed-over retry) is published once.

Each is one value with two ways to run it: `queue` sends the script (its keys share a slot: one
server, or a partition's tagged streams), and `split` gives its meaning as two ordered steps
for keys in different slots of a cluster (the untagged v1 names): what it publishes, then the
acknowledgements. A crash between the two repeats what was published (readers dedupe by id),
never loses it. Both are written here, beside each other, so a script and its fallback cannot
drift apart; the scripts themselves are common/streams/lua/<name>.lua.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facestream.common.streams.scripts import Scripts, ScriptTarget, Step
from facestream.common.streams.types import AsyncPipeline


@dataclass(frozen=True, slots=True)
class Split:
    publish: Step
    acknowledge: Step


def acknowledge_entries(
    pipe: AsyncPipeline, stream: str, group: str, delete: bool, entries: list[str]
) -> None:
    """XACK (and XDEL, for image entries that hold the image bytes) outside a script."""
    if not entries:
        return
    pipe.xack(stream, group, *entries)
    if delete:
        pipe.xdel(stream, *entries)


@dataclass(frozen=True, slots=True)
class Emit:
    """Acknowledge answered image entries and publish each one's result (emit.lua)."""

    images: str
    results: str
    group: str
    delete_acked: bool
    pairs: list[tuple[str, bytes]]  # entry id, packed result

    def queue(self, scripts: Scripts, pipe: ScriptTarget) -> Any:
        """One answer per pair: 1 (acked and published) or 0 (acked elsewhere already)."""
        args: list[Any] = [self.group, "1" if self.delete_acked else "0"]
        for entry_id, payload in self.pairs:
            args += [entry_id, payload]
        return scripts.call("emit", pipe, [self.images, self.results], args)

    def split(self) -> Split:
        def publish(pipe: AsyncPipeline) -> None:
            for _, payload in self.pairs:
                pipe.xadd(self.results, {"result": payload})

        def acknowledge(pipe: AsyncPipeline) -> None:
            entries = [entry for entry, _ in self.pairs]
            acknowledge_entries(pipe, self.images, self.group, self.delete_acked, entries)

        return Split(publish, acknowledge)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up on image entries delivered too often (dead_letter.lua): acknowledge each,
    publish its `max_deliveries` error result and copy the event to the dead-letter stream."""

    images: str
    results: str
    dlq: str
    group: str
    delete_acked: bool
    consumer: str
    quads: list[tuple[str, bytes, bytes, int]]  # entry id, packed result, event, deliveries

    def queue(self, scripts: Scripts, pipe: ScriptTarget) -> Any:
        args: list[Any] = [self.group, "1" if self.delete_acked else "0", self.consumer]
        for quad in self.quads:
            args += list(quad)
        return scripts.call("dead_letter", pipe, [self.images, self.results, self.dlq], args)

    def split(self) -> Split:
        def publish(pipe: AsyncPipeline) -> None:
            for entry, result, event, deliveries in self.quads:
                pipe.xadd(self.results, {"result": result})
                pipe.xadd(
                    self.dlq,
                    {
                        "event": event,
                        "reason": "max_deliveries",
                        "consumer": self.consumer,
                        "deliveries": deliveries,
                        "entry": entry,
                        "stream": self.images,
                        "group": self.group,
                    },
                )

        def acknowledge(pipe: AsyncPipeline) -> None:
            entries = [quad[0] for quad in self.quads]
            acknowledge_entries(pipe, self.images, self.group, self.delete_acked, entries)

        return Split(publish, acknowledge)


@dataclass(frozen=True, slots=True)
class SinkDeadLetter:
    """A sink gives up on results-stream entries (sink_dead_letter.lua): acknowledge each and
    copy it to the dead-letter stream with the reason."""

    results: str
    dlq: str
    group: str
    sink: str
    consumer: str
    triples: list[tuple[str, bytes, str]]  # entry id, result payload, reason

    def queue(self, scripts: Scripts, pipe: ScriptTarget) -> Any:
        args: list[Any] = [self.group, self.sink, self.consumer]
        for triple in self.triples:
            args += list(triple)
        return scripts.call("sink_dead_letter", pipe, [self.results, self.dlq], args)

    def split(self) -> Split:
        def publish(pipe: AsyncPipeline) -> None:
            for entry, payload, reason in self.triples:
                pipe.xadd(
                    self.dlq,
                    {
                        "result": payload,
                        "reason": reason,
                        "sink": self.sink,
                        "group": self.group,
                        "consumer": self.consumer,
                        "entry": entry,
                    },
                )

        def acknowledge(pipe: AsyncPipeline) -> None:
            entries = [triple[0] for triple in self.triples]
            acknowledge_entries(pipe, self.results, self.group, False, entries)

        return Split(publish, acknowledge)
