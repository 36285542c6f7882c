"""FastTransport against httpx2's own transport: same answers, same failures, a sound pool.

The upstream here is a raw loopback server that writes exact bytes and can reset, half-close,
close a TLS session uncleanly or pause: the cases where HTTP/1.1 clients differ.
"""

from __future__ import annotations

import asyncio
import enum
import gzip
import itertools
import os
import socket
import ssl
import struct
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_grpc.upstream import transport as transport_module
from gpt_grpc.upstream.http1 import Body
from gpt_grpc.upstream.transport import FastTransport, transport_for


class Act(enum.Enum):
    """What the server does instead of writing bytes."""

    RESET = "reset"  # abort the connection with a TCP RST
    HALF_CLOSE = "half-close"  # FIN (over TLS: close_notify first), then wait for the client to close
    CLOSE = "close"  # close without answering further (FIN)
    UNCLEAN_CLOSE = "unclean-close"  # FIN without TLS close_notify (a truncation attack looks like this)


Piece = bytes | Act
Reply = bytes | list[Piece]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _abort(writer: asyncio.StreamWriter, how: Act) -> None:
    sock = writer.get_extra_info("socket")
    if how is Act.RESET:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:  # the TCP stream ends with no TLS close_notify before it (on a duplicate: asyncio forbids shutdown())
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:
            raw.shutdown(socket.SHUT_WR)
    writer.transport.abort()


class Upstream:
    """A loopback server answering each request with the next canned reply."""

    def __init__(self, replies: list[Reply], close_after: bool = False) -> None:
        self.replies = replies
        self.close_after = close_after
        self.connections = 0
        self.closed = 0  # connections the client closed (or that ended)
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
                    if piece is Act.RESET or piece is Act.UNCLEAN_CLOSE:
                        await asyncio.sleep(0.05)  # the bytes before reach the client first
                        _abort(writer, piece)
                        return
                    if piece is Act.CLOSE:
                        return
                    if piece is Act.HALF_CLOSE:
                        if writer.get_extra_info("sslcontext") is not None:
                            writer.close()  # close_notify, then FIN
                        else:
                            writer.write_eof()
                        await reader.read()
                        return
                    assert isinstance(piece, bytes)
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close_after:
                    return
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed += 1
            writer.close()


@asynccontextmanager
async def serving(
    upstream: Upstream, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[str]:
    server = await asyncio.start_server(upstream.handle, host, port, ssl=tls)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield f"{'https' if tls else 'http'}://{host}:{upstream.port}/v1/chat/completions"
        finally:
            upstream.hold.set()
            if upstream.handlers:  # the client has closed its connections: let the handlers see it
                await asyncio.wait(upstream.handlers, timeout=2)


def fast(**kwargs: Any) -> FastTransport:
    options: dict[str, Any] = {"max_connections": 100, "max_keepalive_connections": 10}
    options.update(kwargs)
    return FastTransport(**options)


def on_loop(loop: str, main: Callable[[], Awaitable[object]]) -> object:
    """Run `main` on a fresh asyncio or uvloop loop (the gateway runs on uvloop when installed)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], limit: float = 3.0) -> bool:
    """Poll `condition` for up to `limit` seconds (bounded, for effects that follow a timer)."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def outcome(
    transport: httpx2.AsyncBaseTransport, replies: list[Reply], tls: ssl.SSLContext | None = None
) -> tuple[object, ...]:
    upstream = Upstream(list(replies))
    async with serving(upstream, tls=tls) as url, httpx2.AsyncClient(transport=transport) as client:
        try:
            response = await client.post(url, content=b'{"model":"m"}', timeout=2.0)
        except httpx2.HTTPError as exc:
            return (type(exc).__name__,)
        headers = sorted((k.lower(), v) for k, v in response.headers.multi_items())
        return response.status_code, response.reason_phrase, headers, response.content, response.http_version


