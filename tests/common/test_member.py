"""The consumer-group member runtime (common/streams/member.py) that detectors and sinks share,
on real Redis: a group deleted from under a running member is created again, and a handler's
own failure is told apart from a Redis outage."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import structlog
from redis.asyncio import Redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.streams.member import (
    Batch,
    Handler,
    Member,
    MemberCounters,
    Subscription,
)
from facestream.detector.worker import Detector
from facestream.ingest.publisher import make_event
from tests.support.helpers import publish, wait_results, with_detector

MakeSettings = Callable[..., Settings]


def test_a_detector_recreates_its_group_after_the_stream_is_deleted(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings()

    async def scenario(det: Detector, client: Redis, keys: Keys) -> list[dict[str, Any]]:
        await publish(client, keys, make_event(photo_png["camera"], "before"))
        assert len(await wait_results(client, keys, 1)) == 1
        await client.delete(keys.images)  # the group goes with the stream
        await asyncio.sleep(0.3)  # the readers hit NOGROUP now
        await publish(client, keys, make_event(photo_png["camera"], "after"))
        return await wait_results(client, keys, 2, wait_s=10)

    got = with_detector(settings, builtin_model, scenario)
    assert [g["id"] for g in got] == ["before", "after"]


class Recording(Handler):
    """A handler that records what it was handed and fails on demand (a stand-in for a sink
    whose write fails: the failure under test is the handler's own)."""

    retry_on = (Exception,)  # as a sink: its own failures are retried, not fatal

    def __init__(self, client: Redis, stream: str, group: str, fail: int = 0) -> None:
        self.client, self.stream, self.group = client, stream, group
        self.fail = fail
        self.counters = MemberCounters()
        self.seen: list[str] = []
        self.redelivered: list[str] = []

    async def handle(self, batch: Batch) -> None:
        ids = [e[0].decode() for e in batch.entries]
        if batch.deliveries is not None:
            self.redelivered += ids
        if self.fail and ids:
            self.fail -= 1
            raise ValueError("the sink's write failed")
        self.seen += ids
        if ids:
            await self.client.xack(self.stream, self.group, *ids)


def run_member(
    settings: Settings,
    handler_of: Callable[[Redis, str], Recording],
    n: int,
    wait_for: int | None = None,
) -> tuple[Recording, list[dict[str, Any]]]:
    """Publish `n` entries and run a member until its handler has seen `wait_for` (n)."""
    wanted = n if wait_for is None else wait_for
    keys = Keys(settings.prefix)

    async def main() -> tuple[Recording, list[dict[str, Any]]]:
        client = async_client(settings)
        handler = handler_of(client, keys.results)
        sub = Subscription(
            streams=(keys.results,),
            group="g",
            consumer=settings.consumer,
            claim_key=keys.consumer_claim("g", settings.consumer),
            claim_ttl_ms=settings.consumer_claim_ttl_ms,
            count=10,
            block_ms=50,
        )
        member = Member(client, sub, handler, "sink")
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(member.run())
            for i in range(n):
                await client.xadd(keys.results, {"result": str(i).encode()})
            deadline = time.monotonic() + 10
            while len(handler.seen) < wanted and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            member.stop.set()
            await asyncio.wait_for(task, 10)
        await client.aclose()
        return handler, logs

    return asyncio.run(main())


def test_a_handler_failure_is_not_an_outage_and_its_entries_are_read_again(
    make_settings: MakeSettings,
) -> None:
    handler, logs = run_member(
        make_settings(), lambda c, stream: Recording(c, stream, "g", fail=1), n=3
    )
    assert len(handler.seen) == 3  # nothing lost: the pending list was read again
    assert handler.redelivered  # and it came back as a redelivery, with counts
    events = [entry["event"] for entry in logs]
    assert "sink_step_failed" in events
    assert "sink_work_unavailable" in events
    assert "redis_unavailable" not in events
    assert "sink_stopped" in events


def test_a_sink_member_recreates_its_group(make_settings: MakeSettings, r: redis.Redis) -> None:
    settings = make_settings()
    keys = Keys(settings.prefix)
    deleted = False

    class Deleting(Recording):
        async def handle(self, batch: Batch) -> None:
            nonlocal deleted
            await super().handle(batch)
            if not deleted and self.seen:
                deleted = True
                await self.client.delete(keys.results)  # the group goes with the stream
                await self.client.xadd(keys.results, {"result": b"after"})

    handler, logs = run_member(settings, lambda c, stream: Deleting(c, stream, "g"), 1, 2)
    assert deleted
    assert len(handler.seen) == 2  # the entry added after the deletion was read
    assert "group_recreated" in [entry["event"] for entry in logs]
    groups = r.xinfo_groups(keys.results)
    assert [g["name"] for g in groups] == [b"g"]


@pytest.mark.parametrize("readers", [1, 3])
def test_only_a_streams_first_reader_reads_the_pending_list(
    make_settings: MakeSettings, readers: int
) -> None:
    settings = make_settings()
    keys = Keys(settings.prefix)

    async def main() -> int:
        client = async_client(settings)
        sub = Subscription(
            streams=(keys.results,),
            group="g",
            consumer="m",
            claim_key=keys.consumer_claim("g", "m"),
            claim_ttl_ms=1000,
            count=10,
            block_ms=50,
            readers=readers,
        )
        member = Member(client, sub, Recording(client, keys.results, "g"), "sink")
        cursors = [reader.cursor for reader in member.readers]
        await client.aclose()
        return sum(1 for c in cursors if c == "0")

    assert asyncio.run(main()) == 1


def test_a_transport_error_leaked_by_redis_py_counts_as_a_lost_connection(redis_url: str) -> None:
    """redis-py #4287: a write on a connection the peer closed can raise the transport's own
    TypeError / AttributeError from inside redis-py instead of a ConnectionError. The writer
    below stands in for such a torn-down transport (a real race is not reproducible on
    demand); the error goes through redis-py's real connection code."""
    from urllib.parse import urlsplit

    import redis.asyncio

    from facestream.common.streams.errors import connection_race

    class TornDown:
        def writelines(self, data: object) -> None:
            raise TypeError("'NoneType' object is not callable")

    async def main() -> tuple[bool, bool]:
        url = urlsplit(redis_url)
        conn = redis.asyncio.Connection(host=url.hostname or "127.0.0.1", port=url.port or 6379)
        await conn.connect()
        conn._writer = TornDown()  # type: ignore[assignment]
        try:
            await conn.send_packed_command([b"PING\r\n"], check_health=False)
        except Exception as exc:
            leaked = connection_race(exc)
        else:
            leaked = False
        try:
            raise TypeError("a bug of ours")
        except TypeError as exc:
            ours = connection_race(exc)
        return leaked, ours

    if os.environ.get("FACESTREAM_TEST_CLUSTER") == "1":
        pytest.skip("a plain connection to one node is what this needs; the cluster runs skip it")
    assert asyncio.run(main()) == (True, False)


def test_a_background_task_that_keeps_failing_stops_the_member_gracefully(
    make_settings: MakeSettings,
) -> None:
    """A handler's supervised task that fails on every start: the member stops as on SIGTERM
    (what it read is still handled and acknowledged), `failed` names the task, and the
    name claim is released."""
    from facestream.common.supervise import RestartPolicy

    settings = make_settings()
    keys = Keys(settings.prefix)

    class Broken(Recording):
        member: Member

        async def start(self) -> None:
            async def broken() -> None:
                await asyncio.sleep(0.2)  # after the first batch was read
                raise RuntimeError("a bug in a background loop")

            self.member.supervisor.start("broken", broken)

        async def handle(self, batch: Batch) -> None:
            await asyncio.sleep(1.0)  # in hand when the task is given up (at ~0.5 s)
            await super().handle(batch)

    async def main() -> tuple[Broken, str | None, int, list[dict[str, Any]]]:
        client = async_client(settings)
        handler = Broken(client, keys.results, "g")
        sub = Subscription(
            streams=(keys.results,),
            group="g",
            consumer=settings.consumer,
            claim_key=keys.consumer_claim("g", settings.consumer),
            claim_ttl_ms=settings.consumer_claim_ttl_ms,
            count=10,
            block_ms=50,
        )
        policy = RestartPolicy(max_failures=2, window_s=5.0, backoff_max_s=0.1)
        member = handler.member = Member(client, sub, handler, "sink", policy)
        for i in range(3):
            await client.xadd(keys.results, {"result": str(i).encode()})
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(member.run(), 10)
        claim = int(await client.exists(sub.claim_key))
        await client.aclose()
        return handler, member.failed, claim, logs

    handler, failed, claim, logs = asyncio.run(main())
    assert failed == "broken"
    assert len(handler.seen) == 3  # the batch in hand was finished and acknowledged
    assert claim == 0
    events = [e["event"] for e in logs]
    assert events.count("task_failed") == 1 and "task_gave_up" in events
    [stopped] = [e for e in logs if e["event"] == "sink_stopped"]
    assert stopped["failed_task"] == "broken"


def test_a_reread_entry_answered_meanwhile_is_not_handed_over_again(
    make_settings: MakeSettings,
) -> None:
    """The pending list (or a claim) read while an answer's write is in flight: by the time the
    delivery counts come back the entry is acknowledged, and it is not answered a second time;
    an entry still pending is handed over with its count."""
    settings = make_settings()
    keys = Keys(settings.prefix)

    async def main() -> tuple[Recording, str]:
        client = async_client(settings)
        handler = Recording(client, keys.results, "g")
        sub = Subscription(
            streams=(keys.results,),
            group="g",
            consumer="c",
            claim_key=keys.consumer_claim("g", "c"),
            claim_ttl_ms=settings.consumer_claim_ttl_ms,
            count=10,
            block_ms=50,
        )
        member = Member(client, sub, handler, "sink")
        await client.xgroup_create(keys.results, "g", id="0", mkstream=True)
        for i in range(2):
            await client.xadd(keys.results, {"result": str(i).encode()})
        read = await client.xreadgroup("g", "c", {keys.results: ">"})
        entries = read[0][1]
        await client.xack(keys.results, "g", entries[0][0])  # its answer landed meanwhile
        await member.readers[0]._redelivered(entries)
        await client.aclose()
        return handler, entries[1][0].decode()

    handler, second = asyncio.run(main())
    assert handler.seen == handler.redelivered == [second]
