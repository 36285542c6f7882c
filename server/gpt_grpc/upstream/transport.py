"""A lean HTTP/1.1 connection pool for the shared httpx2 client.

httpx2's default transport goes through httpcore, h11 and anyio: about half
a millisecond of CPU per upstream call (cancel scopes, state machines, event
objects), more than everything else the gateway does for a call. This
transport speaks HTTP/1.1 itself over asyncio protocols (the wire format is
http1.py, opening connections connect.py), with the same contract as
httpcore's pool:

- keep-alive connections per origin, at most `max_connections` open (a
  request beyond waits up to the pool timeout: `httpx2.PoolTimeout`; waiters
  are served first come, first served, and a connection or slot freed for a
  waiter that is then cancelled goes to the next one), at most
  `max_keepalive_connections` idle (None: no limit, as in httpx), an idle one
  closed by a timer after `keepalive_expiry` seconds or 80% of the server's
  own `Keep-Alive: timeout=`, whichever is sooner;
- the request's connect/read/write/pool timeouts (`ConnectTimeout`,
  `ReadTimeout`, `WriteTimeout`, `PoolTimeout`); failures as httpx2's own
  exceptions (`ConnectError`, `ReadError`, `WriteError`,
  `RemoteProtocolError` - "Server disconnected without sending a response."
  when a connection closes before the status line), so the SDK and the
  gateway map them exactly as before;
- a request whose reused connection ends before any byte of the response
  (the server closed it as idle while the request was on its way) is sent
  again, once, on a new connection: the server cannot have acted on it;
- bodies framed by Content-Length, chunked transfer coding or the end of
  the connection - the last complete only when the connection ended cleanly
  (FIN, or TLS close_notify): a reset or a TLS session cut without
  close_notify is a `ReadError`, never a complete answer; 1xx answers
  skipped; a connection goes back to the pool only when its response was read
  to the end and neither side said `Connection: close` (nor did the framing
  look faulty: RFC 9112 6.1);
- a small DNS cache and Happy Eyeballs (connect.py);
- TLS with the SSL context httpx2 would use (ALPN http/1.1);
- back-pressure both ways (pause_reading past 256 KiB unread, drain when the
  socket's write buffer is full).

Anything it does not do - a streamed (not in-memory) request body, a scheme
other than http/https - goes to httpx2's own transport, given as `fallback`;
a request a system proxy applies to goes through httpx2's transport too
(proxies.py, wired by `transport_for`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from .connect import DNS_TTL, HAPPY_EYEBALLS_DELAY, Resolver, open_connection
from .http1 import (
    MAX_HEAD,
    PREPARED,
    Body,
    Framing,
    Head,
    Prepared,
    framing,
    head_end,
    parse_head,
    request_head,
)
from .proxies import ProxyRouter, system_proxies

__all__ = ["KEEPALIVE_EXPIRY", "FastTransport", "transport_for"]

# Seconds an idle connection is kept. uvicorn (so vLLM and LiteLLM) and Node close idle connections
# after 5 s; a client that keeps one for 5 s sends its next request into a closing socket. 4 s is 80% of
# that, the same share taken of a server's own Keep-Alive: timeout=N. (The retry of a request whose
# reused connection closed before answering covers the race that remains.)
KEEPALIVE_EXPIRY = 4.0
_SERVER_TIMEOUT_SHARE = 0.8  # of a server's Keep-Alive: timeout=N
_SWEEP_SLACK = 0.05  # seconds: idle connections expiring this close together are closed by one timer run
_READ_HIGH_WATER = 256 * 1024  # unread bytes before the socket stops being read
_INLINE_BODY = 64 * 1024  # bytes: a smaller body goes out in the same write as the head
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Origin = tuple[bytes, bytes, int]


def _timeout(timeouts: dict[str, float | None], key: str) -> float | None:
    value = timeouts.get(key)
    return None if value is None else float(value)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time."""

    __slots__ = (
        "_drain",
        "_read_paused",
        "_waiter",
        "_write_paused",
        "buffer",
        "clean_end",
        "eof",
        "error",
        "expires_at",
        "idle_timeout",
        "loop",
        "received",
        "requests",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # the peer closed (or the connection was lost)
        self.clean_end = False  # ...with a FIN or, over TLS, close_notify (not a reset, not a cut TLS session)
        self.error: BaseException | None = None
        self.received = False  # a byte arrived since the current request was sent
        self.requests = 0  # requests sent on this connection
        self.expires_at = 0.0  # loop time when idle: when the pool closes it
        self.idle_timeout: float | None = None  # the server's Keep-Alive: timeout=, seconds
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received = True
        if len(self.buffer) > _READ_HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # A FIN; over TLS, asyncio calls this for a close_notify and also for a TCP end without one.
        self.eof = True
        self.clean_end = self.transport is None or _tls_closed_cleanly(self.transport)
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        if exc is not None:
            self.clean_end = False
        self.transport = None
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- used by the pool and the response stream -----------------------------

    @property
    def usable(self) -> bool:
        transport = self.transport
        return not self.eof and transport is not None and not transport.is_closing() and not self.buffer

    def begin_request(self) -> None:
        """A request is about to be sent on this connection."""
        self.requests += 1
        self.received = False

    def ended_error(self, what: str) -> httpx2.TransportError:
        """The error for a connection that ended before `what` was complete."""
        if isinstance(self.error, OSError):
            return httpx2.ReadError(str(self.error) or type(self.error).__name__)
        if not self.clean_end:  # over TLS: the TCP stream ended without close_notify (a truncation looks so)
            return httpx2.ReadError(f"the connection ended uncleanly before {what}")
        return httpx2.RemoteProtocolError(f"peer closed connection without sending {what}")

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def consumed(self) -> None:
        """The reader took bytes from the buffer: read the socket again if it was paused."""
        if self._read_paused and len(self.buffer) < _READ_HIGH_WATER // 2 and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    async def wait_data(self, limit: float | None) -> None:
        """Until more bytes arrive or the connection ends; ReadTimeout after `limit` seconds."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        if limit is None:
            await waiter
            return
        handle = self.loop.call_later(limit, _expire, waiter, httpx2.ReadTimeout, "timed out reading the response")
        try:
            await waiter
        finally:
            handle.cancel()

    async def write(self, data: bytes, limit: float | None) -> None:
        transport = self.transport
        if transport is None or self.eof:
            raise httpx2.WriteError("the connection was closed before the request was sent")
        transport.write(data)
        if not self._write_paused:
            return
        drain = self.loop.create_future()
        self._drain = drain
        handle = None
        if limit is not None:
            handle = self.loop.call_later(limit, _expire, drain, httpx2.WriteTimeout, "timed out sending the request")
        try:
            await drain
        finally:
            if handle is not None:
                handle.cancel()
        if self.transport is None:
            raise httpx2.WriteError("the connection was closed while sending the request")

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()
        self.transport = None
        self.eof = True


def _tls_closed_cleanly(transport: asyncio.BaseTransport) -> bool:
    """Over TLS, whether the peer's close_notify arrived: only then did the stream end where the peer meant.

    The SSL object (the transport's documented `ssl_object`) reads b"" once close_notify was received
    (OpenSSL's SSL_RECEIVED_SHUTDOWN); after a bare TCP end it has nothing to read (SSLWantReadError)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return True  # plain TCP: the FIN is the end
    try:
        return ssl_object.read(1) == b""  # type: ignore[no-any-return]
    except (ssl.SSLError, ValueError):
        return False


def _expire(waiter: asyncio.Future[Any], error: type[httpx2.TimeoutException], message: str) -> None:
    """A timeout: the waiter raises `error` (a cancellation would look like the caller's own)."""
    if not waiter.done():
        waiter.set_exception(error(message))


class _ResponseStream(httpx2.AsyncByteStream):
    __slots__ = ("_body", "_closed", "_conn", "_origin", "_pool", "_read_timeout", "_reusable")

    def __init__(
        self,
        pool: _Pool,
        origin: Origin,
        conn: _Connection,
        body: Body,
        read_timeout: float | None,
        reusable: bool,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self._body = body
        self._read_timeout = read_timeout
        self._reusable = reusable
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn, body = self._conn, self._body
        try:
            while True:
                if conn.buffer:
                    data = body.take(conn.buffer)
                    conn.consumed()
                    if data:
                        yield data
                        continue  # more may have arrived while the consumer had it
                if body.done:
                    return
                if conn.eof:
                    if body.kind == "close" and conn.clean_end:
                        body.done = True
                        return
                    raise conn.ended_error("the complete message body")
                await conn.wait_data(self._read_timeout)
        except BaseException:
            self._finish()
            raise

    async def aclose(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.active_requests -= 1
        reuse = self._reusable and self._body.done and self._body.kind != "close"
        self._pool.release(self._origin, self._conn, reuse)


class _Waiter:
    """A request queued for a connection: its future gets an idle connection, or None for a slot."""

    __slots__ = ("future", "origin")

    def __init__(self, origin: Origin, future: asyncio.Future[_Connection | None]) -> None:
        self.origin = origin
        self.future = future


class _Retry(Exception):
    """The reused connection ended before any response byte: send again on a new connection."""


class _Pool:
    """FastTransport's slots, idle connections and waiters: which request gets which connection, and when an
    idle one is closed. Its repr is httpcore's pool summary line (the debug aid in server/app.py logs it)."""

    def __init__(self, max_connections: int, max_keepalive_connections: int | None, keepalive_expiry: float) -> None:
        self.max_connections = max_connections
        self.max_keepalive_connections = max_keepalive_connections  # None: no limit
        self.keepalive_expiry = keepalive_expiry
        # Idle connections per origin, oldest first: reuse takes the newest, the sweep closes from the front.
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections open or opening (each holds a slot)
        self.active_requests = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._queued = 0  # waiters not yet served nor gone
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    def __repr__(self) -> str:
        idle = self._idle_count
        return (
            f"<FastTransport [Requests: {self.active_requests} active, {self._queued} queued | "
            f"Connections: {self._open - idle} active, {idle} idle]>"
        )

    def take_idle(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.usable and now < conn.expires_at:
                return conn
            self.discard(conn)
        return None

    def evict_one_idle(self) -> bool:
        """Close the oldest idle connection; its slot is the caller's to use or free. False when none is idle."""
        oldest: collections.deque[_Connection] | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].expires_at < oldest[0].expires_at):
                oldest = conns
        if oldest is None:
            return False
        oldest.popleft().close()
        self._idle_count -= 1
        return True

    def discard(self, conn: _Connection) -> None:
        """Close a connection and free its slot (for the first waiter)."""
        conn.close()
        self.free_slot()

    def free_slot(self) -> None:
        self._open -= 1
        while self._waiters and self._open < self.max_connections:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                self._open += 1
                self._queued -= 1
                waiter.future.set_result(None)

    def release(self, origin: Origin, conn: _Connection, reuse: bool) -> None:
        """A response is over: its connection goes to the first waiter, the idle lists, or is closed."""
        if not reuse or not conn.usable or self.closed:
            self.discard(conn)
            return
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.done():  # timed out or cancelled, leaving
                self._waiters.popleft()
                continue
            if waiter.origin != origin:
                break  # the first waiter wants another origin: it gets this connection's slot
            self._waiters.popleft()
            self._queued -= 1
            waiter.future.set_result(conn)
            return
        expiry = self.keepalive_expiry
        if conn.idle_timeout is not None:
            expiry = min(expiry, conn.idle_timeout * _SERVER_TIMEOUT_SHARE)
        keep = self.max_keepalive_connections
        if self._waiters or expiry <= 0 or keep == 0:
            self.discard(conn)
            return
        if keep is not None and self._idle_count >= keep and self.evict_one_idle():
            self._open -= 1  # the oldest idle connection made room (nobody waits for its slot)
        conn.expires_at = conn.loop.time() + expiry
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = collections.deque()
        idle.append(conn)
        self._idle_count += 1
        sweep = self._sweep
        if sweep is None or sweep.when() > conn.expires_at + _SWEEP_SLACK:
            self._arm_sweep(conn.loop, conn.expires_at)

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep = loop.call_at(at + _SWEEP_SLACK, self._sweep_idle, loop)

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: close idle connections whose time is up (or that the server closed), re-arm for the next."""
        self._sweep = None
        now = loop.time()
        earliest: float | None = None
        for origin, conns in list(self._idle.items()):
            while conns and (conns[0].expires_at <= now or not conns[0].usable):
                self._idle_count -= 1
                self.discard(conns.popleft())
            if conns:
                earliest = conns[0].expires_at if earliest is None else min(earliest, conns[0].expires_at)
            else:
                del self._idle[origin]
        if earliest is not None:
            self._arm_sweep(loop, earliest)

    async def acquire(self, origin: Origin, limit: float | None) -> _Connection | None:
        """An idle connection, or None with a slot reserved for a new one."""
        loop = asyncio.get_running_loop()
        if not self._queued:  # first come, first served: nobody may pass a queued request
            conn = self.take_idle(origin, loop.time())
            if conn is not None:
                return conn
            if self._open < self.max_connections:
                self._open += 1
                return None
            if self.evict_one_idle():
                return None  # the evicted connection's slot
        future: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(_Waiter(origin, future))
        self._queued += 1
        handle = None
        if limit is not None:
            message = "timed out waiting for a connection from the pool"
            handle = loop.call_later(limit, _expire, future, httpx2.PoolTimeout, message)
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Served, then cancelled before it ran: the connection or slot goes to the next waiter.
                granted = future.result()
                if granted is None:
                    self.free_slot()
                else:
                    self.release(origin, granted, reuse=True)
            else:
                self._queued -= 1
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if not future.done():
                future.cancel()

    def close(self) -> None:
        """The transport closes: idle connections now, the others when their responses end."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
                self._open -= 1
        self._idle.clear()
        self._idle_count = 0


class FastTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool on asyncio protocols; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive_connections: int | None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
        fallback: httpx2.AsyncBaseTransport | None = None,
        dns_ttl: float = DNS_TTL,
        happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY,
    ) -> None:
        self.happy_eyeballs_delay = happy_eyeballs_delay
        self._ssl_context = ssl_context
        self._fallback = fallback
        self._resolver = Resolver(dns_ttl)
        self._pool = _Pool(max_connections, max_keepalive_connections, keepalive_expiry)  # httpcore's name

    @property
    def keepalive_expiry(self) -> float:
        return self._pool.keepalive_expiry

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = httpx2.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    # -- requests ------------------------------------------------------------------

    async def _connect(self, origin: Origin, limit: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        tls = self._ssl() if scheme == b"https" else None
        try:
            async with asyncio.timeout(limit):
                return await open_connection(
                    self._resolver, hostname, port, lambda: _Connection(loop), tls, self.happy_eyeballs_delay
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"timed out connecting to {hostname}:{port}") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.raw_scheme
        port = url.port or _DEFAULT_PORTS.get(scheme)
        prepared: Prepared | None = request.extensions.get(PREPARED)
        content: bytes | None
        if prepared is not None:  # the head built by its sender (endpoints.py): sent as it is
            content, connection = prepared.content, prepared.connection
        else:
            connection = request.headers.get("connection", "")
            try:
                content = request.content
            except httpx2.RequestNotRead:
                content = None
        if port is None or content is None or self._pool.closed:
            if self._fallback is None or self._pool.closed or prepared is not None:
                raise httpx2.UnsupportedProtocol(f"FastTransport cannot send {url!r}")
            return await self._fallback.handle_async_request(request)
        origin: Origin = (scheme, url.raw_host, port)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        wire_head = prepared.head if prepared is not None else request_head(request)
        self._pool.active_requests += 1
        try:
            conn = await self._pool.acquire(origin, _timeout(timeouts, "pool"))
            if conn is None:
                conn = await self._connect_in_slot(origin, timeouts)
            try:
                response = await self._exchange(request.method, connection, conn, wire_head, content, timeouts)
            except _Retry:
                # The slot stays this request's; the connection in it is new.
                conn = await self._connect_in_slot(origin, timeouts)
                response = await self._exchange(request.method, connection, conn, wire_head, content, timeouts)
        except BaseException:
            self._pool.active_requests -= 1
            raise
        head, framed = response
        stream = _ResponseStream(self._pool, origin, conn, framed.body, _timeout(timeouts, "read"), framed.keep_alive)
        return httpx2.Response(
            head.status,
            headers=head.headers,
            stream=stream,
            extensions={"http_version": head.version, "reason_phrase": head.reason},
        )

    async def _connect_in_slot(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        """A new connection in a slot the caller holds; the slot is freed if none can be made."""
        try:
            return await self._connect(origin, _timeout(timeouts, "connect"))
        except BaseException:
            self._pool.free_slot()
            raise

    async def _exchange(
        self,
        method: str,
        connection: str,
        conn: _Connection,
        head: bytes,
        content: bytes,
        timeouts: dict[str, float | None],
    ) -> tuple[Head, Framing]:
        """Send the request and read the response head; the connection is released on failure.

        Raises _Retry (the connection closed, its slot kept) when a reused connection ended
        before any byte of the response."""
        reused = conn.requests > 0
        conn.begin_request()
        try:
            write_timeout = _timeout(timeouts, "write")
            if len(content) < _INLINE_BODY:
                await conn.write(head + content, write_timeout)
            else:
                await conn.write(head, write_timeout)
                await conn.write(content, write_timeout)
            parsed = await _read_head(conn, _timeout(timeouts, "read"))
            framed = framing(method, connection, parsed)
        except BaseException as exc:
            if reused and conn.eof and not conn.received and isinstance(exc, httpx2.TransportError):
                conn.close()
                raise _Retry from exc
            self._pool.discard(conn)
            if isinstance(exc, httpx2.WriteError) and conn.error is not None:
                raise httpx2.WriteError(str(conn.error)) from exc
            raise
        conn.idle_timeout = framed.idle_timeout
        return parsed, framed

    async def aclose(self) -> None:
        self._pool.close()
        if self._fallback is not None:
            await self._fallback.aclose()


async def _read_head(conn: _Connection, read_timeout: float | None) -> Head:
    """The next final (non-1xx) response head."""
    while True:
        buffer = conn.buffer
        end = head_end(buffer)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise httpx2.RemoteProtocolError("the upstream's response head is too long")
            if conn.eof:
                if not buffer:
                    if isinstance(conn.error, OSError):
                        raise httpx2.ReadError(str(conn.error) or type(conn.error).__name__)
                    raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
                raise conn.ended_error("a complete response head")
            await conn.wait_data(read_timeout)
            continue
        raw = bytes(buffer[:end])
        del buffer[:end]
        conn.consumed()
        head = parse_head(raw)
        if 100 <= head.status < 200:
            continue  # informational: the final response follows
        return head


def transport_for(limits: httpx2.Limits, fallback: httpx2.AsyncBaseTransport) -> httpx2.AsyncBaseTransport:
    """The gateway's upstream transport for `limits`: the pool, behind the system's proxies if it has any."""
    pool = FastTransport(
        max_connections=limits.max_connections or 1_000_000,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY if limits.keepalive_expiry is None else limits.keepalive_expiry,
        fallback=fallback,
    )
    return behind_system_proxies(pool, limits)


def behind_system_proxies(direct: httpx2.AsyncBaseTransport, limits: httpx2.Limits) -> httpx2.AsyncBaseTransport:
    """`direct`, or a router sending what the system's proxies apply to through httpx2's proxy transport."""
    proxies = system_proxies()
    if not proxies:
        return direct
    return ProxyRouter(direct, proxies, lambda proxy: httpx2.AsyncHTTPTransport(proxy=proxy, limits=limits))
