"""FastTransport against httpx2's own transport: same answers, same failures, a sound pool."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_grpc.upstream.transport import FastTransport, _Body

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class Upstream:
    """A loopback server answering each request with the next canned reply."""

    def __init__(self, replies: list[bytes | list[bytes]], close_after: bool = False) -> None:
        self.replies = replies
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.hold = asyncio.Event()
        self.hold.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while self.replies:
                self.requests.append(await _read_request(reader))
                reply = self.replies.pop(0)
                for i, piece in enumerate([reply] if isinstance(reply, bytes) else reply):
                    if i:
                        await self.hold.wait()
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(upstream: Upstream) -> AsyncIterator[str]:
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
        finally:
            upstream.hold.set()
            if upstream.handlers:  # the client has closed its connections: let the handlers see it
                await asyncio.wait(upstream.handlers, timeout=2)


def fast(**kwargs: object) -> FastTransport:
    options: dict[str, object] = {"max_connections": 100, "max_keepalive_connections": 10}
    options.update(kwargs)
    return FastTransport(**options)  # type: ignore[arg-type]


async def outcome(transport: httpx2.AsyncBaseTransport, replies: list[bytes | list[bytes]]) -> tuple[object, ...]:
    upstream = Upstream(list(replies))
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        try:
            response = await client.post(url, content=b'{"model":"m"}', timeout=2.0)
        except httpx2.HTTPError as exc:
            return (type(exc).__name__,)
        headers = sorted((k.lower(), v) for k, v in response.headers.multi_items())
        return response.status_code, response.reason_phrase, headers, response.content, response.http_version


GZ = gzip.compress(b'{"ok": true}')
REPLIES: list[list[bytes | list[bytes]]] = [
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello"],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"],
    [[b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n5\r", b"\nhel", b"lo\r\n0\r\nX-T: 1\r\n\r\n"]],
    [b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"],
    [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"],
    [b"HTTP/1.1 204 No Content\r\n\r\n"],
    [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(GZ), GZ)],
    [b"HTTP/1.0 200 OK\r\n\r\nuntil the end"],
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],  # cut: the server closes
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"],  # cut inside a chunk
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],  # not a chunk size
    [b""],  # closed without a response
    [b"HTTP/1.1 200 OK\r\nContent-"],  # closed inside the head
    [b"garbage\r\n\r\n"],
    [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"],  # bare LF line ends
]


@pytest.mark.parametrize("replies", REPLIES)
async def test_same_outcome_as_httpx(replies: list[bytes | list[bytes]]) -> None:
    ours = await outcome(fast(), replies)
    theirs = await outcome(httpx2.AsyncHTTPTransport(), replies)
    assert ours == theirs


async def test_keep_alive_connections_are_reused() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    upstream = Upstream([ok] * 5)
    transport = fast()
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        for _ in range(5):
            assert (await client.post(url, content=b"x")).content == b"ok"
        assert "Connections: 0 active, 1 idle" in repr(transport._pool)
    assert upstream.connections == 1
    assert all(r.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") for r in upstream.requests)


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    upstream = Upstream([ok, ok, ok], close_after=True)
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast()) as client:
        for _ in range(3):
            assert (await client.post(url, content=b"x")).content == b"ok"
            await asyncio.sleep(0.05)  # the close reaches the client
    assert upstream.connections == 3


async def test_an_unfinished_response_closes_its_connection() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    upstream = Upstream([[chunked, b"5\r\nworld\r\n0\r\n\r\n"], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    upstream.hold.clear()  # the rest of the body waits until the caller has gone
    transport = fast()
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        async with client.stream("POST", url, content=b"x") as response:
            async for _ in response.aiter_raw():
                break  # the caller goes away mid-body
        assert "Connections: 0 active, 0 idle" in repr(transport._pool)


async def test_read_timeout() -> None:
    upstream = Upstream([[b"HTTP/1.1 200 OK\r\n", b"\r\n"]])
    upstream.hold.clear()  # the head does not end within the read timeout
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast()) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(url, content=b"x", timeout=httpx2.Timeout(0.2))


async def test_connect_error_and_pool_timeout() -> None:
    async with httpx2.AsyncClient(transport=fast()) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.post("http://127.0.0.1:9/v1", content=b"x")  # nothing listens on port 9
    hold = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await hold.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with server, httpx2.AsyncClient(transport=fast(max_connections=1)) as client:
        first = asyncio.ensure_future(client.post(url, content=b"x"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx2.PoolTimeout):
            await client.post(url, content=b"x", timeout=httpx2.Timeout(5.0, pool=0.2))
        hold.set()
        assert (await first).status_code == 200


async def test_requests_wait_for_a_free_connection() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    upstream = Upstream([ok] * 20)
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast(max_connections=2)) as client:
        replies = await asyncio.gather(*(client.post(url, content=b"x") for _ in range(20)))
    assert [r.content for r in replies] == [b"ok"] * 20
    assert upstream.connections <= 2


def _feed(body: _Body, pieces: list[bytes]) -> bytes:
    buffer = bytearray()
    out = []
    for piece in pieces:
        buffer += piece
        out.append(body.take(buffer))
    assert body.done
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_chunked_decoding_at_any_cut(chunks: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in itertools.pairwise(points)]
    assert _feed(_Body("chunked"), pieces) == b"".join(chunks)
