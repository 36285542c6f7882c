"""Commands on one Redis connection, each written without waiting for the replies before it.

The admission script runs once per call with a client token. Through
redis-py's client, each run takes a connection from the pool and gives it
back, goes through its retry wrapper and event hooks, and bounds the write
with `asyncio.wait_for` and the read with a timeout context. Measured on the
bench, that costs the gateway more CPU than the round trip itself.

Here each command is written at once on one long-lived connection. One reader
task hands the replies back in order: Redis answers the commands of a
connection in the order they came, which is what its pipelining rests on.
Instead of one timer per command, a watchdog bounds the wait of the oldest
command. When the connection fails, every command waiting on it fails with
redis-py's ConnectionError or TimeoutError, as the pooled client would. The
next command opens a new connection.

Only redis-py's public API is used: the pool's `connection_class` and
`connection_kwargs`, and a Connection's `connect`, `send_packed_command`,
`read_response` and `disconnect`. Commands are packed by hiredis's
`pack_command` (C): redis-py's Python packer took 10.7 us for the admission
script's 15 arguments, hiredis's 1.8 us.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The watchdog looks this many times per timeout: a reply may be late by up to 1/4 of it more.
WATCHDOG_CHECKS_PER_TIMEOUT = 4


class _Link:
    """One connection, the futures of the commands written on it (oldest first), and its reader."""

    __slots__ = ("connection", "error", "reader", "waiting", "watchdog")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None  # set once: the link is broken


class PipelinedConnection:
    """`execute(*args)`: one command and its reply, on a connection shared by every caller."""

    def __init__(self, pool: aioredis.ConnectionPool, *, timeout: float) -> None:
        # The link's connection has no socket timeout of its own: reads wait with no limit while
        # nothing is owed, and the watchdog bounds the wait for a reply.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        self._timeout = timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None
        # Callers queued behind a connect that failed get its error instead of trying again each:
        # with Redis unreachable, 32 callers would otherwise wait 32 connect timeouts in turn.
        self._connect_failures = 0
        self._connect_error = ""
        self._disconnecting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """The command's reply; redis-py's ResponseError for an error reply (the connection lives on).

        A connection that fails (ConnectionError) is replaced and the command is sent once more,
        as the pooled client does with `Retry(NoBackoff(), 1)`. A timeout is not retried.
        """
        try:
            return await self._once(args)
        except RedisConnectionError:
            return await self._once(args)

    async def _once(self, args: tuple[str | bytes | int | float, ...]) -> Any:
        link = self._link
        if link is None:
            link = await self._connect()
        connection = link.connection
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # No await between here and the write: the order of `waiting` is the order on the wire.
        link.waiting.append((future, loop.time()))
        try:
            # cast: hiredis's stub types the tuple as having one element.
            await connection.send_packed_command(hiredis.pack_command(cast(Any, args)), check_health=False)
        except BaseException as exc:
            # Part of the command may be on the wire: no reply after it can be matched any more.
            self._break(link, exc if isinstance(exc, RedisError) else RedisConnectionError("write interrupted"))
            raise
        return await future

    async def _connect(self) -> _Link:
        if self._closed:
            raise RedisConnectionError("the store is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        failures = self._connect_failures
        async with self._connecting:
            if self._link is not None:  # another caller connected meanwhile
                return self._link
            if self._connect_failures != failures:  # another caller failed to, meanwhile
                raise RedisConnectionError(self._connect_error)
            connection = self._connection_class(**self._kwargs)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            except BaseException as exc:
                self._connect_failures += 1
                self._connect_error = str(exc) or type(exc).__name__
                await self._disconnect(connection)
                raise
            link = _Link(connection)
            loop = asyncio.get_running_loop()
            link.reader = loop.create_task(self._read(link))
            self._arm(link, loop)
            self._link = link
            return link

    async def _read(self, link: _Link) -> None:
        connection, waiting = link.connection, link.waiting
        try:
            while True:
                try:
                    reply: Any = await connection.read_response()
                except ResponseError as exc:  # an error reply: that command's answer
                    reply = exc
                if not waiting:
                    raise RedisConnectionError("Redis sent a reply nobody asked for")
                future = waiting.popleft()[0]
                if future.done():  # its caller gave up (cancelled): the reply is dropped, in order
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            self._break(link, RedisConnectionError("the store is closed"))
            raise
        except Exception as exc:
            self._break(link, exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))

    def _arm(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        link.watchdog = loop.call_later(self._timeout / WATCHDOG_CHECKS_PER_TIMEOUT, self._check, link, loop)

    def _check(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        if link.error is not None:
            return
        if link.waiting and loop.time() - link.waiting[0][1] > self._timeout:
            self._break(link, RedisTimeoutError(f"no reply from Redis in {self._timeout:g}s"))
            return
        self._arm(link, loop)

    def _break(self, link: _Link, error: BaseException) -> None:
        """Fail every command waiting on `link` with `error`, once, and drop the connection."""
        if link.error is not None:
            return
        link.error = error
        if self._link is link:
            self._link = None
        if link.watchdog is not None:
            link.watchdog.cancel()
        while link.waiting:
            future = link.waiting.popleft()[0]
            if not future.done():  # an exception of its own each: tracebacks are not shared across tasks
                future.set_exception(_copy(error))
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
        # redis-py's disconnect() closes the socket and tidies its own state.
        task = asyncio.get_running_loop().create_task(self._disconnect(link.connection))
        self._disconnecting.add(task)
        task.add_done_callback(self._disconnecting.discard)

    @staticmethod
    async def _disconnect(connection: AbstractConnection) -> None:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        self._closed = True
        link = self._link
        if link is not None:
            self._break(link, RedisConnectionError("the store is closed"))
            if link.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await link.reader
        if self._disconnecting:
            await asyncio.wait(self._disconnecting)


def _copy(error: BaseException) -> BaseException:
    """The same failure as a new exception (redis-py's errors take their message as their argument)."""
    try:
        return type(error)(*error.args)
    except Exception:  # an exception type with another signature: a connection error
        return RedisConnectionError(str(error))
