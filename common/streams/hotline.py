"""One pipelined connection for the hot calls on one server.

redis-py's asyncio client spends 92-113 µs of CPU on one EVALSHA on this project's 2-core
machines; the same command written to a socket and its reply parsed by hiredis costs 38-43 µs,
a write step's pipeline 134-151 against 41-53 µs (benchmarks/hotline_cost.py; uvloop, asyncio).
The difference is per call, not per byte: the connection pool, the retry wrapper, the stream
reader and writer, the response callbacks. The gateway's
cache look-up (once per event-loop cycle of requests) and the detector's look-ups and writes
(per new photo) are such calls, so they go through a `Hotline` (common/streams/scripts.py
`Scripts.run`); everything else keeps redis-py.

A hotline writes each batch of commands at once and matches replies to batches in order, as a
server answers one connection's commands in order (RESP pipelining), so any number of callers
share it. Replies are raw (no redis-py response callbacks); error replies come back as values,
as redis-py's exception classes. It connects on first use and again after a loss, with the
client's own address, credentials and database; a call that finds the connection gone gets
`ConnectionError`, one whose reply takes longer than the client's socket timeout `TimeoutError`
(the connection is dropped: what else was in flight on it fails the same way). TLS and
unix-socket clients get no hotline (`Hotline.of` says None) and keep redis-py for everything.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis.asyncio
from redis._parsers.base import BaseParser  # redis-py's own error-reply -> exception mapping
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int | float | memoryview
Command = Sequence[Arg]


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float | None = None
    timeout_s: float | None = None  # a reply later than this drops the connection


def encode(arg: Arg) -> bytes:
    """An argument as redis-py sends it: text in UTF-8, numbers in decimal."""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # redis-py refuses booleans; so does this
        raise TypeError("a boolean is not a Redis argument")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    if isinstance(arg, memoryview):
        return arg.tobytes()
    raise TypeError(f"{type(arg).__name__} is not a Redis argument")


def pack(commands: Sequence[Command]) -> bytes:
    """Commands in RESP, ready to write in one go."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = encode(arg)
            out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> Exception:
    error: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class _Batch:
    __slots__ = ("answers", "future", "n", "sent")

    def __init__(self, future: asyncio.Future[list[Any]], n: int, sent: float) -> None:
        self.future = future
        self.n = n
        self.answers: list[Any] = []
        self.sent = sent


class _Connection(asyncio.Protocol):
    """One socket's replies, handed to the batches waiting on it in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[_Batch] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.loop = asyncio.get_running_loop()  # a socket serves the loop that opened it
        # Set while the transport's buffer is over its high-water mark (Redis not reading, a
        # stalled server): writers wait here instead of piling requests, images included,
        # into memory until the timeout.
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (the gateway runs on uvloop) are not asyncio.Transport's subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:  # no whole reply yet (RESP2 has no boolean replies)
                return
            if not waiting:
                self.fail(RedisConnectionError("a reply from Redis that nothing asked for"))
                return
            batch = waiting[0]
            batch.answers.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
            if len(batch.answers) == batch.n:
                waiting.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.answers)

    def pause_writing(self) -> None:
        if self.resumed is None:
            self.resumed = self.loop.create_future()

    def resume_writing(self) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Every batch in flight gets `error`; the connection is not used again."""
        self.lost = True
        if self.loop.is_closed():  # its loop is gone, and what waited on it with it
            self.waiting.clear()
            return
        if self.transport is not None:
            self.transport.abort()
        self.resume_writing()  # writers waiting for room find the connection lost
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)


