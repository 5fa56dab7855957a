"""Least-privilege users on a real redis-server started with `facestream acl`'s file: each
service does its work as its own user, and what a role must not do is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client, sync_client
from facestream.control.acl import acl_lines, setuser_args, user_name
from facestream.control.embedded import EmbeddedRedis
from facestream.control.embedded_cluster import EmbeddedCluster
from facestream.detector.worker import Detector
from facestream.ingest.publisher import Publisher, make_event
from facestream.sink.files import JsonlSink
from facestream.sink.runner import SinkRunner

PREFIX = "sec"
CLUSTER_PARTS = 3


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("acl")
    secrets_dir = work / "secrets"
    aclfile = work / "users.acl"
    lines = acl_lines(Settings(prefix=PREFIX), secrets_dir)
    aclfile.write_text("\n".join(lines) + "\n")
    server = EmbeddedRedis(work / "redis", extra_args=("--aclfile", str(aclfile)))
    server.start()
    try:
        yield server.url, secrets_dir
    finally:
        server.stop()


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A three-primary cluster with the same users (made with ACL SETUSER once the cluster is
    formed, as an operator would roll out `facestream acl`'s lines), the default user off."""
    work = tmp_path_factory.mktemp("acl-cluster")
    secrets_dir = work / "secrets"
    users = setuser_args(Settings(prefix=PREFIX, partitions=CLUSTER_PARTS), secrets_dir)
    with EmbeddedCluster(work / "cluster") as cluster:
        for i in range(len(cluster.nodes)):
            node = cluster.client(i)
            for args in users:  # before "default off", which goes last
                node.execute_command("ACL", "SETUSER", *args)
            node.execute_command("ACL", "SETUSER", "default", "off")
            node.close()
        yield cluster.url, secrets_dir


def as_user(url: str, secrets_dir: Path, role: str, **extra: Any) -> Settings:
    return Settings(
        redis_url=url,
        prefix=PREFIX,
        redis_username=user_name(role),
        redis_password_file=str(secrets_dir / user_name(role)),
        consumer=f"{role}-1",
        block_ms=100,
        **extra,
    )


@pytest.mark.parametrize("where", ["server", "cluster"])
def test_each_service_works_as_its_own_user(
    where: str,
    request: pytest.FixtureRequest,
    builtin_model: Any,
    photo_png: dict[str, bytes],
    tmp_path: Path,
) -> None:
    if where == "server":
        url, secrets_dir = request.getfixturevalue("acl_server")
        extra: dict[str, Any] = {}
    else:  # every rule a cluster client needs (slot map, command table), partitions' streams
        url, secrets_dir = request.getfixturevalue("acl_cluster")
        extra = {"partitions": CLUSTER_PARTS}
    ingest = as_user(url, secrets_dir, "ingest", **extra)
    detector = as_user(url, secrets_dir, "detector", **extra)
    sink = as_user(url, secrets_dir, "sink-jsonl", **extra)
    out = tmp_path / "out.jsonl"

    async def main() -> None:
        det_client, sink_client = async_client(detector), async_client(sink)
        det = Detector(detector, det_client, builtin_model)
        runner = SinkRunner(sink, sink_client, JsonlSink(str(out), "fsync", 100))
        tasks = [asyncio.create_task(det.run()), asyncio.create_task(runner.run())]
        await asyncio.sleep(0.5)
        publisher = Publisher(ingest, sync_client(ingest))
        publisher.publish_many(
            [make_event(photo_png["astronaut"], "a"), make_event(photo_png["astronaut"], "b")]
        )
        for _ in range(200):
            if runner.counters.written >= 2:
                break
            await asyncio.sleep(0.05)
        det.stop.set()
        runner.stop.set()
        await asyncio.gather(*tasks)
        await det_client.aclose()
        await sink_client.aclose()

    asyncio.run(main())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    assert sum(1 for r in rows if r["cached"]) == 1


@pytest.mark.parametrize(
    ("role", "command"),
    [
        ("ingest", ("XRANGE", f"{PREFIX}:results", "-", "+")),  # ingest cannot read results
        ("ingest", ("HGETALL", f"{PREFIX}:face:{{{'a' * 64}}}:m")),  # nor the cache
        ("ingest", ("XREADGROUP", "GROUP", "detectors", "x", "STREAMS", f"{PREFIX}:images", ">")),
        ("ingest", ("XADD", f"{PREFIX}:results", "*", "result", "forged")),  # nor forge results
        ("sink-jsonl", ("XRANGE", f"{PREFIX}:images", "-", "+")),  # sinks never see images
        ("sink-jsonl", ("SET", f"{PREFIX}:face:{{x}}:m", "poison")),  # nor touch the cache
        ("detector", ("FLUSHALL",)),
        ("detector", ("CONFIG", "GET", "*")),
        ("detector", ("GET", "other-app:secret")),  # keys outside the prefix
        ("ops", ("FLUSHALL",)),
    ],
)
def test_what_a_role_must_not_do_is_refused(
    acl_server: tuple[str, Path], role: str, command: tuple[str, ...]
) -> None:
    url, secrets_dir = acl_server
    client = sync_client(as_user(url, secrets_dir, role))
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    client.close()


