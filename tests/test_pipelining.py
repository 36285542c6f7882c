"""store/pipelining.py against a real redis-server: replies matched in order, failures contained."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gpt_grpc.store.pipelining import PipelinedConnection
from tests.redis_server import RedisServer


@pytest.fixture
async def pipelined(redis_url: str) -> AsyncIterator[PipelinedConnection]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    conn = PipelinedConnection(client.connection_pool, timeout=1.0)
    try:
        yield conn
    finally:
        await conn.aclose()
        await client.aclose()


async def client_id(conn: PipelinedConnection) -> int:
    return int(await conn.execute("CLIENT", "ID"))


async def test_concurrent_commands_get_their_own_replies(pipelined: PipelinedConnection) -> None:
    first = await client_id(pipelined)
    replies = await asyncio.gather(*(pipelined.execute("ECHO", f"m{i}") for i in range(500)))
    assert replies == [f"m{i}".encode() for i in range(500)]
    assert await client_id(pipelined) == first  # all of it on one connection


async def test_an_error_reply_fails_its_own_command_only(pipelined: PipelinedConnection) -> None:
    await pipelined.execute("SET", "text", "not a number")
    first = await client_id(pipelined)
    results = await asyncio.gather(
        pipelined.execute("ECHO", "before"),
        pipelined.execute("INCR", "text"),
        pipelined.execute("ECHO", "after"),
        return_exceptions=True,
    )
    assert results[0] == b"before" and results[2] == b"after"
    assert isinstance(results[1], ResponseError)
    assert await client_id(pipelined) == first  # an error reply does not cost the connection


async def test_a_caller_that_gives_up_leaves_the_order_intact(pipelined: PipelinedConnection) -> None:
    # BLPOP holds the connection's later commands until it times out server-side (0.3 s).
    blocked = asyncio.ensure_future(pipelined.execute("BLPOP", "empty-list", "0.3"))
    await asyncio.sleep(0)
    given_up = asyncio.ensure_future(pipelined.execute("ECHO", "given up"))
    waiting = asyncio.ensure_future(pipelined.execute("ECHO", "still wanted"))
    await asyncio.sleep(0.05)
    given_up.cancel()
    assert await waiting == b"still wanted"
    assert await blocked is None
    assert given_up.cancelled()
    assert await pipelined.execute("ECHO", "later") == b"later"


async def test_a_reply_later_than_the_timeout_fails_every_waiter_and_the_next_call_reconnects(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    conn = PipelinedConnection(client.connection_pool, timeout=0.3)
    try:
        first = await client_id(conn)
        started = time.monotonic()
        results = await asyncio.gather(
            conn.execute("BLPOP", "empty-list", "3"),
            conn.execute("ECHO", "behind it"),
            return_exceptions=True,
        )
        waited = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert waited < 2.0  # the watchdog, not the server's 3 s
        assert await conn.execute("ECHO", "again") == b"again"
        assert await client_id(conn) != first
    finally:
        await conn.aclose()
        await client.aclose()


async def test_redis_gone_and_back() -> None:
    server = RedisServer()
    server.start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=1)
    conn = PipelinedConnection(client.connection_pool, timeout=5.0)
    try:
        assert await conn.execute("ECHO", "up") == b"up"
        waiting = asyncio.ensure_future(conn.execute("BLPOP", "empty-list", "10"))
        await asyncio.sleep(0.1)
        server.kill()
        with pytest.raises(RedisConnectionError):
            await waiting  # in flight when the server died: fails at once, not at the timeout
        with pytest.raises(RedisConnectionError):
            await conn.execute("ECHO", "down")
        server.start()  # same port
        # The first command after the restart reconnects by itself.
        assert await conn.execute("ECHO", "back") == b"back"
    finally:
        await conn.aclose()
        await client.aclose()
        server.stop()


async def test_callers_queued_behind_a_failed_connect_fail_with_it() -> None:
    server = RedisServer()  # never started: connection refused
    client = aioredis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=1)
    conn = PipelinedConnection(client.connection_pool, timeout=1.0)
    try:
        results = await asyncio.gather(*(conn.execute("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await conn.aclose()
        await client.aclose()


async def test_a_closed_connection_refuses_commands(pipelined: PipelinedConnection) -> None:
    assert await pipelined.execute("PING") == b"PONG"  # raw replies: no response callbacks
    await pipelined.aclose()
    with pytest.raises(RedisConnectionError):
        await pipelined.execute("PING")
