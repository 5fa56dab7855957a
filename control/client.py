"""`facestream detect | publish | results`: the command-line client, straight to Redis."""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import RESULT_FIELD, ImageEvent, jsonable
from facestream.common.imaging.drawing import draw_faces
from facestream.common.imaging.photo import PhotoError
from facestream.common.progress import Progress
from facestream.common.settings import Settings
from facestream.common.streams.connection import redact
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.groups import ensure_group_sync
from facestream.common.streams.serving import live_detectors
from facestream.common.streams.types import SyncClient
from facestream.ingest.publisher import Overloaded, Publisher, PublishError, make_event

WINDOW = 256  # images published but not yet answered, at most: memory stays bounded


def expand(paths: list[str]) -> list[Path]:
    """Files, directories (recursively) and glob patterns, in a stable order."""
    out: list[Path] = []
    for raw in paths:
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            raise FileNotFoundError(f"no file matches {raw!r}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out += sorted(f for f in p.rglob("*") if f.is_file())
            elif p.is_file():
                out.append(p)
            else:
                raise FileNotFoundError(f"no such file or directory: {m}")
    return out


def no_detector(settings: Settings, client: SyncClient) -> str | None:
    """Why nothing would answer (None: a detector is alive). Live detectors are those whose
    entry in the served-model hash is still in its time (common/streams/serving.py): each
    detector refreshes its own with its heartbeat, so a killed one drops out by itself."""
    url = redact(settings.redis_url)
    keys = Keys(settings.prefix, settings.partitions)
    try:
        alive = live_detectors(client.hgetall(keys.serving(settings.detector_group)))
    except REDIS_ERRORS as exc:
        return f"cannot reach Redis at {url}: {exc}\nset FACESTREAM_REDIS_URL to facestream's Redis"
    if alive:
        return None
    return (
        f"no detector is alive in group {settings.detector_group!r} on {url} "
        f"(prefix {settings.prefix!r}): nothing would answer.\n"
        "Start one with `facestream detector` (same FACESTREAM_* settings), or a whole local "
        "stack with `facestream up`; check FACESTREAM_REDIS_URL and FACESTREAM_PREFIX; "
        "--no-wait-check publishes anyway."
    )


# A file name becomes part of an event id (at most MAX_ID_CHARS) and of a `--draw` output
# name (at most 255 bytes on common file systems): longer names keep a readable head and a
# hash of the whole, so two long names that share a head stay apart.
ID_NAME_CHARS = 96
DRAWN_STEM_BYTES = 200


def _shorten(name: str, limit: int, *, in_bytes: bool) -> str:
    """`name` as valid UTF-8 (undecodable bytes of a file name become U+FFFD) within `limit`
    characters, or UTF-8 bytes, with a hash of the original when it had to be cut."""
    raw = name.encode("utf-8", "surrogateescape")
    clean = raw.decode("utf-8", "replace")
    if len(clean.encode() if in_bytes else clean) <= limit:
        return clean
    digest = hashlib.sha256(raw).hexdigest()[:12]
    cut = limit - len(digest) - 1
    head = clean.encode()[:cut].decode("utf-8", "ignore") if in_bytes else clean[:cut]
    return f"{head}~{digest}"


def event_id(path: Path) -> str:
    """`<file name>-<8 hex>`: readable in results, unique per publish, never too long (the
    contract counts an id in characters)."""
    return f"{_shorten(path.name, ID_NAME_CHARS, in_bytes=False)}-{uuid.uuid4().hex[:8]}"


class Drawer:
    """Writes each answered photo with its faces drawn into one directory (`--draw`)."""

    def __init__(self, directory: Path, max_pixels: int, max_scans: int) -> None:
        self.dir = directory
        self.max_pixels = max_pixels
        self.max_scans = max_scans
        self.used: set[str] = set()
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, path: Path, faces: list[dict[str, Any]]) -> Path | None:
        """The drawn photo's path, or None (said on stderr) when it could not be written:
        one photo's failure never stops the others."""
        stem = _shorten(path.stem, DRAWN_STEM_BYTES, in_bytes=True)
        name = f"{stem}.faces.jpg"
        n = 1
        while name in self.used:  # same file name from two directories: keep both
            n += 1
            name = f"{stem}-{n}.faces.jpg"
        self.used.add(name)
        out = self.dir / name
        try:
            # Read again rather than held: at most WINDOW images stay in memory.
            drawn = draw_faces(path.read_bytes(), faces, self.max_pixels, self.max_scans)
            out.write_bytes(drawn)
        except (OSError, PhotoError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"facestream detect: cannot draw {path}: {reason}", file=sys.stderr)
            return None
        return out