def test_the_default_user_is_off(acl_server: tuple[str, Path]) -> None:
    url, _ = acl_server
    client = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()


def test_ops_sees_everything_under_the_prefix(acl_server: tuple[str, Path]) -> None:
    from facestream.control import ops

    url, secrets_dir = acl_server
    password = (secrets_dir / user_name("ops")).read_text().strip()
    # This time the password rides in the URL: it must not show up in the report.
    with_password = url.replace("redis://", f"redis://{user_name('ops')}:{password}@")
    settings = Settings(redis_url=with_password, prefix=PREFIX)
    report = ops.status(settings, sync_client(settings))
    assert report["streams"]["images"]["key"] == Keys(PREFIX).images
    assert password not in json.dumps(report)
    assert report["redis"].startswith(f"redis://{user_name('ops')}:***@")


def test_gateway_and_detector_processes_as_their_users(
    acl_server: tuple[str, Path], photo_png: dict[str, bytes], tmp_path: Path
) -> None:
    import httpx

    from facestream.control.embedded import free_port
    from tests.support.procs import Procs, base_env, gateway_ready

    url, secrets_dir = acl_server
    port = free_port()
    procs = Procs(tmp_path, base_env(url, PREFIX))

    def login(role: str) -> dict[str, str]:
        return {
            "FACESTREAM_REDIS_USERNAME": user_name(role),
            "FACESTREAM_REDIS_PASSWORD_FILE": str(secrets_dir / user_name(role)),
        }

    procs.start(
        "detector",
        ["-m", "facestream.detector"],
        FACESTREAM_CONSUMER="acl-det",
        **login("detector"),
    )
    procs.start(
        "gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port), **login("gateway")
    )
    gateway = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(gateway), "gateway ready")
        resp = httpx.post(
            f"{gateway}/v1/detect",
            params={"wait": "true", "id": "acl"},
            content=photo_png["camera"],
            timeout=30,
        )
        # The same image again: a cache hit, answered by the gateway itself under its role
        # once it has read which model the detector serves.
        compat = httpx.post(f"{gateway}/face-detection", content=photo_png["camera"], timeout=30)
        time.sleep(2.1)  # past the gateway's re-read of the served model
        again = httpx.post(
            f"{gateway}/v1/detect",
            params={"wait": "true", "id": "acl-2"},
            content=photo_png["camera"],
            timeout=30,
        )
    finally:
        codes = procs.stop()
    assert resp.status_code == 200 and resp.json()["id"] == "acl", resp.text
    assert compat.status_code == 200 and len(compat.json()["boxes"]) == 1
    assert again.status_code == 200, again.text
    assert again.json()["cached"] is True and again.json()["consumer"].startswith("gateway:")
    assert codes == [0, 0], procs.logs()


