"""Chaos on a real Redis Cluster: three primaries with a replica each, partitioned streams, two
detector processes, a steady publisher; kill -9 the primary that serves partition 0 and let its
replica be promoted. Prints events in, results out, lost and duplicates.

Redis replication is asynchronous: a write acknowledged by the primary but not yet sent to the
replica is gone when the replica takes over. So this test holds the service to "everything
published after the failover is answered, and the system carries on", and reports (not
asserts zero) what was lost across it; docs/scaling.md says why.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import RESULT_FIELD
from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control.embedded_cluster import EmbeddedCluster
from facestream.ingest.publisher import Publisher
from tests.chaos.harness import distinct_images, events
from tests.support.procs import Procs, base_env

pytestmark = pytest.mark.chaos
PARTS = 3
PREFIX = "failover"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1) as c:
        yield c


def _results(client: Any, keys: Keys) -> list[dict[str, Any]]:
    out = []
    for part in keys.parts:
        out += [msgpack.unpackb(f[RESULT_FIELD]) for _, f in client.xrange(part.results)]
    return out


def test_primary_killed_replica_promoted(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=cluster.url, prefix=PREFIX, partitions=PARTS, consumer="publisher"
    )
    keys = Keys(PREFIX, PARTS)
    env = base_env(
        cluster.url,
        PREFIX,
        FACESTREAM_PARTITIONS=PARTS,
        FACESTREAM_CLAIM_IDLE_MS=3000,
        FACESTREAM_LOCK_TTL_MS=2000,
        FACESTREAM_CLAIM_EVERY_MS=500,
    )
    procs = Procs(tmp_path, env)
    for i in range(2):
        procs.start(f"detector-{i}", ["-m", "facestream.detector"], FACESTREAM_CONSUMER=f"fo-{i}")
    client = sync_client(settings)
    publisher = Publisher(settings, client)
    evs = events(distinct_images(300, size=96), "fo")
    published: list[str] = []
    refused = 0
    killed_at: list[float] = []
    after_kill: list[str] = []

    def publish() -> None:
        nonlocal refused
        for ev in evs:
            while True:
                try:
                    publisher.publish(ev)
                    break
                except redis.RedisError:
                    # What an upstream does while the shard fails over: retry. Only an
                    # acknowledged XADD counts as published.
                    refused += 1
                    time.sleep(0.1)
            published.append(ev.id)
            if killed_at:
                after_kill.append(ev.id)
            time.sleep(0.02)

    try:
        procs.wait_for(
            lambda: all(
                len(client.xinfo_consumers(p.images, "detectors")) == 2 for p in keys.parts
            ),
            "both detectors on every partition",
        )
        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(2)
        victim = cluster.primary_for(keys.parts[0].images)
        killed_at.append(time.monotonic())
        cluster.kill(victim)
        promoted = None
        while promoted is None and time.monotonic() - killed_at[0] < 30:
            try:
                node = cluster.primary_for(keys.parts[0].images)
                promoted = node if node != victim else None
            except Exception:
                pass
            time.sleep(0.1)
        failover_s = time.monotonic() - killed_at[0]
        thread.join(timeout=120)
        assert promoted is not None, "the replica was not promoted"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answered = {r["id"] for r in _results(client, keys)}
            if set(after_kill) <= answered and set(published) <= answered:
                break
            time.sleep(0.5)
        got = _results(client, keys)
    finally:
        codes = procs.stop()
        client.close()
    ids = Counter(r["id"] for r in got)
    figures = {
        "events_in": len(published),
        "results_out": len(got),
        "lost": len(set(published) - set(ids)),
        "lost_after_failover": len(set(after_kill) - set(ids)),
        "duplicates": sum(n - 1 for n in ids.values() if n > 1),
        "publish_retries": refused,
        "failover_s": round(failover_s, 2),
    }
    print("\ncluster failover: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    assert codes == [0, 0], procs.logs()
    assert figures["lost_after_failover"] == 0, procs.logs()
    # Lost before the failover means acknowledged-but-unreplicated writes; on loopback the
    # replicas are microseconds behind, so more than a handful would be a facestream bug.
    assert figures["lost"] <= 5, figures
    assert len(after_kill) > 0
