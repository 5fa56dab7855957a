"""What the detector does with one batch of images-stream entries.

Round trips per batch: (1) Bloom filter check, (2) cache read or single-flight lock per distinct
image (one slot-local script each, pipelined), (3) after inference: cache writes, Bloom adds,
replies and the ack-gated emit, pipelined. The hit path never waits on inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from facestream.common import metrics
from facestream.common.contract.keys import Keys, Partition
from facestream.common.contract.schema import (
    EVENT_FIELD,
    ErrorCode,
    ImageEvent,
    Result,
    SchemaError,
    decode_event,
    unpack_faces,
)
from facestream.common.log import get_logger
from facestream.common.settings import Settings
from facestream.common.streams.bloom import BloomFilter
from facestream.common.streams.locks import LockKeeper
from facestream.common.streams.types import AsyncClient, AsyncPipeline
from facestream.detector.imaging import image_size
from facestream.detector.inference import Inference
from facestream.detector.jobs import Deferred, Job, ResultFactory
from facestream.detector.model.face_model import FaceModel
from facestream.detector.writer import Emission, Writer

log = get_logger(__name__)

HIT, ACQUIRED, BUSY = 1, 2, 3


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        client: AsyncClient,
        keys: Keys,
        model: FaceModel,
        bloom: BloomFilter,
        locks: LockKeeper,
        writer: Writer,
        results: ResultFactory,
    ) -> None:
        self.s = settings
        self.client = client
        self.keys = keys
        self.model = model
        self.bloom = bloom
        self.locks = locks
        self.writer = writer
        self.results = results
        self.counters = results.counters
        self.limits = settings.limits()
        self.reply_prefix = keys.reply_stream("")
        self.deferred: dict[str, Deferred] = {}
        self.inferring: dict[str, list[Job]] = {}
        # Images whose cache / lock lookup is in flight. Lanes (one per partition) resolve
        # concurrently: a second lookup of the same image would find our own lock and take it
        # over (the owner-prefix rule), inferring twice and dropping the first group's jobs.
        self.resolving: dict[str, list[Job]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.lost_writes = 0
        self.inference = Inference(settings, model)
        self.max_batch = self.inference.max_batch
        self.batcher = self.inference.batcher

    def _reply_ok(self, event: ImageEvent) -> bool:
        # Only reply streams under our prefix: an event must not make us write elsewhere.
        return event.reply_to is None or event.reply_to.startswith(self.reply_prefix)

    # --- stage 1: parse -------------------------------------------------------------------
    def parse(
        self,
        part: Partition,
        entries: list[tuple[bytes, Any]],
        deliveries: dict[str, int] | None = None,
    ) -> tuple[list[Job], Emission]:
        jobs: list[Job] = []
        out = Emission()
        metrics.EVENTS_READ.inc(len(entries))
        for raw_id, fields in entries:
            entry = raw_id.decode()
            self.counters.read += 1
            if not fields:
                # Deleted from the stream while pending: nothing left to answer; just ack.
                out.ack_only.append((part, entry))
                self.counters.deleted += 1
                continue
            count = deliveries.get(entry, 1) if deliveries else 1
            if count >= self.s.max_deliveries:
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
            f"delivered {count} times without an answer (limit {self.s.max_deliveries})",
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
        by_sha: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            # Same image already waiting or being inferred here: ride along, no lookup.
            if job.sha in self.inferring:
                self.inferring[job.sha].append(job)
            elif job.sha in self.resolving:
                self.resolving[job.sha].append(job)
            elif job.sha in self.deferred:
                self.deferred[job.sha].jobs.append(job)
                self.counters.deferred += 1
            else:
                by_sha[job.sha].append(job)
        if by_sha:
            maybe = await self.bloom.check(self.client, list(by_sha))
            metrics.BLOOM_MAYBE.inc(sum(maybe))
            metrics.BLOOM_NEVER.inc(len(maybe) - sum(maybe))
            await self._resolve(by_sha, dict(zip(by_sha, maybe, strict=True)), out, {})
        if out:
            # The loop reads and resolves the next batch while this one is written: the
            # detector's CPU work and Redis's overlap instead of taking turns.
            self._spawn(self.writer.write(out))

    async def _resolve(
        self,
        groups: dict[str, list[Job]],
        check_cache: dict[str, bool],
        out: Emission,
        delays: dict[str, int],
    ) -> None:
        """Per image: a cache hit is answered, an acquired lock goes to inference, a busy lock
        defers (first time: the minimum delay; re-checks: the delay given)."""
        tag = self.model.tag
        for sha in [sha for sha in groups if self.locks.token(self.keys.lock(sha, tag))]:
            # Our own write of this image is in flight: its result is moments away, and the
            # owner-prefix takeover in lookup_or_lock must not start a second inference.
            self._defer(sha, groups.pop(sha), delays.get(sha))
        for sha in [sha for sha in groups if sha in self.resolving]:
            self.resolving[sha] += groups.pop(sha)  # answered with the lookup in flight
        if not groups:
            return
        self.resolving.update(groups)  # the same lists: jobs that join now are in the group
        try:
            await self._lookup(groups, check_cache, out, delays)
        finally:
            for sha in groups:
                self.resolving.pop(sha, None)

    async def _lookup(
        self,
        groups: dict[str, list[Job]],
        check_cache: dict[str, bool],
        out: Emission,
        delays: dict[str, int],
    ) -> None:
        tag = self.model.tag
        tokens = {sha: self.locks.new_token() for sha in groups}

        def build(pipe: AsyncPipeline) -> None:
            for sha in groups:
                self.writer.scripts.lookup_or_lock(
                    pipe,
                    self.keys.cache(sha, tag),
                    self.keys.lock(sha, tag),
                    tokens[sha],
                    self.s.lock_ttl_ms,
                    check_cache[sha],
                    self.locks.owner,
                )

        replies = await self.writer.scripts.run(self.client, build)
        misses: dict[str, list[Job]] = {}
        for (sha, group), reply in zip(groups.items(), replies, strict=True):
            kind = int(reply[0])
            if kind == HIT:
                metrics.CACHE_HIT.inc(len(group))
                faces = unpack_faces(reply[1])
                size = (int(reply[2]), int(reply[3])) if reply[2] else None
                for job in group:
                    # Entries imported from the old design carry no size: read the header.
                    width, height = size or image_size(job.event.image) or (0, 0)
                    result = self.results.faces(job, faces, width, height, True)
                    out.add(job.part, result, job.event.reply_to)
            elif kind == ACQUIRED:
                # Also after a deferral: the holder died (its lock expired) without a result.
                metrics.CACHE_MISS.inc(len(group))
                self.locks.hold(self.keys.lock(sha, tag), tokens[sha])
                misses[sha] = group
            else:
                if sha not in delays:
                    self.counters.deferred += len(group)
                    metrics.LOCK_WAITS.inc(len(group))
                self._defer(sha, group, delays.get(sha))
        if misses:
            self._start_inference(misses)

    def _defer(self, sha: str, group: list[Job], delay_ms: int | None = None) -> None:
        delay = self.s.defer_min_ms if delay_ms is None else delay_ms
        if sha in self.deferred:  # already waiting: join it, keep its schedule
            self.deferred[sha].jobs += group
            return
        self.deferred[sha] = Deferred(group, time.monotonic() + delay / 1000, delay)

    def deferred_jobs(self) -> int:
        return sum(len(d.jobs) for d in self.deferred.values())

    def next_due(self) -> float | None:
        return min((d.due for d in self.deferred.values()), default=None)

    async def recheck_deferred(self) -> None:
        """Deferred images whose time has come: cached now, ours to infer, or still busy."""
        now = time.monotonic()
        due = {sha: d for sha, d in self.deferred.items() if d.due <= now}
        if not due:
            return
        for sha in due:
            del self.deferred[sha]
        groups = {sha: d.jobs for sha, d in due.items()}
        delays = {sha: min(d.delay_ms * 2, self.s.defer_max_ms) for sha, d in due.items()}
        out = Emission()
        try:
            await self._resolve(groups, dict.fromkeys(groups, True), out, delays)
        except Exception:
            for sha, d in due.items():  # keep them; the loop retries after the outage
                self.deferred.setdefault(sha, d)
            raise
        await self.writer.write(out)

    # --- stage 3: infer -------------------------------------------------------------------
    def _start_inference(self, misses: dict[str, list[Job]]) -> None:
        for sha, group in misses.items():
            self.inferring.setdefault(sha, []).extend(group)
        # One task per model-call-sized chunk: each chunk is written as soon as its call is
        # done, instead of the whole read batch waiting for its slowest image.
        shas = list(misses)
        for i in range(0, len(shas), self.max_batch):
            self._spawn(self._infer(shas[i : i + self.max_batch]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The entries stay pending in our PEL; recovery re-reads or claims them.
            log.error("batch_write_failed", error=repr(task.exception()))
            self.lost_writes += 1

    def active_entries(self, part: Partition) -> set[str]:
        """Entries of one partition this process holds in memory: deferred, or waiting on an
        inference."""
        jobs = [job for d in self.deferred.values() for job in d.jobs]
        jobs += [job for group in self.inferring.values() for job in group]
        jobs += [job for group in self.resolving.values() for job in group]
        return {job.entry for job in jobs if job.part.index == part.index}

    async def _infer(self, shas: list[str]) -> None:
        tag = self.model.tag
        images = [(sha, self.inferring[sha][0].event.image) for sha in shas]
        started = time.perf_counter()
        try:
            answers = await self.inference.detect(images)
            failure = None
        except Exception as exc:
            log.exception("inference_failed", images=len(shas))
            answers, failure = {}, f"{type(exc).__name__}: {exc}"
        # From here on, new copies of these images go through the cache, not this batch.
        groups = {sha: self.inferring.pop(sha) for sha in shas}
        out = Emission()
        inferred = sum(1 for a in answers.values() if not isinstance(a, SchemaError))
        self.counters.inferences += 1 if inferred else 0
        self.counters.images_inferred += inferred
        for sha, group in groups.items():
            lock_key = self.keys.lock(sha, tag)
            token = self.locks.token(lock_key)
            answer = answers.get(sha)
            if isinstance(answer, tuple):
                image, faces = answer
                if token is not None:
                    out.cache_puts.append((sha, token, faces, image.width, image.height))
                else:  # lock lost mid-inference: still answer, but leave the cache alone
                    log.warning("lock_lost_before_write", sha256=sha)
                for i, job in enumerate(group):
                    result = self.results.faces(job, faces, image.width, image.height, i > 0)
                    out.add(job.part, result, job.event.reply_to)
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
            await self.writer.write(out)
        finally:
            for sha in shas:
                self.locks.drop(self.keys.lock(sha, tag))

    async def drain(self) -> None:
        """Wait for inference in flight to finish and be written."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def close(self) -> None:
        self.inference.close()
