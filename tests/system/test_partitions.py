"""Partitioned streams (FACESTREAM_PARTITIONS > 1), on one server and (`make test-cluster`) on a
real three-primary Redis Cluster: names and slots, publishing, detectors, sinks, the gateway,
the results CLI and the ops CLI over every partition."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD, RESULT_FIELD
from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control import ops
from facestream.control.client import results as results_command
from facestream.control.embedded import free_port
from facestream.control.samples import write_samples
from facestream.detector.worker import Detector
from facestream.ingest.publisher import Publisher, make_event
from tests.conftest import encode
from tests.sink.test_sinks import jsonl, lines, result, run_sinks
from tests.support.helpers import with_detector, with_detectors
from tests.support.procs import ROOT, Procs, base_env, gateway_ready

MakeSettings = Callable[..., Settings]
PARTS = 3


def variants(pixels: np.ndarray, n: int) -> list[bytes]:
    """n distinct images (one pixel differs), so each is a cache miss."""
    out = []
    for i in range(n):
        px = pixels.copy()
        flat = px.reshape(-1)
        flat[0], flat[1] = i % 256, i // 256
        out.append(encode(px))
    return out


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_one_partition_keeps_the_v1_names() -> None:
    keys = Keys("facestream", 1)
    assert (keys.images, keys.results, keys.dlq) == (
        "facestream:images",
        "facestream:results",
        "facestream:dlq",
    )
    assert keys.streams_in_one_slot(cluster=False) and not keys.streams_in_one_slot(cluster=True)
    assert Keys("facestream", 2).streams_in_one_slot(cluster=True)
    with pytest.raises(ValueError, match="name one"):
        _ = Keys("facestream", 2).images


def test_a_partitions_streams_share_a_slot_and_partitions_spread_evenly() -> None:
    keys = Keys("facestream", 6)
    for part in keys.parts:
        assert slot(part.images) == slot(part.results) == slot(part.dlq)
    # Three primaries with equal slot ranges (as `redis-cli --cluster create` makes them):
    # two partitions each.
    primary = [slot(p.images) * 3 // REDIS_CLUSTER_HASH_SLOTS for p in keys.parts]
    assert Counter(primary) == {0: 2, 1: 2, 2: 2}
    assert len({p.images for p in Keys("facestream", 256).parts}) == 256


def test_publisher_spreads_events_round_robin(
    make_settings: MakeSettings, r: redis.Redis, photo_png: dict[str, bytes]
) -> None:
    settings = make_settings(partitions=PARTS)
    publisher = Publisher(settings, r)
    image = photo_png["camera"]
    publisher.publish_many([make_event(image, f"e{i}") for i in range(29)])
    publisher.publish(make_event(image, "e29"))
    lengths = [r.xlen(p.images) for p in Keys(settings.prefix, PARTS).parts]
    assert sorted(lengths) == [10, 10, 10]


async def _wait_results(client: Any, keys: Keys, n: int, wait_s: float = 60) -> dict[int, list]:
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        got = {
            p.index: [msgpack.unpackb(f[RESULT_FIELD]) for _, f in await client.xrange(p.results)]
            for p in keys.parts
        }
        if sum(map(len, got.values())) >= n or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


def test_a_detector_serves_every_partition_and_none_is_starved(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    # Small reads, one batch in flight: a backlog on partition 0 takes many steps.
    settings = make_settings(partitions=PARTS, read_count=2, max_inflight_batches=1)
    backlog = variants(photos["astronaut"], 16)
    lone = encode(photos["camera"])

    async def scenario(_: Any, client: Any, keys: Keys) -> Any:
        for i, image in enumerate(backlog):
            await client.xadd(
                keys.parts[0].images, {EVENT_FIELD: make_event(image, f"b{i}").to_wire()}
            )
        await asyncio.sleep(0.05)  # the backlog is being worked on
        event = make_event(lone, "lone").to_wire()
        await client.xadd(keys.parts[2].images, {EVENT_FIELD: event})
        return await _wait_results(client, keys, 17)

    got = with_detectors([settings], builtin_model, scenario)
    assert [r["id"] for r in got[2]] == ["lone"] and not got[1]
    assert sorted(r["id"] for r in got[0]) == sorted(f"b{i}" for i in range(16))
    done = sorted([*got[0], *got[2]], key=lambda r: r["done_ms"])
    # Answered while partition 0's backlog was still being worked through, not after it.
    assert [r["id"] for r in done].index("lone") < 12


def test_two_detectors_share_every_partition(
    make_settings: MakeSettings, builtin_model: Any, photos: dict[str, np.ndarray]
) -> None:
    base = make_settings(partitions=PARTS, read_count=1)
    members = [base.model_copy(update={"consumer": f"{base.consumer}-{i}"}) for i in range(2)]
    images = variants(photos["camera"], 12)

    async def scenario(_: Any, client: Any, keys: Keys) -> Any:
        for _ in range(200):  # both members blocked on every partition
            try:
                groups = [await client.xinfo_consumers(p.images, "detectors") for p in keys.parts]
            except redis.ResponseError:
                groups = []  # not created yet
            if groups and all(len(g) == 2 for g in groups):
                break
            await asyncio.sleep(0.05)
        settings = base.model_copy(update={"consumer": "publisher"})
        publisher = Publisher(settings, redis.Redis())  # only for routing: no connection used
        for stream, (i, image) in zip(
            publisher.route([make_event(images[0])] * 12), enumerate(images), strict=True
        ):
            await client.xadd(stream, {EVENT_FIELD: make_event(image, f"s{i}").to_wire()})
        return await _wait_results(client, keys, 12)

    got = with_detectors(members, builtin_model, scenario)
    answered = [r for part in got.values() for r in part]
    assert sorted(r["id"] for r in answered) == sorted(f"s{i}" for i in range(12))
    assert all(len(part) == 4 for part in got.values())  # round-robin: 4 per partition
    assert {r["consumer"] for r in answered} == {m.consumer for m in members}


def test_a_sink_reads_every_partition(
    make_settings: MakeSettings, r: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(partitions=PARTS)
    keys = Keys(settings.prefix, PARTS)
    for i in range(9):
        r.xadd(keys.parts[i % PARTS].results, {"result": result(i).to_wire()})
    r.xadd(keys.parts[1].results, {"result": b"not a result"})
    out = tmp_path / "all.jsonl"
    [runner] = run_sinks(
        [(settings, jsonl(out, settings))],
        lambda rs: rs[0].counters.written + rs[0].counters.dead >= 10,
    )
    assert sorted(x["id"] for x in lines(out)) == sorted(f"r{i}" for i in range(9))
    [(_, letter)] = r.xrange(keys.parts[1].dlq)  # dead-lettered in its own partition
    assert letter[b"reason"] == b"not a v1 result"
    for part in keys.parts:
        assert r.xpending(part.results, runner.group)["pending"] == 0


def test_results_command_reads_every_partition(
    make_settings: MakeSettings, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(partitions=PARTS)
    keys = Keys(settings.prefix, PARTS)
    for i in range(6):
        r.xadd(keys.parts[i % PARTS].results, {"result": result(i).to_wire()})
    results_command(settings, r, follow=False, group="cli", start=None, count=None)
    printed = [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()]
    assert sorted(printed) == [f"r{i}" for i in range(6)]
    for part in keys.parts:  # as a group: acknowledged once printed
        assert r.xpending(part.results, "cli")["pending"] == 0


def test_ops_cover_every_partition(make_settings: MakeSettings, r: redis.Redis) -> None:
    settings = make_settings(partitions=PARTS)
    keys = Keys(settings.prefix, PARTS)
    for i in (0, 2):
        event = msgpack.packb({"v": 1, "id": f"dead-{i}"})
        r.xadd(keys.parts[i].dlq, {"event": event, "reason": "max_deliveries", "entry": "1-0"})
        r.xgroup_create(keys.parts[i].images, "detectors", id="0", mkstream=True)
    report = ops.status(settings, r)
    assert set(report["streams"]) == {
        f"{k}/{i}" for k in ("images", "results", "dlq") for i in range(3)
    }
    assert report["streams"]["dlq/2"]["length"] == 1
    rows = ops.dlq_list(settings, r, 100)
    assert sorted((row["partition"], row["id"]) for row in rows) == [(0, "dead-0"), (2, "dead-2")]
    assert ops.dlq_replay(settings, r, None, partition=2) == 1
    [(_, back)] = r.xrange(keys.parts[2].images)  # back on its own partition
    assert msgpack.unpackb(back[b"event"])["id"] == "dead-2"
    assert r.xlen(keys.parts[0].dlq) == 1 and r.xlen(keys.parts[2].dlq) == 0
    with pytest.raises(ValueError, match="there are 3"):
        ops.parts(settings, 3)


@pytest.fixture(scope="module")
def partitioned_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prefix = f"pg{np.random.randint(1 << 30)}"
    port = free_port()
    env = base_env(redis_url, prefix, FACESTREAM_PARTITIONS=PARTS)
    procs = Procs(tmp_path_factory.mktemp("pgw"), env)
    procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="pgw-det")
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        yield url, procs
    finally:
        assert procs.stop() == [0, 0], procs.logs()


def test_gateway_waits_are_answered_from_every_partition(
    partitioned_gateway: tuple[str, Procs], photo_png: dict[str, bytes]
) -> None:
    url, procs = partitioned_gateway

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        f"{url}/v1/detect",
                        params={"wait": "true", "id": f"w{i}"},
                        content=photo_png["astronaut"],
                    )
                    for i in range(9)
                )
            )

    answers = asyncio.run(go())
    assert [a.status_code for a in answers] == [200] * 9, procs.logs()
    assert sorted(a.json()["id"] for a in answers) == sorted(f"w{i}" for i in range(9))


def test_copies_on_every_partition_at_once_infer_once_and_all_are_answered(
    make_settings: MakeSettings, builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """Lanes resolve concurrently: a second lookup of an image whose lookup is in flight must
    join it, not take over our own lock (a second inference, the first group's jobs dropped)."""
    settings = make_settings(partitions=PARTS)
    image = photo_png["lfw_mosaic"]

    async def scenario(det: Detector, client: Any, keys: Keys) -> Any:
        for _ in range(3):
            pipe = client.pipeline(transaction=False)
            for i, part in enumerate(keys.parts):
                for j in range(5):
                    event = make_event(image, f"p{i}-{j}").to_wire()
                    pipe.xadd(part.images, {EVENT_FIELD: event})
            await pipe.execute()
        got = await _wait_results(client, keys, 45, wait_s=30)
        return got, det.counters.images_inferred

    got, inferred = with_detector(settings, builtin_model, scenario)
    answered = [r for part in got.values() for r in part]
    assert len(answered) == 45 and inferred == 1
    assert all(len(r["faces"]) == 20 for r in answered)


def test_every_cli_entry_point_over_partitions(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """The services and the CLI as a user runs them, with FACESTREAM_PARTITIONS=3 (on a
    cluster URL under `make test-cluster`): detect, publish, results, health, ops."""
    samples = tmp_path / "samples"
    write_samples(samples)
    sink_file = tmp_path / "results.jsonl"
    env = base_env(redis_url, prefix, FACESTREAM_PARTITIONS=PARTS)
    procs = Procs(tmp_path, env)
    procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="cli-det")
    procs.start(
        "sink",
        ["-m", "facestream.control.cli", "sink", "jsonl"],
        FACESTREAM_CONSUMER="cli-sink",
        FACESTREAM_JSONL_PATH=str(sink_file),
    )

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "facestream.control.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        # `detect` refuses at once while no detector is live: wait for this one to start.
        served = sync_client(Settings(redis_url=redis_url))
        serving = Keys(prefix, PARTS).serving("detectors")
        procs.wait_for(lambda: bool(served.hlen(serving)), "detector live")
        served.close()
        detected = cli("detect", str(samples))
        assert detected.returncode == 0, detected.stderr + procs.logs()
        rows = [json.loads(x) for x in detected.stdout.splitlines()]
        assert len(rows) == len(list(samples.iterdir())) and all("faces" in r for r in rows)
        published = cli("publish", str(samples / "astronaut.png"), str(samples / "camera.png"))
        assert published.returncode == 0 and len(published.stdout.splitlines()) == 2
        total = len(rows) + 2
        procs.wait_for(lambda: len(lines(sink_file)) >= total, "the sink wrote every result")
        printed = cli("results", "--from", "0")
        assert len(printed.stdout.splitlines()) == total, printed.stderr
        assert cli("health", "detector", FACESTREAM_CONSUMER="cli-det").returncode == 0
        assert cli("health", "sink", "jsonl", FACESTREAM_CONSUMER="cli-sink").returncode == 0
        status = cli("ops", "status", "--json")
        report = json.loads(status.stdout)
        assert {f"images/{i}" for i in range(PARTS)} <= set(report["streams"])
        groups = [report["streams"][f"images/{i}"]["groups"] for i in range(PARTS)]
        assert all(g[0]["name"] == "detectors" and g[0]["pending"] == 0 for g in groups)
        assert cli("ops", "pending", "--partition", "1").returncode == 0
    finally:
        assert procs.stop() == [0, 0], procs.logs()
