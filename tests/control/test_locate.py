"""Which Redis a command uses: FACESTREAM_REDIS_URL, a running `up`'s stack.json, or the
default only when it holds facestream; and the one-line answers when there is none."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from facestream.common import stackfile
from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client
from facestream.common.streams.trim import trim_acked
from facestream.control import locate
from facestream.control.client import _shorten, event_id
from facestream.control.embedded import free_port

FACESTREAM = [sys.executable, "-m", "facestream.control.cli"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stack(directory: Path, url: str, pid: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stackfile.write(directory, stackfile.StackFile(url, pid, socket.gethostname(), "fsx"))


def test_settings_find_a_running_stack_and_ignore_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACESTREAM_REDIS_URL", raising=False)
    monkeypatch.delenv("FACESTREAM_PREFIX", raising=False)
    live, dead = tmp_path / "live", tmp_path / "dead"
    _stack(live, "redis://127.0.0.1:7001/0", os.getpid())
    _stack(dead, "redis://127.0.0.1:7002/0", _dead_pid())

    found = Settings(stack_dir=str(live))
    assert found.redis_url == "redis://127.0.0.1:7001/0" and found.prefix == "fsx"
    assert found.stack_file == str(live / "stack.json")
    assert "running `facestream up`" in found.redis_origin

    stale = Settings(stack_dir=str(dead))
    assert stale.redis_url == "redis://127.0.0.1:6379/0" and stale.stack_file is None
    assert "redis_url" not in stale.model_fields_set

    monkeypatch.setenv("FACESTREAM_REDIS_URL", "redis://127.0.0.1:7003/0")
    explicit = Settings(stack_dir=str(live))
    assert explicit.redis_url == "redis://127.0.0.1:7003/0" and explicit.stack_file is None
    assert explicit.redis_origin == "FACESTREAM_REDIS_URL"
    assert explicit.prefix == "facestream"  # the stack's prefix only comes with its URL


def test_the_default_url_is_used_only_when_it_holds_facestream(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    if "+cluster" in redis_url:
        pytest.skip("the default URL is a single node")
    settings = Settings(redis_url=redis_url, prefix=prefix)
    # As if FACESTREAM_REDIS_URL were unset and no stack ran: the default URL, pointing at
    # this test's own server.
    settings.model_fields_set.discard("redis_url")
    with pytest.raises(locate.NotFound, match="holds no facestream keys"):
        locate.check(settings, r)
    r.xadd(Keys(prefix, 1).parts[0].images, {"event": b"x"})
    locate.check(settings, r)  # now it does

    nothing = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    nothing.model_fields_set.discard("redis_url")
    client = redis.Redis.from_url(nothing.redis_url, socket_connect_timeout=1)
    with pytest.raises(locate.NotFound, match=r"no facestream found: .* nothing answers"):
        locate.check(nothing, client)


@pytest.mark.parametrize("command", [["ops", "status"], ["ops", "pending"], ["results"]])
def test_redis_down_is_one_line(command: list[str], tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "FACESTREAM_REDIS_URL": url}
    done = subprocess.run(
        [*FACESTREAM, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"facestream: redis {url} (FACESTREAM_REDIS_URL)"
    assert len(lines) == 2 and f"cannot reach Redis at {url}" in lines[1], done.stderr


def test_long_file_names_make_bounded_ids_and_names() -> None:
    short = event_id(Path("/x/group.jpg"))
    assert short.startswith("group.jpg-") and len(short) == len("group.jpg-") + 8
    a = event_id(Path("é" * 200 + ".jpg"))
    b = event_id(Path("é" * 199 + "x.jpg"))
    assert len(a) <= 128 and len(b) <= 128
    assert a.rsplit("-", 1)[0] != b.rsplit("-", 1)[0]  # same head, told apart by the hash
    undecodable = os.fsdecode(b"photo-\xff.jpg")
    assert event_id(Path(undecodable)).startswith("photo-\ufffd.jpg-")
    assert len(_shorten("é" * 200, 200, in_bytes=True).encode()) <= 200


def test_trim_keeps_the_newest_results(redis_url: str, prefix: str, r: redis.Redis) -> None:
    stream = Keys(prefix, 1).parts[0].results
    ids = [r.xadd(stream, {"result": b"x"}).decode() for _ in range(10)]
    r.xgroup_create(stream, "sink-jsonl", id="$")  # every entry delivered and acknowledged

    async def trim(keep: int) -> int:
        client = async_client(Settings(redis_url=redis_url))
        try:
            return await trim_acked(client, stream, keep)
        finally:
            await client.aclose()

    assert asyncio.run(trim(20)) == 0  # fewer than `keep` in all: nothing goes
    assert asyncio.run(trim(4)) == 6
    assert [e.decode() for e, _ in r.xrange(stream)] == ids[-4:]


def test_health_of_a_detector_that_beats_but_does_not_serve(
    redis_url: str,
    prefix: str,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from facestream.control.cli import main

    monkeypatch.setenv("FACESTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("FACESTREAM_PREFIX", prefix)
    monkeypatch.setattr("facestream.control.cli.configure", lambda settings: None)
    keys = Keys(prefix, 1)
    r.xadd(keys.parts[0].images, {"event": b"x"})  # a facestream Redis
    r.set(keys.consumer_claim("detectors", "d1"), "token", px=60_000)  # its heartbeat

    assert main(["health", "detector", "--consumer", "d1"]) == 1
    assert "not serving: a background task is down" in capsys.readouterr().out
    until = int(time.time() * 1000) + 60_000
    r.hset(keys.serving("detectors"), "d1", f"{until}:some-model")
    assert main(["health", "detector", "--consumer", "d1"]) == 0
    assert "healthy: detector d1 in detectors" in capsys.readouterr().out
    assert main(["health", "detector", "--consumer", "gone"]) == 1
    assert "no heartbeat" in capsys.readouterr().out
