"""One server against a local three-primary Redis Cluster: the stream hit path (cached images,
so Redis and the detector's Python are the work, not the model) through 1 and 2 detector
processes, with partitions, and what each shard carried.

On two cores the cluster cannot scale (three redis-servers, the detectors and the publisher
share them); the per-shard figures show how the load divides, which is what scales on real
hardware.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from benchmarks.common import detectors, photos, table
from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control.embedded import EmbeddedRedis
from facestream.control.embedded_cluster import EmbeddedCluster
from facestream.ingest.publisher import Publisher, make_event

PREFIX = "bcl"


@contextmanager
def servers() -> Iterator[tuple[str, str, EmbeddedCluster]]:
    with tempfile.TemporaryDirectory(prefix="facestream-bench-cluster-") as tmp:
        single = EmbeddedRedis(Path(tmp) / "single")
        single.start()
        try:
            with EmbeddedCluster(Path(tmp) / "cluster", primaries=3) as cluster:
                yield single.url, cluster.url, cluster
        finally:
            single.stop()


def _client(url: str, partitions: int) -> Any:
    return sync_client(Settings(redis_url=url, prefix=PREFIX, partitions=partitions))


def _nodes(client: Any) -> list[Any]:
    if isinstance(client, redis.cluster.RedisCluster):
        return [client.get_redis_connection(n) for n in client.get_primaries()]
    return [client]


def _flush(client: Any) -> None:
    for node in _nodes(client):
        node.flushall()


def _commands(client: Any) -> list[int]:
    return [int(n.info("stats")["total_commands_processed"]) for n in _nodes(client)]


def _cpu_s(client: Any) -> list[float]:
    out = []
    for node in _nodes(client):
        cpu = node.info("cpu")
        out.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
    return out


def _detectors(url: str, n: int, partitions: int) -> Any:
    return detectors(
        url,
        n,
        ready_on=Keys(PREFIX, partitions).parts[-1].images,  # groups are made in order
        FACESTREAM_PREFIX=PREFIX,
        FACESTREAM_PARTITIONS=partitions,
    )


def _results(client: Any, keys: Keys) -> list[int]:
    return [int(client.xlen(part.results)) for part in keys.parts]


def _wait(client: Any, keys: Keys, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(_results(client, keys)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(_results(client, keys))} of {n} results")
        time.sleep(0.01)


def _span_s(client: Any, keys: Keys) -> float:
    """First to last result, by stream-id timestamps (one clock: every node is local)."""
    first, last = [], []
    for part in keys.parts:
        head = client.xrange(part.results, count=1)
        if head:
            first.append(int(head[0][0].split(b"-")[0]))
            last.append(int(client.xrevrange(part.results, count=1)[0][0].split(b"-")[0]))
    return max((max(last) - min(first)) / 1000, 1e-3)


def run_case(url: str, partitions: int, processes: int, images: list[bytes], n: int) -> dict:
    client = _client(url, partitions)
    keys = Keys(PREFIX, partitions)
    settings = Settings(
        redis_url=url, prefix=PREFIX, partitions=partitions, consumer="bench-pub", max_lag=0
    )
    _flush(client)
    publisher = Publisher(settings, client)
    with _detectors(url, 1, partitions):  # fill the cache
        publisher.publish_many([make_event(img, f"w{i}") for i, img in enumerate(images)])
        _wait(client, keys, len(images))
    for part in keys.parts:
        client.delete(part.results)
    events = [make_event(images[i % len(images)], f"h{i}") for i in range(n)]
    for i in range(0, n, 500):
        publisher.publish_many(events[i : i + 500])
    before, cpu_before = _commands(client), _cpu_s(client)
    with _detectors(url, processes, partitions):
        _wait(client, keys, n)
    span = _span_s(client, keys)
    per_node = [b - a for a, b in zip(before, _commands(client), strict=True)]
    cpu = [b - a for a, b in zip(cpu_before, _cpu_s(client), strict=True)]
    per_part = _results(client, keys)
    client.close()
    return {
        "rate": n / span,
        "span": span,
        "per_node": per_node,
        "per_part": per_part,
        "redis_us": sum(cpu) * 1e6 / n,  # Redis CPU per event, all shards (includes start-up)
    }


def bench_cluster(n: int = 20_000) -> str:
    images = photos(50, size=(160, 120))
    rows = []
    with servers() as (single, cluster_url, _):
        cases = [
            ("one server", single, 1, 1),
            ("one server", single, 3, 1),
            ("3-primary cluster", cluster_url, 3, 1),
            ("3-primary cluster", cluster_url, 1, 1),
            ("one server", single, 3, 2),
            ("3-primary cluster", cluster_url, 3, 2),
        ]
        for name, url, partitions, processes in cases:
            got = run_case(url, partitions, processes, images, n)
            commands = "/".join(f"{c / got['span']:,.0f}" for c in got["per_node"])
            rows.append(
                [
                    name,
                    partitions,
                    processes,
                    f"{got['rate']:,.0f}",
                    commands,
                    f"{got['redis_us']:.1f}",
                    "/".join(str(x) for x in got["per_part"]),
                ]
            )
    return table(
        f"Redis Cluster: {n} cached-image events (160x120 JPEG, 50 distinct) through the "
        f"detectors, {os.cpu_count()} cores shared by every server and process",
        [
            "Redis",
            "partitions",
            "detector processes",
            "events/s",
            "commands/s per primary",
            "Redis CPU µs/event",
            "results per partition",
        ],
        rows,
    )