# --- the ACL matrix: per role, what it must not reach (NOPERM) and what its service needs ----
# docs/reliability.md ("What each role can do") states the same table in words.
IMAGES, RESULTS, DLQ = f"{PREFIX}:images", f"{PREFIX}:results", f"{PREFIX}:dlq"
REPLY = f"{PREFIX}:reply:gw-0123456789abcdef0123456789abcdef"
CACHE = f"{PREFIX}:face:{{{'a' * 64}}}:m"
LOOP = "redis.call('SET', KEYS[1], '1') while true do end"
# A harmless library: if FUNCTION LOAD were allowed the test fails without freezing the server.
PROBE_LIBRARY = (
    "#!lua name=facestream_probe\nredis.register_function('probe', function() return 1 end)"
)
SERVER_ADMIN: list[tuple[str, ...]] = [
    ("FLUSHALL",),
    ("CONFIG", "GET", "*"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "FLUSH"),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "LIST"),
    ("KEYS", "*"),
    ("GET", "other-app:secret"),  # keys outside the prefix
]
SERVICE_DENIED: list[tuple[str, ...]] = [
    ("EVAL", LOOP, "1", IMAGES),  # an unkillable script
    ("EVAL", "return 1", "0"),
    ("INFO",),
    ("SELECT", "1"),
    *SERVER_ADMIN,
]
DENIED: dict[str, list[tuple[str, ...]]] = {
    "ingest": [
        *SERVICE_DENIED,
        ("XRANGE", IMAGES, "-", "+"),  # other publishers' images, meta and reply_to
        ("XREAD", "STREAMS", IMAGES, "0"),
        ("XREADGROUP", "GROUP", "detectors", "x", "STREAMS", IMAGES, ">"),
        ("XTRIM", IMAGES, "MAXLEN", "0"),  # erase queued work
        ("XDEL", IMAGES, "0-1"),
        ("DEL", IMAGES),
        ("PEXPIRE", IMAGES, "1"),
        ("XADD", REPLY, "*", "result", "forged"),  # answer a waiting client
        ("XTRIM", REPLY, "MAXLEN", "0"),
        ("DEL", REPLY),
        ("XADD", RESULTS, "*", "result", "forged"),
        ("XRANGE", RESULTS, "-", "+"),
        ("HGETALL", CACHE),
        ("SET", f"{PREFIX}:consumer:detectors:d1", "x"),
        ("EVALSHA", "0" * 40, "0"),
        ("SCRIPT", "LOAD", "return 1"),
    ],
    "gateway": [
        *SERVICE_DENIED,
        ("XRANGE", IMAGES, "-", "+"),
        ("XTRIM", IMAGES, "MAXLEN", "0"),
        ("DEL", IMAGES),
        ("XADD", REPLY, "*", "result", "forged"),
        ("XRANGE", RESULTS, "-", "+"),  # adds its hits' results, reads none
        ("DEL", RESULTS),
        ("HSET", CACHE, "faces", "poison"),  # reads the cache, never writes it
        ("DEL", CACHE),
        ("SETBIT", f"{PREFIX}:bloom:m:1", "7", "1"),
        ("SET", f"{PREFIX}:lock:{{{'a' * 64}}}:m", "t"),
        ("HSET", f"{PREFIX}:serving:detectors", "d", "forged"),
    ],
    "detector": [
        *SERVICE_DENIED,
        ("DEL", IMAGES),
        ("XTRIM", IMAGES, "MAXLEN", "0"),
        ("PEXPIRE", IMAGES, "1"),
        ("DEL", RESULTS),
        ("DEL", DLQ),
        ("XRANGE", DLQ, "-", "+"),
        ("XREAD", "STREAMS", REPLY, "0"),  # writes replies, never reads them
        ("SET", f"{PREFIX}:consumer:sink-jsonl:s1", "x"),
    ],
    "ops": [
        *SERVER_ADMIN,
        ("EVAL", LOOP, "1", IMAGES),
        # A looping function persists and replicates: BUSY for every service, after restarts.
        ("FUNCTION", "LOAD", PROBE_LIBRARY),
        ("FUNCTION", "LOAD", "REPLACE", PROBE_LIBRARY),
        ("FUNCTION", "DELETE", "facestream_probe"),
        ("FUNCTION", "RESTORE", "x"),
        ("FUNCTION", "FLUSH"),
        ("FCALL", "no_such_function", "1", IMAGES),  # allowed, it would answer "not found"
        ("FCALL_RO", "no_such_function", "0"),
        # SCRIPT LOAD + EVALSHA would be EVAL by another name.
        ("SCRIPT", "LOAD", LOOP),
        ("EVALSHA", "0" * 40, "1", IMAGES),
        ("EVALSHA_RO", "0" * 40, "0"),
    ],
}
for _kind in ("jsonl", "webhook", "stdout"):
    DENIED[f"sink-{_kind}"] = [
        *SERVICE_DENIED,
        ("XADD", RESULTS, "*", "result", "forged"),  # every other sink group would read it
        ("DEL", RESULTS),
        ("XTRIM", RESULTS, "MAXLEN", "0"),
        ("DEL", DLQ),
        ("XTRIM", DLQ, "MAXLEN", "0"),
        ("XRANGE", IMAGES, "-", "+"),
        ("SET", CACHE, "poison"),
        ("SET", f"{PREFIX}:consumer:detectors:d1", "x"),  # block a detector's start
        ("SET", f"{PREFIX}:consumer:sink-other:s1", "x"),
        ("XADD", REPLY, "*", "result", "forged"),
    ]
