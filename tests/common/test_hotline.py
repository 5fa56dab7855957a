"""The hot calls' pipelined connection (common/streams/hotline.py) on a real redis-server: replies
matched to their callers in order, error replies as redis-py's exceptions, loss, timeout and
reconnection, credentials and database from the client, and the scripts run through it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import uvloop
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client, hotline
from facestream.common.streams.hotline import Address, Hotline, pack
from facestream.common.streams.scripts import Scripts
from facestream.control.embedded import EmbeddedRedis

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture
def one_server(redis_url: str) -> str:
    if Settings(redis_url=redis_url).cluster:
        pytest.skip("a hotline is for one server; a cluster keeps redis-py")
    return redis_url


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Each test on both event loops: the gateway's uvicorn runs uvloop, the detector asyncio."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


def hotline_of(url: str, **settings: Any) -> Hotline:
    made = hotline(Settings(redis_url=url, **settings), async_client(Settings(redis_url=url)))
    assert made is not None
    return made


def test_concurrent_callers_each_get_their_own_replies(
    run: Runner, one_server: str, prefix: str
) -> None:
    async def main() -> list[list[Any]]:
        hotlines = hotline_of(one_server)
        try:
            # Batches of different lengths written back to back: each caller's answers are
            # its own, in its own order.
            return await asyncio.gather(
                *(
                    hotlines.execute([("INCRBY", f"{prefix}:n", i), ("ECHO", f"{i}")] * (i % 3 + 1))
                    for i in range(200)
                )
            )
        finally:
            hotlines.close()

    answers = run(main())
    for i, got in enumerate(answers):
        assert len(got) == 2 * (i % 3 + 1)
        assert got[1::2] == [str(i).encode()] * (i % 3 + 1)
        assert all(isinstance(n, int) for n in got[0::2])
    total = sum(i * (i % 3 + 1) for i in range(200))
    assert max(n for got in answers for n in got[0::2]) == total


def test_error_replies_are_values_of_redis_py_classes(
    run: Runner, one_server: str, prefix: str, r: redis.Redis
) -> None:
    r.set(f"{prefix}:text", "x")

    async def main() -> None:
        hotlines = hotline_of(one_server)
        try:
            missing, wrong, fine = await hotlines.execute(
                [
                    ("EVALSHA", "0" * 40, 0),
                    ("LPUSH", f"{prefix}:text", "a"),
                    ("GET", f"{prefix}:text"),
                ]
            )
            assert isinstance(missing, NoScriptError)
            assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong.status_code)
            assert fine == b"x"
            with pytest.raises(ResponseError):
                await hotlines.call("LPUSH", f"{prefix}:text", "a")
            assert await hotlines.call("ECHO", "still in step") == b"still in step"
        finally:
            hotlines.close()

    run(main())


def test_scripts_on_a_hotline_load_themselves_after_a_flush(
    run: Runner, one_server: str, r: redis.Redis
) -> None:
    async def main() -> None:
        client = async_client(Settings(redis_url=one_server))
        scripts = Scripts(client, hotline_of(one_server))
        try:
            r.script_flush()
            # lock_release.lua on a key nobody holds: 0, once the script is there again.
            assert await scripts.run_one(client, "lock_release", ["no-such-lock"], ["t"]) == 0
            r.script_flush()
            answers = await scripts.run(
                client, lambda pipe: scripts.lock_release(pipe, "no-such-lock", "t")
            )
            assert answers == [0]
            assert scripts.hotline is not None and scripts.hotline.connected
        finally:
            scripts.close()
            await client.aclose()

    run(main())


def test_a_lost_connection_fails_its_calls_and_the_next_call_reconnects(
    run: Runner, one_server: str, prefix: str, r: redis.Redis
) -> None:
    async def main() -> None:
        hotlines = hotline_of(one_server)
        try:
            name = f"hotline-{uuid.uuid4().hex[:8]}"
            await hotlines.call("CLIENT", "SETNAME", name)
            # In flight when the server drops the connection: BLPOP waits for 5 s.
            waiting = asyncio.ensure_future(hotlines.call("BLPOP", f"{prefix}:never", 5))
            await asyncio.sleep(0.2)
            for client in r.client_list():
                if client["name"] == name:
                    r.client_kill_filter(_id=client["id"])
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(waiting, 3)
            assert await hotlines.call("ECHO", "back") == b"back"
        finally:
            hotlines.close()

    run(main())


def test_one_hotline_serves_one_event_loop_after_another(one_server: str, run: Runner) -> None:
    made = hotline_of(one_server)

    async def main(n: int) -> Any:
        return await made.call("ECHO", f"loop {n}")

    # A process that runs its service twice (tests, an embedding application): the socket of
    # the first loop is left behind, not written from the second.
    assert [run(main(n)) for n in range(3)] == [b"loop 0", b"loop 1", b"loop 2"]
    made.close()


def test_a_reply_later_than_the_timeout_drops_the_connection(
    run: Runner, one_server: str, prefix: str
) -> None:
    async def main() -> None:
        hotlines = hotline_of(one_server)
        hotlines.address = dataclasses.replace(hotlines.address, timeout_s=0.3)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(RedisTimeoutError):
                await hotlines.call("BLPOP", f"{prefix}:never", 3)
            assert asyncio.get_running_loop().time() - started < 1.5
            assert await hotlines.call("ECHO", "back") == b"back"
        finally:
            hotlines.close()

    run(main())


@pytest.fixture
def acl_user(one_server: str, r: redis.Redis) -> Iterator[tuple[str, str]]:
    name, password = f"hotline-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    r.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "+@all")
    yield name, password
    r.execute_command("ACL", "DELUSER", name)


def test_credentials_and_database_come_from_the_client(
    run: Runner, one_server: str, acl_user: tuple[str, str], prefix: str, r: redis.Redis
) -> None:
    name, password = acl_user
    base = one_server.rsplit("/", 1)[0]

    async def main(secret: str) -> Any:
        settings = Settings(redis_url=f"{base}/3", redis_username=name, redis_password=secret)
        client = async_client(settings)
        made = hotline(settings, client)
        assert made is not None
        try:
            await made.call("SET", f"{prefix}:in-db-3", "yes")
            return await made.call("ACL", "WHOAMI")
        finally:
            made.close()
            await client.aclose()

    assert run(main(password)) == name.encode()
    assert redis.Redis.from_url(f"{base}/3").get(f"{prefix}:in-db-3") == b"yes"
    assert r.get(f"{prefix}:in-db-3") is None
    with pytest.raises(AuthenticationError):
        run(main("not-" + password))


def test_no_hotline_where_redis_py_must_keep_the_connection(one_server: str) -> None:
    host_port = one_server.split("//", 1)[1].split("/", 1)[0]
    assert (
        hotline(Settings(redis_url=one_server, redis_hotline=False), async_client(Settings()))
        is None
    )
    tls = Settings(redis_url=f"rediss://{host_port}/0")
    assert hotline(tls, async_client(tls)) is None
    assert Hotline.of(redis.asyncio.Redis(unix_socket_path="/tmp/no-such.sock")) is None
    assert Hotline.of(redis.Redis()) is None  # not an asyncio client


def test_a_hotline_pipeline_sends_what_redis_py_sends(
    run: Runner, one_server: str, prefix: str
) -> None:
    stream, key = f"{prefix}:s", f"{prefix}:h"
    made = hotline_of(one_server)  # it connects on first use, in the loop that uses it
    pipe = made.pipeline()
    pipe.xadd(stream, {"result": b"\x00\x01"}, maxlen=5, approximate=True)
    pipe.pexpire(stream, 60_000)
    pipe.hset(key, items=["a", 1, "b", 2.5])
    pipe.execute_command("XGROUP", "CREATE", stream, "g", "0")
    pipe.execute_command("XREADGROUP", "GROUP", "g", "c", "STREAMS", stream, ">")
    assert len(pipe) == 5
    assert pack([("XACK", stream, "g", "0-1")]).startswith(b"*4\r\n$4\r\nXACK\r\n")

    async def main() -> list[Any]:
        try:
            answers = await pipe.execute()
            entry = answers[4][0][1][0][0]
            return [
                *answers,
                *await made.pipeline().xack(stream, "g", entry).xdel(stream, entry).execute(),
            ]
        finally:
            made.close()

    answers = run(main())
    assert answers[1:4] == [1, 2, b"OK"]
    assert answers[4][0][1][0][1] == [b"result", b"\x00\x01"]
    assert answers[5:] == [1, 1]
    r = redis.Redis.from_url(one_server)
    assert r.hgetall(key) == {b"a": b"1", b"b": b"2.5"}
    assert 0 < r.pttl(stream) <= 60_000


def test_addresses_are_read_off_the_client() -> None:
    client = async_client(Settings(redis_url="redis://example.invalid:6390/2", socket_timeout_s=7))
    made = Hotline.of(client)
    assert made is not None
    assert made.address == Address(
        "example.invalid", 6390, 2, None, None, connect_timeout_s=5.0, timeout_s=7.0
    )


def test_a_stalled_server_makes_writers_wait_instead_of_buffering(
    run: Runner, tmp_path: Path
) -> None:
    """redis-server stopped (SIGSTOP) while 40 callers each send 1 MB: past the kernel's socket
    buffers the writers wait for room, so the process holds about one write's worth, not all
    of them; resumed, every call is answered."""
    server = EmbeddedRedis(tmp_path)
    server.start()
    made = hotline_of(server.url)
    payload = b"x" * (1 << 20)

    async def main() -> tuple[int, list[Any]]:
        await made.call("PING")
        os.kill(server.pid, signal.SIGSTOP)
        try:
            calls = [
                asyncio.ensure_future(made.call("SET", f"big:{i}", payload)) for i in range(40)
            ]
            await asyncio.sleep(1.0)
            assert made._conn is not None and made._conn.transport is not None
            buffered = made._conn.transport.get_write_buffer_size()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        return buffered, await asyncio.gather(*calls)

    try:
        buffered, answers = run(main())
    finally:
        made.close()
        server.stop()
    assert answers == [b"OK"] * 40
    assert buffered < 4 << 20  # without flow control: tens of MB