GZ = gzip.compress(b'{"ok": true}')
REPLIES: list[list[Reply]] = [
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello"],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"],
    [[b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n5\r", b"\nhel", b"lo\r\n0\r\nX-T: 1\r\n\r\n"]],
    [b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"],
    [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"],
    [b"HTTP/1.1 204 No Content\r\n\r\n"],
    [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(GZ), GZ)],
    [[b"HTTP/1.0 200 OK\r\n\r\nuntil the end", Act.CLOSE]],
    [[b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", Act.CLOSE]],
    [[b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Act.HALF_CLOSE]],  # the body ends with a clean FIN
    [[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Act.CLOSE]],  # cut: the server closes
    [[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", Act.CLOSE]],  # cut inside a chunk
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],  # not a chunk size
    [[Act.CLOSE]],  # closed without a response
    [[b"HTTP/1.1 200 OK\r\nContent-", Act.CLOSE]],  # closed inside the head
    [b"garbage\r\n\r\n"],
    [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"],  # bare LF line ends
    # D1: a body delimited by the connection's end that ends in a reset is cut, not complete.
    [[b"HTTP/1.1 200 OK\r\n\r\nuntil the", Act.RESET]],
    [[b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the", Act.RESET]],
    [[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Act.RESET]],
    # D2: obsolete line folding is unfolded (RFC 9112 5.2); a repeated identical length is one length (6.3).
    [b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  second\r\n\tthird\r\nContent-Length: 2\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok"],  # differing lengths: refused
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"],
    [b"HTTP/1.1 200 OK\r\n folded: at the start\r\nContent-Length: 2\r\n\r\nok"],  # nothing to fold into
]


@pytest.mark.parametrize("replies", REPLIES)
async def test_same_outcome_as_httpx(replies: list[Reply]) -> None:
    ours = await outcome(fast(), replies)
    theirs = await outcome(httpx2.AsyncHTTPTransport(), replies)
    assert ours == theirs


# -- D1: a body read until the connection ends is complete only if it ended cleanly ------------------------

LOOPS = ["asyncio", "uvloop"]
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"


@pytest.fixture(scope="module")
def tls_contexts(pki: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    return server, client


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(("ending", "complete"), [(Act.HALF_CLOSE, True), (Act.RESET, False)])
def test_body_until_close_over_tcp(loop: str, ending: Act, complete: bool) -> None:
    async def both() -> tuple[object, object]:
        replies: list[Reply] = [[UNTIL_CLOSE, ending]]
        return await outcome(fast(), replies), await outcome(httpx2.AsyncHTTPTransport(), replies)

    ours, theirs = on_loop(loop, both)  # type: ignore[misc]
    assert ours == theirs
    assert (ours[3] == b"until the end") if complete else ours == ("ReadError",)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("ending", "complete"), [(Act.HALF_CLOSE, True), (Act.UNCLEAN_CLOSE, False), (Act.RESET, False)]
)
def test_body_until_close_over_tls(
    loop: str, ending: Act, complete: bool, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, client = tls_contexts

    async def both() -> tuple[object, object]:
        replies: list[Reply] = [[UNTIL_CLOSE, ending]]
        ours = await outcome(fast(ssl_context=client), replies, tls=server)
        return ours, await outcome(httpx2.AsyncHTTPTransport(verify=client), replies, tls=server)

    ours, theirs = on_loop(loop, both)  # type: ignore[misc]
    if complete:
        assert ours == theirs
        assert ours[3] == b"until the end"
    else:  # a TCP end without close_notify may be a truncation attack: never a complete answer
        assert ours in [("ReadError",), ("RemoteProtocolError",)], theirs


# -- D3: the pool's waiters --------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TIMEOUTS = {"timeout": {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}}


def one_connection(kind: str) -> httpx2.AsyncBaseTransport:
    if kind == "fast":
        return fast(max_connections=1)
    return httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=1))


async def send(transport: httpx2.AsyncBaseTransport, url: str, body: bytes) -> httpx2.Response:
    return await transport.handle_async_request(httpx2.Request("POST", url, content=body, extensions=TIMEOUTS))


async def send_and_read(transport: httpx2.AsyncBaseTransport, url: str, body: bytes) -> bytes:
    response = await send(transport, url, body)
    return await response.aread()


@pytest.mark.parametrize("kind", ["fast", "httpx"])
async def test_a_cancelled_waiter_passes_its_wake_up_on(kind: str) -> None:
    upstream = Upstream([OK] * 3)
    transport = one_connection(kind)
    async with serving(upstream) as url:
        first = await send(transport, url, b"first")
        second = asyncio.ensure_future(send(transport, url, b"second"))
        third = asyncio.ensure_future(send_and_read(transport, url, b"third"))
        await asyncio.sleep(0.1)  # both wait for the one connection
        await first.aclose()  # the connection's slot goes to the second waiter...
        second.cancel()  # ...which is cancelled before it runs: the third must get the slot
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await third == b"ok"
        await transport.aclose()


@pytest.mark.parametrize("kind", ["fast", "httpx"])
async def test_waiters_are_served_first_come_first_served(kind: str) -> None:
    upstream = Upstream([OK] * 3)
    transport = one_connection(kind)
    async with serving(upstream) as url:
        first = await send(transport, url, b"first")
        queued = asyncio.ensure_future(send_and_read(transport, url, b"queued"))
        await asyncio.sleep(0.1)
        await first.aread()  # the connection is free again: the queued request's turn...
        assert await send_and_read(transport, url, b"late") == b"ok"  # ...not this one's, sent at once
        assert await queued == b"ok"
        await transport.aclose()
    assert [r.split(b"\r\n\r\n", 1)[1] for r in upstream.requests] == [b"first", b"queued", b"late"]


# -- D4: Happy Eyeballs and a DNS cache --------------------------------------------------------------------

AddrInfo = tuple[int, int, int, str, tuple[str, int]]


async def test_a_cold_burst_resolves_each_host_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    resolve = loop.getaddrinfo

    async def counting(host: str, *args: Any, **kwargs: Any) -> list[AddrInfo]:
        lookups.append(host)
        return await resolve(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    burst = 60
    upstream = Upstream([OK] * (burst + 3))
    transport = fast(dns_ttl=0.3, max_keepalive_connections=0)  # every request opens a connection
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        url = url.replace("127.0.0.1", "localhost")
        replies = await asyncio.gather(*(client.post(url, content=b"x") for _ in range(burst)))
        assert [r.content for r in replies] == [b"ok"] * burst
        assert (await client.post(url, content=b"x")).content == b"ok"
        assert upstream.connections == burst + 1  # new connections...
        assert lookups == ["localhost"]  # ...and one lookup for them all
        await asyncio.sleep(0.5)  # the cached answer expires: the next connection looks the name up again
        assert (await client.post(url, content=b"x")).content == b"ok"
        assert (await client.post(url, content=b"x")).content == b"ok"
    assert lookups == ["localhost", "localhost"]


class Blackhole:
    """A loopback address:port whose SYNs are dropped: a listener with a full accept queue.

    This is what a route that loses packets looks like to a client (connect hangs), without
    sending a packet off the machine."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind((host, port))
        self.listener.listen(0)
        self.filler = socket.socket()
        self.filler.setblocking(False)
        try:
            self.filler.connect((host, port))  # fills the queue of one
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


async def test_a_blackholed_first_address_falls_through_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = Upstream([OK])
    loop = asyncio.get_running_loop()
    async with serving(upstream) as url:
        port = upstream.port
        hole = Blackhole("127.0.0.2", port)

        async def resolver(host: str, *args: Any, **kwargs: Any) -> list[AddrInfo]:
            assert host == "upstream.test"
            tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(*tcp, ("127.0.0.2", port)), (*tcp, ("127.0.0.1", port))]

        monkeypatch.setattr(loop, "getaddrinfo", resolver)
        try:
            async with httpx2.AsyncClient(transport=fast()) as client:
                # One address after another would spend the whole connect timeout on the first.
                timeout = httpx2.Timeout(5.0, connect=1.5)
                response = await client.post(url.replace("127.0.0.1", "upstream.test"), content=b"x", timeout=timeout)
        finally:
            hole.close()
    assert response.content == b"ok"
    assert upstream.connections == 1


# -- D5: idle connections and the server's own idle limit --------------------------------------------------


def test_the_idle_limit_is_below_common_servers() -> None:
    # uvicorn (so vLLM and LiteLLM), Node and gunicorn+uvicorn workers close idle connections after 5 s.
    assert transport_module.KEEPALIVE_EXPIRY < 5.0
    assert fast().keepalive_expiry == transport_module.KEEPALIVE_EXPIRY
    limits = httpx2.Limits(max_connections=10, keepalive_expiry=None)
    pool = transport_for(limits, fallback=httpx2.AsyncHTTPTransport())
    assert isinstance(pool, FastTransport) and pool.keepalive_expiry == transport_module.KEEPALIVE_EXPIRY


async def test_the_servers_keep_alive_timeout_is_honoured() -> None:
    upstream = Upstream([b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok"])
    transport = fast(keepalive_expiry=60.0)
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        assert (await client.post(url, content=b"x")).content == b"ok"
        assert "Connections: 0 active, 1 idle" in repr(transport._pool)
        # Closed before the server's second is up, by the pool's timer (no request looks at the pool).
        assert await wait_for(lambda: upstream.closed == 1)
        assert "Connections: 0 active, 0 idle" in repr(transport._pool)


@pytest.mark.parametrize("ending", [Act.CLOSE, Act.RESET])
async def test_a_reused_connection_closed_before_any_response_byte_is_retried_once(ending: Act) -> None:
    upstream = Upstream([OK, [ending], OK])
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast()) as client:
        assert (await client.post(url, content=b"one")).content == b"ok"
        assert (await client.post(url, content=b"two")).content == b"ok"  # on a fresh connection
    assert upstream.connections == 2
    assert [r.split(b"\r\n\r\n", 1)[1] for r in upstream.requests] == [b"one", b"two", b"two"]


async def test_a_connection_closed_after_part_of_a_response_is_not_retried() -> None:
    upstream = Upstream([OK, [b"HTTP/1.1 200 OK\r\nContent-Le", Act.CLOSE], OK, [Act.CLOSE], [Act.CLOSE]])
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast()) as client:
        assert (await client.post(url, content=b"one")).content == b"ok"
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post(url, content=b"two")
        assert (await client.post(url, content=b"three")).content == b"ok"
        with pytest.raises(httpx2.RemoteProtocolError):  # retried once (the new connection fails too), no more
            await client.post(url, content=b"four")
    assert [r.split(b"\r\n\r\n", 1)[1] for r in upstream.requests] == [b"one", b"two", b"three", b"four", b"four"]


# -- D6: system proxies ------------------------------------------------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


async def test_system_proxies_are_used_and_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    proxy = Upstream([OK])
    direct = Upstream([OK])
    limits = httpx2.Limits(max_connections=10)
    async with serving(proxy) as proxy_url, serving(direct) as url:
        # What macOS's or Windows's system settings give getproxies() with no variable set.
        system = {"http": f"http://127.0.0.1:{proxy.port}", "https": f"http://127.0.0.1:{proxy.port}"}
        monkeypatch.setattr(urllib.request, "getproxies", lambda: dict(system))
        async with httpx2.AsyncClient(transport=transport_for(limits, fallback=httpx2.AsyncHTTPTransport())) as c:
            assert (await c.post(url, content=b"via the proxy")).content == b"ok"
        assert proxy.requests[0].startswith(f"POST {url} HTTP/1.1\r\n".encode())  # absolute form
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        async with httpx2.AsyncClient(transport=transport_for(limits, fallback=httpx2.AsyncHTTPTransport())) as c:
            assert (await c.post(url, content=b"direct")).content == b"ok"
        assert direct.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert proxy_url and len(proxy.requests) == 1


# -- D7: framing that forbids keeping the connection; the pool's limits ------------------------------------

CHUNKED_OK = b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + CHUNKED_OK,  # both: Transfer-Encoding wins, then close
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + CHUNKED_OK,  # HTTP/1.0 with Transfer-Encoding
    ],
)
async def test_faulty_framing_closes_the_connection_after_the_response(reply: bytes) -> None:
    upstream = Upstream([reply, OK])
    async with serving(upstream) as url, httpx2.AsyncClient(transport=fast()) as client:
        assert (await client.post(url, content=b"x")).content == b"ok"
        assert (await client.post(url, content=b"x")).content == b"ok"
    assert upstream.connections == 2


async def test_no_keepalive_limit_means_unlimited() -> None:
    upstream = Upstream([OK] * 3)
    limits = httpx2.Limits(max_connections=10, max_keepalive_connections=None)
    transport = transport_for(limits, fallback=httpx2.AsyncHTTPTransport())
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.post(url, content=b"x")).content == b"ok"
    assert upstream.connections == 1


async def test_expired_idle_connections_are_closed_by_a_timer() -> None:
    upstream = Upstream([OK])
    transport = fast(keepalive_expiry=0.2)
    async with serving(upstream) as url, httpx2.AsyncClient(transport=transport) as client:
        assert (await client.post(url, content=b"x")).content == b"ok"
        assert await wait_for(lambda: upstream.closed == 1)  # nobody asked the pool for a connection
        assert "Connections: 0 active, 0 idle" in repr(transport._pool)


# -- the pool ----------------------------------------------------------------------------------------------


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


def _feed(body: Body, pieces: list[bytes]) -> bytes:
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
    assert _feed(Body("chunked"), pieces) == b"".join(chunks)


# -- the request head --------------------------------------------------------------------


def test_the_request_head_is_the_method_path_and_every_field() -> None:
    from gpt_grpc.upstream.http1 import request_head

    request = httpx2.Request(
        "POST", "http://127.0.0.1:1/v1/chat/completions?x=1", headers=[("A", "1"), ("B", "two")], content=b"{}"
    )
    assert request_head(request) == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nA: 1\r\nB: two\r\nContent-Length: 2\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Ok", "a\r\nInjected: 1"), ("X-Ok", "a\nb"), ("X-Ok", "a\rb"), ("X-Bad:Name", "v"), ("X-Bad\r\nName", "v")],
)
def test_a_field_that_could_split_the_request_is_refused(name: str, value: str) -> None:
    from gpt_grpc.upstream.http1 import request_head

    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/x", headers=[("Accept", "*/*"), (name, value)])
    with pytest.raises(httpx2.LocalProtocolError, match="illegal header"):
        request_head(request)


# -- the prepared head (http1.Prepared): what the own pool sends for an endpoint -----------------


def _endpoints() -> list[Any]:
    from gpt_grpc.settings import Settings
    from gpt_grpc.upstream.endpoints import azure_endpoint, openai_endpoint
    from gpt_grpc.upstream.scrub import NO_SECRETS
    from gpt_grpc.upstreams import UpstreamSpec

    azure = UpstreamSpec(
        name="az", kind="azure", base_url="https://r.openai.azure.com", api_key="azkey-0123456789",
        api_version="2024-10-21", deployments=(("gpt-4o", "prod-gpt4o"),),
    )  # fmt: skip
    private = Settings(
        api_key="sk-test-0123456789", endpoint="https://api.example:8443/v1", organization="org-1", project="proj-1"
    )
    return [
        openai_endpoint(Settings(api_key="sk-test-0123456789", endpoint="http://127.0.0.1:1/v1"), NO_SECRETS),
        openai_endpoint(private, NO_SECRETS),
        azure_endpoint(azure, "prod-gpt4o", NO_SECRETS),
    ]


@pytest.mark.parametrize("endpoint", range(3))
@pytest.mark.parametrize("request_id", [None, "req-0123"])
@pytest.mark.parametrize("trace", [(), (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)])
def test_the_prepared_head_is_the_one_built_from_the_request(
    endpoint: int, request_id: str | None, trace: tuple[tuple[str, str], ...]
) -> None:
    from gpt_grpc.upstream.http1 import PREPARED, request_head

    ep = _endpoints()[endpoint]
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    kwargs: dict[str, Any] = {"timeout": 12.5, "connect_timeout": 5.0, "client_request_id": request_id}
    generic = ep.request(body, trace_headers=trace, **kwargs)
    prepared = ep.prepared(body, trace_headers=trace, **kwargs)
    assert prepared.extensions[PREPARED].head == request_head(generic)
    assert prepared.extensions[PREPARED].content == generic.content == body
    assert prepared.extensions["timeout"] == generic.extensions["timeout"]
    assert prepared.url == generic.url


@pytest.mark.parametrize("request_id", ["a\r\nInjected: 1", "a\nb", "a\rb"])
def test_a_prepared_field_that_could_split_the_request_is_refused(request_id: str) -> None:
    ep = _endpoints()[0]
    with pytest.raises(httpx2.LocalProtocolError, match="illegal header"):
        ep.prepared(b"{}", timeout=1.0, connect_timeout=1.0, client_request_id=request_id)
    with pytest.raises(httpx2.LocalProtocolError, match="illegal header"):
        ep.prepared(b"{}", timeout=1.0, connect_timeout=1.0, client_request_id=None, trace_headers=[("x:y", "v")])


async def test_the_own_pool_sends_the_prepared_head_and_a_cookie_the_upstream_set() -> None:
    # Through UpstreamClient with its own pool (no test double): the first request goes out as the
    # endpoint prepared it; once the upstream has set a cookie, requests carry it (the generic path).
    from gpt_grpc.settings import Settings
    from gpt_grpc.upstream.client import UpstreamClient
    from gpt_grpc.upstream.endpoints import openai_endpoint
    from gpt_grpc.upstream.http1 import PREPARED
    from gpt_grpc.upstream.scrub import NO_SECRETS

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: __cf_bm=abc; path=/\r\n\r\n{}"
    upstream = Upstream([ok, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    async with serving(upstream) as url:
        base = url.removesuffix("/chat/completions")
        ep = openai_endpoint(Settings(api_key="sk-test-0123456789", endpoint=base), NO_SECRETS)
        client = UpstreamClient()
        try:
            for _ in range(2):
                async with client.post(ep, b"{}", timeout=5.0, client_request_id="req-1") as response:
                    assert await response.aread() == b"{}"
        finally:
            await client.aclose()
    expected = ep.prepared(b"{}", timeout=5.0, connect_timeout=5.0, client_request_id="req-1")
    assert upstream.requests[0] == expected.extensions[PREPARED].head + b"{}"
    assert b"\r\nCookie: __cf_bm=abc\r\n" in upstream.requests[1]
    assert b"\r\nCookie:" not in upstream.requests[0]