# What each service sends, as its role, beyond what the process tests above exercise.
ALLOWED: dict[str, list[tuple[str, ...]]] = {
    "ingest": [
        ("PING",),
        ("HELLO",),
        ("XADD", IMAGES, "*", "event", "x"),
        ("XLEN", IMAGES),
        ("XINFO", "GROUPS", IMAGES),
        ("MEMORY", "USAGE", IMAGES, "SAMPLES", "0"),
        ("XREAD", "STREAMS", REPLY, "0"),
        ("HGETALL", f"{PREFIX}:serving:detectors"),  # `facestream detect`'s detector check
    ],
    "gateway": [
        ("XADD", IMAGES, "*", "event", "x"),
        ("XINFO", "GROUPS", IMAGES),
        ("XREAD", "STREAMS", REPLY, "0"),
        ("XADD", RESULTS, "*", "result", "x"),
        ("HMGET", CACHE, "faces", "width"),
        ("GETBIT", f"{PREFIX}:bloom:m:1", "7"),
        ("HGETALL", f"{PREFIX}:serving:detectors"),
    ],
    "detector": [
        ("XLEN", DLQ),  # the DLQ-size metric
        ("HSET", f"{PREFIX}:serving:detectors", "d", "1:m"),
        ("XLEN", IMAGES),
        ("XINFO", "GROUPS", RESULTS),
        ("XADD", REPLY, "*", "result", "x"),
        ("PEXPIRE", REPLY, "60000"),
        ("SET", f"{PREFIX}:consumer:detectors:d1", "x"),
        ("DEL", f"{PREFIX}:consumer:detectors:d1"),
        ("SET", f"{PREFIX}:lock:{{{'a' * 64}}}:m", "t"),
    ],
    "sink-jsonl": [
        ("XINFO", "GROUPS", RESULTS),
        ("SET", f"{PREFIX}:consumer:sink-jsonl:s1", "x"),
        ("DEL", f"{PREFIX}:consumer:sink-jsonl:s1"),
    ],
    "ops": [("XLEN", IMAGES), ("INFO",), ("SCRIPT", "KILL")],
}


@pytest.mark.parametrize(
    ("role", "command"), [(role, cmd) for role, cmds in DENIED.items() for cmd in cmds]
)
def test_acl_matrix_denied(
    acl_server: tuple[str, Path], r_admin: redis.Redis, role: str, command: tuple[str, ...]
) -> None:
    url, secrets_dir = acl_server
    client = sync_client(as_user(url, secrets_dir, role))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("role", "command"), [(role, cmd) for role, cmds in ALLOWED.items() for cmd in cmds]
)
def test_acl_matrix_allowed(
    acl_server: tuple[str, Path], r_admin: redis.Redis, role: str, command: tuple[str, ...]
) -> None:
    url, secrets_dir = acl_server
    client = sync_client(as_user(url, secrets_dir, role))
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        raise
    except redis.exceptions.ResponseError:
        pass  # e.g. NOTBUSY for SCRIPT KILL, no group yet: refused by Redis, not by the ACL
    finally:
        client.close()


@pytest.fixture(scope="module")
def r_admin(acl_server: tuple[str, Path]) -> Iterator[redis.Redis]:
    """The images stream and its group exist, as they do once a detector ran."""
    url, secrets_dir = acl_server
    client = sync_client(as_user(url, secrets_dir, "detector"))
    with contextlib.suppress(redis.exceptions.ResponseError):
        client.xgroup_create(IMAGES, "detectors", id="0", mkstream=True)
    yield client
    client.close()


def test_a_sink_cannot_forge_or_erase_but_its_scripts_work(acl_server: tuple[str, Path]) -> None:
    """The sink's dead-letter script (XACK results + XADD dlq) runs under the sink's role,
    while the same XADD to the results stream outside it is refused."""
    from facestream.common.streams.ack_gated import SinkDeadLetter
    from facestream.common.streams.scripts import Scripts

    url, secrets_dir = acl_server
    client = sync_client(as_user(url, secrets_dir, "sink-jsonl"))
    with contextlib.suppress(redis.exceptions.ResponseError):
        client.xgroup_create(RESULTS, "sink-jsonl", id="0", mkstream=True)
    det = sync_client(as_user(url, secrets_dir, "detector"))
    entry = det.xadd(RESULTS, {"result": b"r"}).decode()
    client.xreadgroup("sink-jsonl", "s1", {RESULTS: ">"})
    letters = SinkDeadLetter(RESULTS, DLQ, "sink-jsonl", "jsonl", "s1", [(entry, b"r", "why")])
    answer = letters.queue(Scripts(client), client)
    assert answer == [1]
    assert det.xlen(DLQ) >= 1
    client.close()
    det.close()
