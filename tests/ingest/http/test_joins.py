"""The shared-wait table (ingest/http/shared_waits.py) alone: who leads, who copies, who falls
back to its own event, and that every request ends with exactly one result. Pure coordination
logic, so `own` (publish and wait) and `publish` are recorded here instead of reaching Redis;
the real path, with Redis, a gateway and a detector, is tests/ingest/http/test_gateway_hits.py."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from facestream.common.contract.schema import ImageEvent
from facestream.ingest.http.shared_waits import Joins, SharedAnswer
from facestream.ingest.publisher import Overloaded

IMAGE = b"same photo"
SHA = hashlib.sha256(IMAGE).hexdigest()
FACES = {"v": 1, "id": "lead", "sha256": SHA, "faces": [], "cached": False, "entry": "1-0"}


def event(event_id: str, crops: bool = False) -> ImageEvent:
    return ImageEvent(id=event_id, image=IMAGE, sha256=SHA, source=f"s-{event_id}", crops=crops)


class Recorder:
    """What reached 'Redis': events published by `own` (with the time they were given) and
    results the gateway published itself."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.results: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    def own(self, ev: ImageEvent, answer: SharedAnswer | Exception = None) -> Any:
        async def run(left_s: float) -> SharedAnswer:
            self.events.append((ev.id, left_s))
            if ev.id == "lead":
                await self.release.wait()  # the leader's answer comes when the test says
            if isinstance(answer, Exception):
                raise answer
            return answer

        return run

    async def publish(self, body: dict[str, Any]) -> None:
        self.results.append(body)


async def lead_and_follow(
    rec: Recorder,
    joins: Joins,
    leader_answer: SharedAnswer | Exception,
    n: int = 3,
    timeout_s: float = 5,
) -> tuple[asyncio.Task[SharedAnswer], list[asyncio.Task[SharedAnswer]]]:
    lead = asyncio.create_task(joins.wait(event("lead"), 5, rec.own(event("lead"), leader_answer)))
    await asyncio.sleep(0)
    followers = [
        asyncio.create_task(joins.wait(event(f"f{i}"), timeout_s, rec.own(event(f"f{i}"), None)))
        for i in range(n)
    ]
    await asyncio.sleep(0.01)
    assert joins.leading == 1
    return lead, followers


def test_followers_get_copies_of_the_leaders_answer_and_publish_no_event() -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, followers = await lead_and_follow(rec, joins, FACES)
        rec.release.set()
        assert await lead == FACES
        copies = [await f for f in followers]
        assert [e for e, _ in rec.events] == ["lead"]
        assert [c["id"] for c in copies] == ["f0", "f1", "f2"]
        for c in copies:
            assert c["cached"] is True and c["consumer"] == "gateway:t" and c["entry"] == ""
            assert c["source"] == "s-" + c["id"] and c["faces"] == []
        assert rec.results == copies  # each follower's own result, published
        assert joins.leading == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    "leader_answer",
    [
        {"v": 1, "id": "lead", "error": {"code": "bad_image", "message": "x"}},
        None,  # the leader's wait timed out
        ConnectionError("redis away"),
    ],
    ids=["error", "timeout", "raised"],
)
def test_without_a_usable_answer_each_follower_publishes_its_own_event(
    leader_answer: SharedAnswer | Exception,
) -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, followers = await lead_and_follow(rec, joins, leader_answer)
        rec.release.set()
        got = await asyncio.gather(lead, *followers, return_exceptions=True)
        if isinstance(leader_answer, Exception):
            assert got[0] is leader_answer
        assert sorted(e for e, _ in rec.events) == ["f0", "f1", "f2", "lead"]
        assert all(0 < left <= 5 for e, left in rec.events if e != "lead")
        assert rec.results == []  # no copies: the detectors answer each event
        assert joins.leading == 0

    asyncio.run(main())


def test_a_cancelled_leader_leaves_the_table_and_its_followers_go_their_own_way() -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, followers = await lead_and_follow(rec, joins, FACES, n=2)
        lead.cancel()
        await asyncio.gather(*followers)
        assert sorted(e for e, _ in rec.events) == ["f0", "f1", "lead"]
        assert joins.leading == 0

    asyncio.run(main())


