"""What the detector does with one batch of images-stream entries.

Every distinct image of a batch becomes a flight (detector/flights.py: one table owns every
move between states); the resolver (detector/resolver.py) asks the Bloom filter and then the
cache or the single-flight lock for all of them in two round trips; hits are written at once
(one pipelined round trip, detector/writer.py); misses are parked and dispatched to inference a
few model calls at a time, each written as soon as it is done. Back-pressure applies to misses
only: the readers stop when `max_parked` misses wait (or too many entries are deferred, or too
many writes are in flight), never because inference is busy, so a hit's latency does not
depend on how many misses are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from facestream.common.cache.lookup import Acquired, Checks, Hit, Lookup
from facestream.common.cache.store import Put
from facestream.common.contract.keys import Partition
from facestream.common.contract.schema import (
    EVENT_FIELD,
    ErrorCode,
    Face,
    ImageEvent,
    Result,
    SchemaError,
    decode_event,
)
from facestream.common.imaging.align import CropCaps
from facestream.common.log import get_logger
from facestream.common.metrics import entry_age_s
from facestream.detector import metrics
from facestream.detector.context import Context
from facestream.detector.flights import Flights, State
from facestream.detector.imaging import image_size
from facestream.detector.inference import Inference
from facestream.detector.jobs import Job, ResultFactory
from facestream.detector.model.face_model import FaceModel
from facestream.detector.resolver import Resolver
from facestream.detector.writer import BatchWrite, Writer

log = get_logger(__name__)


class BatchProcessor:
    def __init__(self, ctx: Context, model: FaceModel) -> None:
        settings = self.settings = ctx.settings
        self.keys = ctx.keys
        self.model = model
        self.locks = ctx.locks
        self.cache = ctx.cache
        self.writer = Writer(ctx)
        caps = CropCaps(settings.max_crops, settings.max_crop_bytes)
        self.results = ResultFactory(
            ctx.model_tag,
            settings.consumer,
            settings.max_pixels,
            ctx.counters,
            caps,
            settings.max_jpeg_scans,
        )
        self.counters = ctx.counters
        self.limits = settings.limits()
        self.reply_prefix = ctx.keys.reply_stream("")
        self.flights = Flights()
        self.resolver = Resolver(ctx)
        self.writes: set[asyncio.Task[None]] = set()  # batches of answers being written
        # Answers between their flight's end and their ack: still pending in Redis, and in hand.
        self.writing: dict[int, BatchWrite] = {}  # by id(): two writes may hold equal data
        self.inferring: set[asyncio.Task[None]] = set()  # model calls with their writes
        self.lost_writes = 0
        self.inference = Inference(settings, model)
        self.max_batch = self.inference.max_batch
        self.batcher = self.inference.batcher
        # Model calls in flight: one running, the next ones being decoded meanwhile.
        self.slots = settings.decode_threads + 1

    def _reply_ok(self, event: ImageEvent) -> bool:
        # Only reply streams under our prefix: an event must not make us write elsewhere.
        return event.reply_to is None or event.reply_to.startswith(self.reply_prefix)

    # --- stage 1: parse -------------------------------------------------------------------
    def parse(
        self,
        part: Partition,
        entries: list[tuple[bytes, Any]],
        deliveries: dict[str, int] | None = None,
    ) -> tuple[list[Job], BatchWrite]:
        jobs: list[Job] = []
        out = BatchWrite()
        metrics.EVENTS_READ.inc(len(entries))
        for raw_id, fields in entries:
            entry = raw_id.decode()
            self.counters.read += 1
            if not fields:
                # Deleted from the stream while pending: nothing left to answer; just ack.
                out.ack_only.append((part, entry))
                self.counters.deleted += 1
                continue
            if deliveries is None:  # a first delivery: its time in the stream ends now
                metrics.STAGE_STREAM.observe(entry_age_s(entry))
            count = deliveries.get(entry, 1) if deliveries else 1
            if count >= self.settings.max_deliveries:
                out.dead.append((part, *self._give_up(entry, fields, count)))
                continue
            event = None
            try:
                event = decode_event(fields.get(EVENT_FIELD), self.limits)
                if not self._reply_ok(event):
                    raise SchemaError(
                        ErrorCode.BAD_EVENT,
                        f"reply_to must be a stream key under {self.reply_prefix!r}",
                        event.id,
                    )
                jobs.append(Job(part, entry, event, event.content_sha256()))
            except SchemaError as err:
                log.warning(
                    "bad_event",
                    entry=entry,
                    event_id=err.event_id,
                    code=str(err.code),
                    reason=err.message,
                )
                reply = event.reply_to if event is not None and self._reply_ok(event) else None
                out.add(part, self.results.error(entry, err, event), reply)
        return jobs, out

    def _give_up(self, entry: str, fields: Any, count: int) -> tuple[Result, bytes, int]:
        """A poison message: delivered `count` times and never answered (each try died)."""
        payload = fields.get(EVENT_FIELD) or b""
        event = None
        with contextlib.suppress(SchemaError):  # answered all the same, with what it tells
            event = decode_event(payload, self.limits)
        err = SchemaError(
            ErrorCode.MAX_DELIVERIES,
            f"delivered {count} times without an answer (limit {self.settings.max_deliveries})",
            event.id if event else "",
        )
        return self.results.error(entry, err, event), payload, count

    # --- stage 2: look up -----------------------------------------------------------------
    async def handle(
        self,
        part: Partition,
        entries: list[tuple[bytes, Any]],
        deliveries: dict[str, int] | None = None,
    ) -> None:
        """Entries read from one partition's images stream; `deliveries`: counts for
        re-delivered entries (own pending, claimed ones)."""
        jobs, out = self.parse(part, entries, deliveries)
        new: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            # Same image already in flight here: ride along, no look-up, no inference.
            joined = self.flights.join(job) if job.sha not in new else None
            if joined is State.DEFERRED:
                self.counters.deferred += 1
            elif joined is None:
                new[job.sha].append(job)
        # In the table before the first round trip: other readers' entries join these.
        shas = list(new)
        for sha in shas:
            self.flights.resolve(sha, new[sha])
        try:
            if shas:
                started = time.perf_counter()
                check = await self.resolver.maybe_cached(shas)
                await self._resolve(shas, check, out, {})
                metrics.observe_each(metrics.STAGE_LOOKUP, time.perf_counter() - started, len(shas))
        except Exception:
            for sha in shas:  # back in the pending list only: the member re-reads it
                if self.flights.state(sha) is State.RESOLVING:
                    self.flights.end(sha)
            raise
        if out:
            # The loop reads and resolves the next batch while this one is written: the
            # detector's CPU work and Redis's overlap instead of taking turns.
            self.writing[id(out)] = out  # in hand from now, not from when the task first runs
            self._spawn(self.writes, self._write(out))

    async def _resolve(
        self,
        shas: list[str],
        check_cache: Checks,
        out: BatchWrite,
        delays: dict[str, int],
    ) -> None:
        """Look up resolving images: a hit is answered, an acquired lock parks the image for
        inference, a busy lock defers it (first time: the minimum delay; re-checks: the delay
        given)."""
        asked: Checks = {}
        for sha in shas:
            if self.resolver.own_write_in_flight(sha):
                self._defer(sha, delays.get(sha))  # its answer is moments away
            else:
                asked[sha] = check_cache[sha]
        if not asked:
            return
        outcomes = await self.resolver.lookup(asked)
        for sha, outcome in outcomes.items():
            self._resolve_flight(sha, outcome, out, delays)
        self._pump()

    def _resolve_flight(
        self, sha: str, outcome: Lookup, out: BatchWrite, delays: dict[str, int]
    ) -> None:
        if isinstance(outcome, Hit):
            jobs = self.flights.end(sha)
            metrics.CACHE_HIT.inc(len(jobs))
            for job in jobs:
                # Entries imported from the old design carry no size: read the header.
                width, height = outcome.size or image_size(job.event.image) or (0, 0)
                self._answer(out, job, outcome.faces, width, height, True)
        elif isinstance(outcome, Acquired):
            metrics.CACHE_MISS.inc(len(self.flights.jobs(sha)))
            self.flights.queue_for_inference(sha)
        else:
            if sha not in delays:  # deferred for the first time
                waiting = len(self.flights.jobs(sha))
                self.counters.deferred += waiting
                metrics.LOCK_WAITS.inc(waiting)
            self._defer(sha, delays.get(sha))

    def _defer(self, sha: str, delay_ms: int | None = None) -> None:
        delay = self.settings.defer_min_ms if delay_ms is None else delay_ms
        self.flights.defer(sha, time.monotonic() + delay / 1000, delay)

    def saturated(self) -> bool:
        """Stop reading: enough misses wait for inference, or entries wait on other workers'
        locks, or answers wait to be written. Inference being busy alone is not a reason."""
        s = self.settings
        return (
            self.flights.count(State.PARKED) >= s.max_parked
            or self.flights.entries_in(State.DEFERRED) >= s.max_deferred
            or len(self.writes) >= s.max_inflight_batches
        )

    def deferred_jobs(self) -> int:
        return self.flights.entries_in(State.DEFERRED)

    def next_due(self) -> float | None:
        return self.flights.next_due()

    async def recheck_deferred(self) -> None:
        """Deferred images whose time has come: cached now, ours to infer, or still busy."""
        due = self.flights.due(time.monotonic())
        if not due:
            return
        delays = {
            sha: min(self.flights.delay_of(sha) * 2, self.settings.defer_max_ms) for sha in due
        }
        for sha in due:
            self.flights.resolve(sha, [])
        out = BatchWrite()
        try:
            await self._resolve(due, dict.fromkeys(due, True), out, delays)
        except Exception:
            for sha in due:  # keep them; the loop retries after the outage
                if self.flights.state(sha) is State.RESOLVING:
                    self._defer(sha, delays[sha])
            raise
        await self._write(out)

    def _answer(
        self, out: BatchWrite, job: Job, faces: list[Face], width: int, height: int, cached: bool
    ) -> None:
        result = self.results.faces(job, faces, width, height, cached)
        crops_from = job.event.image if job.event.crops else None
        out.add(job.part, result, job.event.reply_to, crops_from)

    async def _write(self, out: BatchWrite) -> None:
        """Crops first (in a worker thread), then the write."""
        self.writing[id(out)] = out  # already there when spawned (`_spawn_write`)
        try:
            await self.results.cut_crops(out.crops)
            await self.writer.write(out)
        finally:
            self.writing.pop(id(out), None)

    # --- stage 3: infer -------------------------------------------------------------------
    def _pump(self) -> None:
        """Dispatch parked images while a model-call slot is free; each chunk of up to
        `max_batch` images is written as soon as its call is done."""
        while len(self.inferring) < self.slots:
            shas = self.flights.dispatch(self.max_batch)
            if not shas:
                return
            self._spawn(self.inferring, self._infer(shas))

    def _spawn(self, into: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        into.add(task)
        task.add_done_callback(lambda t: self._task_done(into, t))

    def _task_done(self, into: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
        into.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The entries stay pending in our PEL; recovery re-reads or claims them.
            log.error("batch_write_failed", error=repr(task.exception()))
            self.lost_writes += 1
        if into is self.inferring:
            self._pump()

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Everything in flight: writes and model calls."""
        return self.writes | self.inferring

    def active_entries(self, part: Partition) -> set[str]:
        """Entries of one partition this process holds in memory: in flight in any state, or
        answered and being written. A re-read of the pending list (after an outage) skips
        them, or an answer still being written would be answered a second time (on a cluster,
        where the result is written before its ack, as a duplicate result)."""
        held = self.flights.held(part.index)
        for out in self.writing.values():
            held |= out.entries(part.index)
        return held

    async def _infer(self, shas: list[str]) -> None:
        images = [(sha, self.flights.jobs(sha)[0].event.image) for sha in shas]
        started = time.perf_counter()
        model_done: dict[str, float] = {}  # sha256 -> its model call's end: `write` from there
        try:
            answers = await self.inference.detect(images, model_done)
            failure = None
        except Exception as exc:
            log.exception("inference_failed", images=len(shas))
            answers, failure = {}, f"{type(exc).__name__}: {exc}"
        # From here on, new copies of these images go through the cache, not this call.
        groups = {sha: self.flights.end(sha) for sha in shas}
        out = BatchWrite()
        inferred = sum(1 for a in answers.values() if not isinstance(a, SchemaError))
        self.counters.inferences += 1 if inferred else 0
        self.counters.images_inferred += inferred
        for sha, group in groups.items():
            lock_key = self.cache.lock_key(sha)
            token = self.locks.token(lock_key)
            answer = answers.get(sha)
            if isinstance(answer, tuple):
                image, faces = answer
                if token is not None:
                    out.cache_puts.append(Put(sha, token, faces, image.width, image.height))
                else:  # lock lost mid-inference: still answer, but leave the cache alone
                    log.warning("lock_lost_before_write", sha256=sha)
                for i, job in enumerate(group):
                    self._answer(out, job, faces, image.width, image.height, i > 0)
            else:
                if token is not None:
                    out.releases.append((lock_key, token))
                for job in group:
                    if isinstance(answer, SchemaError):
                        result = self.results.error(job.entry, answer, job.event, sha)
                    else:
                        result = self.results.inference_failed(job, failure or "no answer")
                    out.add(job.part, result, job.event.reply_to)
        log.debug("inferred", images=inferred, ms=round((time.perf_counter() - started) * 1000, 1))
        try:
            await self._write(out)
            metrics.observe_since(metrics.STAGE_WRITE, model_done.values())
        finally:
            for sha in shas:
                self.locks.drop(self.cache.lock_key(sha))

    async def drain(self) -> None:
        """Wait for the work in hand (parked images included) to be inferred and written."""
        self._pump()
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        self.inference.close()