class Hotline:
    def __init__(self, address: Address) -> None:
        self.address = address
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, client: Any) -> Hotline | None:
        """A hotline to the server `client` (redis-py, asyncio) talks to, or None where it cannot
        have one: a cluster, TLS, a unix socket."""
        if not isinstance(client, redis.asyncio.Redis):
            return None
        pool = client.connection_pool
        if pool.connection_class is not redis.asyncio.Connection:
            return None
        kw = pool.connection_kwargs
        return cls(
            Address(
                host=kw.get("host", "localhost"),
                port=int(kw.get("port", 6379)),
                db=int(kw.get("db") or 0),
                username=kw.get("username"),
                password=kw.get("password"),
                connect_timeout_s=kw.get("socket_connect_timeout") or kw.get("socket_timeout"),
                timeout_s=kw.get("socket_timeout"),
            )
        )

    def pipeline(self) -> HotlinePipeline:
        return HotlinePipeline(self)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, in order; an error reply is its exception, as a value."""
        if not commands:
            return []
        conn = self._conn
        loop = asyncio.get_running_loop()
        if conn is None or conn.lost or conn.loop is not loop:
            conn = await self._connect()
        while conn.resumed is not None:  # its buffer is full: wait for Redis to read
            await asyncio.shield(conn.resumed)
            if conn.lost:
                raise RedisConnectionError("connection to Redis lost while waiting to write")
        batch = _Batch(loop.create_future(), len(commands), time.monotonic())
        conn.waiting.append(batch)
        assert conn.transport is not None
        conn.transport.write(pack(commands))
        if self._watch is None and self.address.timeout_s:
            self._watch = loop.call_later(self.address.timeout_s, self._check)
        return await batch.future

    async def call(self, *command: Arg) -> Any:
        """One command's reply; an error reply is raised."""
        (answer,) = await self.execute([command])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _check(self) -> None:
        """The timeout watch: one timer per hotline, re-armed for the oldest batch in flight."""
        self._watch = None
        conn, timeout = self._conn, self.address.timeout_s
        if conn is None or conn.lost or not conn.waiting or not timeout:
            return
        left = conn.waiting[0].sent + timeout - time.monotonic()
        if left <= 0:
            conn.fail(RedisTimeoutError(f"no reply from Redis in {timeout} s"))
            return
        self._watch = asyncio.get_running_loop().call_later(left, self._check)

    async def _connect(self) -> _Connection:
        # One connection attempt for every caller that finds the hotline down at once.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        a = self.address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(a.connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, a.host, a.port)
        except (OSError, TimeoutError) as exc:
            where = f"{a.host}:{a.port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        hello: list[Command] = []
        if a.password is not None:
            auth = ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
            hello.append(auth)
        if a.db:
            hello.append(("SELECT", a.db))
        if self._watch is not None:  # armed on an earlier connection (maybe another loop's)
            self._watch.cancel()
            self._watch = None
        self._conn = conn  # `execute` below goes out on it
        for answer in await self.execute(hello):
            if isinstance(answer, Exception):  # WRONGPASS is redis-py's AuthenticationError
                conn.fail(RedisConnectionError("connection set-up refused"))
                if isinstance(answer, AuthenticationError):
                    raise answer
                raise AuthenticationError(str(answer)) from answer
        return conn

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._conn is not None:
            self._conn.fail(RedisConnectionError("the hotline was closed"))
            self._conn = None


def stream_entries(raw: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Stream entries as redis-py gives them, from a raw XREAD / XREADGROUP / XRANGE reply:
    (id, field -> value); an entry deleted while pending has no fields."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry_id, flat in raw:
        out.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}))
    return out


class HotlinePipeline:
    """A hotline's pipeline, used as redis-py's is: the pipeline methods facestream's look-up,
    write and publish steps use (common/streams/scripts.py `Step`), with redis-py's argument
    order, and `execute`; replies stay raw."""

    def __init__(self, hotline: Hotline) -> None:
        self.hotline = hotline
        self.commands: list[tuple[Arg, ...]] = []

    def __len__(self) -> int:
        return len(self.commands)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """The replies in order; as redis-py's pipeline, the first error reply is raised
        unless `raise_on_error` is off (then errors are values)."""
        answers = await self.hotline.execute(self.commands)
        if raise_on_error:
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
        return answers

    def execute_command(self, *args: Arg, **_options: Any) -> HotlinePipeline:
        self.commands.append(args)
        return self

    def xadd(
        self,
        name: str,
        fields: dict[Any, Any],
        id: str = "*",
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> HotlinePipeline:
        args: list[Arg] = ["XADD", name]
        if maxlen is not None:
            args += ["MAXLEN", "~", maxlen] if approximate else ["MAXLEN", maxlen]
        args.append(id)
        for field_name, value in fields.items():
            args += [field_name, value]
        self.commands.append(tuple(args))
        return self

    def xack(self, name: str, groupname: str, *ids: Arg) -> HotlinePipeline:
        return self.execute_command("XACK", name, groupname, *ids)

    def xdel(self, name: str, *ids: Arg) -> HotlinePipeline:
        return self.execute_command("XDEL", name, *ids)

    def pexpire(self, name: str, time_ms: int) -> HotlinePipeline:
        return self.execute_command("PEXPIRE", name, time_ms)

    def hset(self, name: str, *, items: list[Arg]) -> HotlinePipeline:
        return self.execute_command("HSET", name, *items)