def test_a_follower_out_of_time_still_publishes_its_event() -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, (follower,) = await lead_and_follow(rec, joins, FACES, n=1, timeout_s=0.05)
        assert await follower is None  # its time out: the caller answers 504
        assert [(e, left) for e, left in rec.events if e == "f0"] == [("f0", 0.0)]
        rec.release.set()
        await lead
        assert rec.results == []  # its one result comes from its own event

    asyncio.run(main())


def test_a_dropped_follower_is_still_owed_its_result() -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, (follower,) = await lead_and_follow(rec, joins, FACES, n=1)
        follower.cancel()  # the client went away, or the server is stopping
        with pytest.raises(asyncio.CancelledError):
            await follower
        rec.release.set()
        await lead
        await asyncio.sleep(0.01)
        assert [r["id"] for r in rec.results] == ["f0"]
        assert [e for e, _ in rec.events] == ["lead"]

    asyncio.run(main())


def test_requests_for_crops_share_a_wait_only_with_each_other() -> None:
    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead, _ = await lead_and_follow(rec, joins, FACES, n=0)
        # A request for crops cannot use an answer without them: it leads its own wait...
        crops = event("c", crops=True)
        with_crops = {**FACES, "id": "c", "faces": [{"crop": b"jpeg"}], "crops_omitted": 0}
        answered = asyncio.Event()

        async def own_crops(left_s: float) -> SharedAnswer:
            rec.events.append(("c", left_s))
            await answered.wait()
            return with_crops

        first = asyncio.create_task(joins.wait(crops, 5, own_crops))
        await asyncio.sleep(0)
        assert joins.leading == 2
        # ... and later requests for crops of the same image copy its answer, crops and all.
        others = [
            asyncio.create_task(joins.wait(event(f"c{i}", crops=True), 5, rec.own(event(f"c{i}"))))
            for i in range(3)
        ]
        await asyncio.sleep(0.01)
        answered.set()
        assert await first == with_crops
        copies = [await o for o in others]
        assert [e for e, _ in rec.events] == ["lead", "c"]
        assert [c["id"] for c in copies] == ["c0", "c1", "c2"]
        assert all(c["faces"] == [{"crop": b"jpeg"}] and c["crops_omitted"] == 0 for c in copies)
        rec.release.set()
        await lead

    asyncio.run(main())


def test_followers_of_a_leader_refused_at_the_door_are_refused_with_it() -> None:
    """Admission control refused the leader (nothing published): the followers that joined it
    in those moments are refused as promptly, with no event of their own, and a dropped one is
    owed nothing."""

    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        refusal = Overloaded("expected wait 900 ms, past the 250 ms deadline", 2)
        lead, followers = await lead_and_follow(rec, joins, refusal, n=3)
        followers[2].cancel()
        rec.release.set()
        got = await asyncio.gather(lead, *followers, return_exceptions=True)
        assert got[0] is refusal
        for answer in got[1:3]:
            assert isinstance(answer, Overloaded) and answer.retry_after_s == 2
        assert isinstance(got[3], asyncio.CancelledError)
        await asyncio.sleep(0.01)
        assert [e for e, _ in rec.events] == ["lead"] and rec.results == []
        assert joins.leading == 0

    asyncio.run(main())


def test_a_follower_whose_leader_timed_out_publishes_through_owed_not_own() -> None:
    """Accepted when it joined, a follower's own event is owed: it goes through `owed` (which
    admission control never refuses), not through `own` (the leader's admitted path)."""

    async def main() -> None:
        rec = Recorder()
        joins = Joins("gateway:t", rec.publish)
        lead = asyncio.create_task(joins.wait(event("lead"), 5, rec.own(event("lead"), None)))
        await asyncio.sleep(0)
        owed: list[float] = []

        async def refuse(_: float) -> SharedAnswer:
            raise Overloaded("would be refused", 1)

        async def owe(left_s: float) -> SharedAnswer:
            owed.append(left_s)
            return None

        follower = asyncio.create_task(joins.wait(event("f0"), 5, refuse, owe))
        await asyncio.sleep(0.01)
        rec.release.set()
        assert await lead is None  # timed out
        assert await follower is None
        assert len(owed) == 1 and 0 < owed[0] <= 5

    asyncio.run(main())
