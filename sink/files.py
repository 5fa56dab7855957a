"""Sinks that write JSON lines: `jsonl` (a durable file) and `stdout` (for piping)."""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from facestream.common.contract.schema import jsonable
from facestream.sink.runner import Item, WriteOutcome


def dedupe_key(result: dict[str, Any]) -> str:
    """What makes two results the same answer: the event's id and image. A repeated result (a
    crash between answer and ack) and a re-published event (a publisher retry on a server
    without idempotent XADD) share both; two events that reuse an id for different images do
    not. Results without an id (unreadable events) fall back to the images-stream entry."""
    event_id = result.get("id")
    if event_id:
        return f"{event_id}\x00{result.get('sha256') or ''}"
    return f"\x00entry:{result.get('entry')}"


class Recent:
    """The last `size` keys seen, in order: a bounded dedupe window."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)


# What serialising a hostile result can raise: RecursionError for deep nesting, ValueError
# for NaN-like or circular values, TypeError/OverflowError for values JSON has no form for.
UNSERIALISABLE = (RecursionError, ValueError, TypeError, OverflowError)


def to_json(result: dict[str, Any]) -> bytes:
    return json.dumps(jsonable(result), separators=(",", ":"), allow_nan=False).encode()


def line(result: dict[str, Any]) -> bytes:
    return to_json(result) + b"\n"


def serialised(items: list[Item]) -> tuple[list[tuple[Item, bytes]], list[tuple[Item, str]]]:
    """Each result serialised on its own: one that cannot be costs only itself (given up,
    with the reason) and never the batch around it, nor looks like an outage."""
    good: list[tuple[Item, bytes]] = []
    dead: list[tuple[Item, str]] = []
    for item in items:
        assert item.result is not None
        try:
            good.append((item, line(item.result)))
        except UNSERIALISABLE as exc:
            dead.append((item, f"unserialisable result: {type(exc).__name__}: {exc}"[:300]))
    return good, dead


class JsonlSink:
    """Appends one JSON line per result. Durable: each batch is flushed (and fsynced, unless
    FACESTREAM_JSONL_DURABILITY=flush) before its entries are acknowledged; a restart reads the
    keys of the last `dedupe_window` lines back, so it never writes a result twice."""

    kind = "jsonl"

    def __init__(self, path: str, durability: str, window: int) -> None:
        self.path = Path(path)
        self.fsync = durability == "fsync"
        self.seen = Recent(window)
        self._file: IO[bytes] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with self.path.open("rb") as f:
                for raw in f:
                    try:
                        self.seen.add(dedupe_key(json.loads(raw)))
                    except ValueError:
                        continue  # a torn last line from a crash mid-write: rewritten below
            self._repair_torn_tail()
        self._file = self.path.open("ab")

    def _repair_torn_tail(self) -> None:
        """Cut a partial last line (a crash mid-write): that result was never acknowledged, so
        it is still pending and gets written again whole."""
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            pos = size
            while pos > 0:
                step = min(4096, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    pos = pos - step + cut + 1
                    break
                pos -= step
            if pos < size:
                f.truncate(pos)

    async def write(self, items: list[Item]) -> WriteOutcome:
        assert self._file is not None
        written = []
        good, dead = serialised(items)
        for item, data in good:
            assert item.result is not None
            key = dedupe_key(item.result)
            if key in self.seen:
                continue
            self._file.write(data)
            self.seen.add(key)
            written.append(item)
        self._file.flush()
        if self.fsync and written:
            os.fsync(self._file.fileno())
        return WriteOutcome(written, dead)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()


class StdoutSink:
    """JSON lines on standard output, flushed per batch."""

    kind = "stdout"

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.out = stream or sys.stdout.buffer

    async def open(self) -> None:
        return None

    async def write(self, items: list[Item]) -> WriteOutcome:
        good, dead = serialised(items)
        for _, data in good:
            self.out.write(data)
        self.out.flush()
        return WriteOutcome([item for item, _ in good], dead)

    async def close(self) -> None:
        self.out.flush()