def publish_retrying(publisher: Publisher, events: list[ImageEvent]) -> list[str]:
    """Publish, waiting out backpressure instead of failing."""
    while True:
        try:
            return publisher.publish_many(events)
        except Overloaded as exc:
            time.sleep(exc.retry_after_s)


class Waiter:
    """Reads one private reply stream; yields results as they arrive."""

    def __init__(self, client: SyncClient, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.last = "0-0"

    def poll(self, block_ms: int) -> Iterator[dict[str, Any]]:
        reply: Any = self.client.xread({self.stream: self.last}, count=500, block=block_ms)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last = entry_id.decode()
                yield msgpack.unpackb(fields[RESULT_FIELD], raw=False)
        if reply:
            self.client.xtrim(self.stream, minid=self.last)


def door_error(path: Path, exc: PublishError | OSError) -> dict[str, Any]:
    code = exc.code if isinstance(exc, PublishError) else "unreadable"
    message = exc.message if isinstance(exc, PublishError) else str(exc)
    return {"path": str(path), "error": {"code": code, "message": message}}


def detect(
    settings: Settings,
    client: SyncClient,
    paths: list[Path],
    *,
    table: bool,
    timeout_s: float,
    source: str | None = None,
    draw: Path | None = None,
    crops: bool = False,
) -> int:
    keys = Keys(settings.prefix, settings.partitions)
    drawer = (
        Drawer(draw, settings.max_pixels, settings.max_jpeg_scans) if draw is not None else None
    )
    reply = keys.reply_stream(f"cli-{uuid.uuid4().hex[:12]}")
    publisher = Publisher(settings, client)
    waiter = Waiter(client, reply)
    progress = Progress(len(paths), "detect")
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    waiting: dict[tuple[str, str], Path] = {}
    queue = list(paths)
    last_progress = time.monotonic()

    def emit(row: dict[str, Any]) -> None:
        faces = len(row.get("faces") or [])
        if "error" in row:
            failed.append(row["path"])
        elif drawer is not None:
            drawn = drawer.write(Path(row["path"]), row.get("faces") or [])
            if drawn is not None:
                row = {**row, "drawn": str(drawn)}
        progress.advance(note=f"{faces} faces" if "error" not in row else row["error"]["code"])
        if table:
            rows.append(row)
        else:
            print(json.dumps(jsonable(row), separators=(",", ":")), flush=True)

    try:
        while queue or waiting:
            batch: list[ImageEvent] = []
            while queue and len(waiting) + len(batch) < WINDOW and len(batch) < 64:
                path = queue.pop(0)
                try:
                    event = make_event(
                        path.read_bytes(),
                        event_id(path),
                        source=source or _shorten(str(path), 256, in_bytes=True),
                        reply_to=reply,
                        limits=settings.limits(),
                        crops=crops,
                    )
                except (PublishError, OSError) as exc:
                    emit(door_error(path, exc))
                    continue
                assert event.sha256 is not None
                waiting[(event.id, event.sha256)] = path
                batch.append(event)
            if batch:
                publish_retrying(publisher, batch)
            for result in waiter.poll(200):
                path_of = waiting.pop((result.get("id", ""), result.get("sha256") or ""), None)
                if path_of is not None:
                    emit({"path": str(path_of), **result})
                    last_progress = time.monotonic()
            if waiting and not queue and time.monotonic() - last_progress > timeout_s:
                for path in waiting.values():
                    emit(
                        {
                            "path": str(path),
                            "error": {
                                "code": "timeout",
                                "message": f"no answer within {timeout_s:g} s",
                            },
                        }
                    )
                waiting.clear()
    finally:
        progress.close()
        client.delete(reply)
    if table:
        print_table(rows)
    if failed:
        print(f"{len(failed)} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failed else 0


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max([len(r["path"]) for r in rows] + [4])
    print(f"{'path':<{width}}  {'faces':>5}  {'size':>9}  {'best':>5}  cached  error")
    for r in rows:
        faces = r.get("faces") or []
        best = f"{max(f['score'] for f in faces):.3f}" if faces else "-"
        size = f"{r['width']}x{r['height']}" if r.get("width") else "-"
        err = r["error"]["code"] if "error" in r else ""
        cached = "yes" if r.get("cached") else "no"
        print(f"{r['path']:<{width}}  {len(faces):>5}  {size:>9}  {best:>5}  {cached:>6}  {err}")


def publish(settings: Settings, client: SyncClient, paths: list[Path]) -> int:
    """Fire and forget: prints `id<TAB>path` per published image."""
    publisher = Publisher(settings, client)
    failed = 0
    for path in paths:
        try:
            event = make_event(
                path.read_bytes(),
                event_id(path),
                source=_shorten(str(path), 256, in_bytes=True),
                limits=settings.limits(),
            )
        except (PublishError, OSError) as exc:
            print(json.dumps(door_error(path, exc)), file=sys.stderr)
            failed += 1
            continue
        publish_retrying(publisher, [event])
        print(f"{event.id}\t{path}", flush=True)
    return 1 if failed else 0


def _decode_id(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).partition(
        "-"
    )
    return int(ms), int(seq or 0)


def _print_result(fields: Any) -> None:
    result = msgpack.unpackb(fields[RESULT_FIELD], raw=False)
    print(json.dumps(jsonable(result), separators=(",", ":")), flush=True)


def empty_note(settings: Settings, jsonl_path: str | None) -> str:
    """Why `results` found nothing, and where results are kept for good."""
    stream = Keys(settings.prefix, settings.partitions).parts[0].results
    where = (
        f"this stack's jsonl sink keeps every result in {jsonl_path}"
        if jsonl_path
        else "a sink keeps every result for good (`facestream sink jsonl` writes a file)"
    )
    return (
        f"no results in {stream}{'' if settings.partitions == 1 else ' (or its partitions)'}: "
        "results stay in the stream until every sink group has acknowledged them, then the "
        f"detectors trim all but the newest {settings.results_keep} (FACESTREAM_RESULTS_KEEP); "
        f"{where}. `facestream results --follow` waits for new ones."
    )


def last_results(
    settings: Settings, client: SyncClient, n: int, jsonl_path: str | None = None
) -> int:
    """Print the newest `n` results still in the stream, oldest first (across partitions,
    by entry id: the time each was written)."""
    keys = Keys(settings.prefix, settings.partitions)
    found: list[tuple[tuple[int, int], Any]] = []
    for part in keys.parts:  # one key per call: a cluster allows no more
        newest: Any = client.xrevrange(part.results, count=n)
        found += [(_decode_id(e), f) for e, f in newest]
    found.sort(key=lambda item: item[0])
    for _, fields in found[-n:]:
        _print_result(fields)
    if not found:
        print(empty_note(settings, jsonl_path), file=sys.stderr)
    return 0


def results(
    settings: Settings,
    client: SyncClient,
    *,
    follow: bool,
    group: str | None,
    start: str | None,
    count: int | None,
    jsonl_path: str | None = None,
) -> int:
    """Print results as JSON lines: as a consumer group (acknowledged once printed), or from
    an entry id ("0": the beginning; default with --follow: only new ones). With several
    partitions each is read in turn (one key per read: a cluster allows no more), so results
    come in order within a partition, not across them."""
    keys = Keys(settings.prefix, settings.partitions)
    printed = 0
    cursors = {p.results: start or ("$" if follow else "0") for p in keys.parts}
    if group:
        for part in keys.parts:
            ensure_group_sync(client, part.results, group, start or "0")
    # One partition: a blocking read. Several: a poll of each, then a short nap when all
    # were empty (a blocking read on one would delay the others).
    block = settings.block_ms if follow and keys.partitions == 1 else None
    try:
        while count is None or printed < count:
            found = 0
            for stream in cursors:
                n = 500 if count is None else min(500, count - printed)
                if n <= 0:
                    break
                if group:
                    reply: Any = client.xreadgroup(
                        group, settings.consumer, {stream: ">"}, count=n, block=block
                    )
                else:
                    reply = client.xread({stream: cursors[stream]}, count=n, block=block)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    cursors[stream] = entry_id.decode()
                    _print_result(fields)
                    printed += 1
                if group and entries:
                    client.xack(stream, group, *[e for e, _ in entries])
                found += len(entries)
            if not found:
                if not follow:
                    break
                if block is None:
                    time.sleep(min(0.1, settings.block_ms / 1000))
    except KeyboardInterrupt:
        pass
    if not printed and not follow:
        print(empty_note(settings, jsonl_path), file=sys.stderr)
    return 0
