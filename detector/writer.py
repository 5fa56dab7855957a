"""The detector's write step: one pipelined round trip per batch of answers.

Order inside the pipeline matters: cache entries (each releasing its lock atomically), then the
Bloom adds that vouch for them, then replies, then the ack-gated emit. Replies go before the
ack so a crash in between can repeat a reply (the gateway dedupes by id) but never lose one;
results go out only through the emit script, after a successful XACK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from common import metrics
from common.bloom import BloomFilter
from common.keys import Keys
from common.log import get_logger
from common.schema import RESULT_FIELD, Face, Result, pack_faces
from common.scripts import Scripts
from common.settings import Settings
from detector.jobs import Counters, now_ms

log = get_logger(__name__)
RETRIES = 4


@dataclass(slots=True)
class Emission:
    results: list[tuple[Result, str | None]] = field(default_factory=list)  # (result, reply_to)
    cache_puts: list[tuple[str, str, list[Face], int, int]] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)  # (lock key, token)
    ack_only: list[str] = field(default_factory=list)
    # Given up after too many deliveries: (error result, original event payload, deliveries).
    dead: list[tuple[Result, bytes, int]] = field(default_factory=list)

    def add(self, result: Result, reply_to: str | None = None) -> None:
        self.results.append((result, reply_to))

    def __bool__(self) -> bool:
        return bool(self.results or self.cache_puts or self.releases or self.ack_only or self.dead)


class WriteError(RuntimeError):
    pass


class Writer:
    def __init__(
        self,
        settings: Settings,
        client: Any,
        keys: Keys,
        scripts: Scripts,
        bloom: BloomFilter,
        model_tag: str,
        counters: Counters,
    ) -> None:
        self.s = settings
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.bloom = bloom
        self.model_tag = model_tag
        self.counters = counters

    async def write(self, out: Emission) -> None:
        """Write with retries: every step is safe to repeat (cache and Bloom writes are
        idempotent, releases check tokens, a repeated emit finds its entries acked and publishes
        nothing, a repeated reply is deduped by id downstream)."""
        if not out:
            return
        for attempt in range(RETRIES):
            try:
                await self._write_once(out)
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if attempt == RETRIES - 1:
                    raise
                log.info("write_retry", attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(0.05 * 2**attempt)

    async def _write_once(self, out: Emission) -> None:
        s, keys = self.s, self.keys
        pipe = self.client.pipeline(transaction=False)
        created = now_ms()
        for sha, token, faces, width, height in out.cache_puts:
            self.scripts.cache_put(
                pipe,
                keys.cache(sha, self.model_tag),
                keys.lock(sha, self.model_tag),
                token,
                s.cache_ttl_s * 1000,
                pack_faces(faces),
                width,
                height,
                self.model_tag,
                created,
            )
        self.bloom.queue_add(pipe, [put[0] for put in out.cache_puts])
        for lock_key, token in out.releases:
            self.scripts.lock_release(pipe, lock_key, token)
        payloads = [result.to_wire() for result, _ in out.results]
        for (_, reply_to), payload in zip(out.results, payloads, strict=True):
            if reply_to is not None:
                pipe.xadd(
                    reply_to, {RESULT_FIELD: payload}, maxlen=s.reply_maxlen, approximate=True
                )
                # A reply to a gateway that is gone must not recreate a key that lives forever.
                pipe.pexpire(reply_to, s.reply_ttl_s * 1000)
        if out.ack_only:
            pipe.xack(keys.images, s.detector_group, *out.ack_only)
            if s.delete_acked_images:
                pipe.xdel(keys.images, *out.ack_only)
        at: dict[str, int] = {}
        if out.dead:
            at["dead"] = len(pipe.command_stack)
            self.scripts.dead_letter(
                pipe,
                keys.images,
                keys.results,
                keys.dlq,
                s.detector_group,
                s.delete_acked_images,
                s.consumer,
                [(r.entry, r.to_wire(), event, count) for r, event, count in out.dead],
            )
        if out.results:
            at["emit"] = len(pipe.command_stack)
            self.scripts.emit(
                pipe,
                keys.images,
                keys.results,
                s.detector_group,
                s.delete_acked_images,
                [(r.entry, payload) for (r, _), payload in zip(out.results, payloads, strict=True)],
            )
        answers = await pipe.execute(raise_on_error=False)
        for i, answer in enumerate(answers):
            if isinstance(answer, Exception) and i not in at.values():
                # A cache write, Bloom add or reply failed: results still go out; the cache
                # is an optimisation and the results stream is the record.
                log.warning("write_step_failed", error=str(answer))
        for step in at:
            if isinstance(answers[at[step]], Exception):
                raise WriteError(f"{step} failed: {answers[at[step]]}")
        if "dead" in at:
            for (result, _, count), ok in zip(out.dead, answers[at["dead"]], strict=True):
                if ok:
                    self.counters.dead_lettered += 1
                    metrics.DEAD_LETTERS.labels("detector").inc()
                    log.warning(
                        "dead_lettered", entry=result.entry, event_id=result.id, deliveries=count
                    )
        if "emit" in at:
            outcomes = {"inferred": 0, "cached": 0, "error": 0}
            for (result, _), ok in zip(out.results, answers[at["emit"]], strict=True):
                if not ok:
                    self.counters.not_emitted += 1
                    continue
                self.counters.results += 1
                outcome = "inferred"
                if result.error is not None:
                    self.counters.errors += 1
                    outcome = "error"
                elif result.cached:
                    self.counters.cached += 1
                    outcome = "cached"
                outcomes[outcome] += 1
                if result.ts_ms is not None:
                    metrics.END_TO_END.observe(max(0, result.done_ms - result.ts_ms) / 1000)
            for outcome, n in outcomes.items():
                if n:
                    metrics.RESULT_BY_OUTCOME[outcome].inc(n)
