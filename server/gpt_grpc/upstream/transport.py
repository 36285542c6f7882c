"""A lean HTTP/1.1 connection pool for the shared httpx2 client.

httpx2's default transport goes through httpcore, h11 and anyio: about half
a millisecond of CPU per upstream call (cancel scopes, state machines, event
objects), more than everything else the gateway does for a call. This
transport speaks HTTP/1.1 itself over asyncio protocols, with the same
contract as httpcore's pool:

- keep-alive connections per origin, at most `max_connections` open (a
  request beyond waits up to the pool timeout: `httpx2.PoolTimeout`), at most
  `max_keepalive_connections` idle, an idle one is closed after
  `keepalive_expiry` seconds;
- the request's connect/read/write/pool timeouts (`ConnectTimeout`,
  `ReadTimeout`, `WriteTimeout`, `PoolTimeout`); failures as httpx2's own
  exceptions (`ConnectError`, `ReadError`, `WriteError`,
  `RemoteProtocolError` - "Server disconnected without sending a response."
  when a connection closes before the status line), so the SDK and the
  gateway map them exactly as before;
- bodies framed by Content-Length, chunked transfer coding or the end of
  the connection; 1xx answers skipped; a connection goes back to the pool
  only when its response was read to the end and neither side said
  `Connection: close`;
- TLS with the SSL context httpx2 would use (ALPN http/1.1);
- back-pressure both ways (pause_reading past 256 KiB unread, drain when the
  socket's write buffer is full).

Anything it does not do - a streamed (not in-memory) request body, a scheme
other than http/https - goes to httpx2's own transport, given as `fallback`.
The gateway does not use it at all when the environment configures a proxy
(HTTP_PROXY and friends): httpx2 honours those only for its own transport.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2

__all__ = ["FastTransport"]

_MAX_HEAD = 256 * 1024  # status line + headers
_READ_HIGH_WATER = 256 * 1024  # unread bytes before the socket stops being read
_CRLF = b"\r\n"
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_NO_BODY_STATUS = (204, 304)


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
        "eof",
        "error",
        "idle_since",
        "loop",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # the peer closed (or the connection was lost)
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
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


def _expire(waiter: asyncio.Future[None], error: type[httpx2.TimeoutException], message: str) -> None:
    """A timeout: the waiter raises `error` (a cancellation would look like the caller's own)."""
    if not waiter.done():
        waiter.set_exception(error(message))


class _Body:
    """Incremental body framing: Content-Length, chunked, or until the connection ends."""

    __slots__ = ("chunk_left", "done", "kind", "left", "state")

    def __init__(self, kind: str, length: int = 0) -> None:
        self.kind = kind  # "length", "chunked", "close" or "none"
        self.left = length
        self.done = kind == "none" or (kind == "length" and length == 0)
        self.state = "size"  # chunked: size, data, data_end, trailer
        self.chunk_left = 0

    def take(self, buffer: bytearray) -> bytes:
        """Body bytes available in `buffer` (removed from it); sets `done` at the end."""
        if self.kind == "length":
            n = min(self.left, len(buffer))
            data = bytes(buffer[:n])
            del buffer[:n]
            self.left -= n
            self.done = self.left == 0
            return data
        if self.kind == "close":
            data = bytes(buffer)
            buffer.clear()
            return data
        if self.kind == "none":
            return b""
        return self._chunks(buffer)

    def _chunks(self, buffer: bytearray) -> bytes:
        out: list[bytes] = []
        pos = 0
        end = len(buffer)
        while not self.done:
            if self.state == "size":
                nl = buffer.find(b"\n", pos)
                if nl < 0:
                    if end - pos > 1024:
                        raise httpx2.RemoteProtocolError("malformed chunked body: chunk size line too long")
                    break
                line = bytes(buffer[pos:nl]).rstrip(b"\r").split(b";", 1)[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise httpx2.RemoteProtocolError("malformed chunked body: bad chunk size") from None
                if size < 0:
                    raise httpx2.RemoteProtocolError("malformed chunked body: bad chunk size")
                pos = nl + 1
                if size == 0:
                    self.state = "trailer"
                else:
                    self.chunk_left = size
                    self.state = "data"
            elif self.state == "data":
                n = min(self.chunk_left, end - pos)
                if n == 0:
                    break
                out.append(bytes(buffer[pos : pos + n]))
                pos += n
                self.chunk_left -= n
                if self.chunk_left == 0:
                    self.state = "data_end"
            elif self.state == "data_end":
                nl = buffer.find(b"\n", pos)
                if nl < 0:
                    if end - pos > 2:
                        raise httpx2.RemoteProtocolError("malformed chunked body: no CRLF after chunk data")
                    break
                if buffer[pos:nl].rstrip(b"\r"):
                    raise httpx2.RemoteProtocolError("malformed chunked body: no CRLF after chunk data")
                pos = nl + 1
                self.state = "size"
            else:  # trailer lines until an empty one
                nl = buffer.find(b"\n", pos)
                if nl < 0:
                    if end - pos > _MAX_HEAD:
                        raise httpx2.RemoteProtocolError("malformed chunked body: trailer too long")
                    break
                empty = not buffer[pos:nl].rstrip(b"\r")
                pos = nl + 1
                if empty:
                    self.done = True
        del buffer[:pos]
        return b"".join(out) if len(out) != 1 else out[0]


class _ResponseStream(httpx2.AsyncByteStream):
    __slots__ = ("_body", "_closed", "_conn", "_origin", "_pool", "_read_timeout", "_reusable")

    def __init__(
        self,
        pool: FastTransport,
        origin: Origin,
        conn: _Connection,
        body: _Body,
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
                    if body.kind == "close":
                        body.done = True
                        return
                    if isinstance(conn.error, OSError):
                        raise httpx2.ReadError(str(conn.error) or type(conn.error).__name__)
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
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
        reuse = self._reusable and self._body.done and self._body.kind != "close"
        self._pool._release(self._origin, self._conn, reuse)


class _PoolSummary:
    """httpcore's pool summary line, for the debug aid (app._log_debug_state)."""

    def __init__(self, transport: FastTransport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        t = self._transport
        idle = t._idle_count
        active = t._open - idle
        return (
            f"<FastTransport [Requests: {t._active_requests} active, {len(t._waiters)} queued | "
            f"Connections: {active} active, {idle} idle]>"
        )


class FastTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool on asyncio protocols; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        fallback: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive_connections = max_keepalive_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._fallback = fallback
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections open or opening (each holds a slot)
        self._active_requests = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._pool = _PoolSummary(self)  # same attribute and summary format as httpcore's pool

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = httpx2.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    # -- pool ----------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.usable and now - conn.idle_since < self.keepalive_expiry:
                return conn
            self._discard(conn)
        return None

    def _evict_one_idle(self) -> bool:
        oldest: tuple[float, Origin] | None = None
        for origin, conns in self._idle.items():
            if conns and (oldest is None or conns[0].idle_since < oldest[0]):
                oldest = (conns[0].idle_since, origin)
        if oldest is None:
            return False
        conn = self._idle[oldest[1]].pop(0)
        self._idle_count -= 1
        self._discard(conn)
        return True

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, origin: Origin, conn: _Connection, reuse: bool) -> None:
        self._active_requests -= 1
        if not reuse or not conn.usable or self._closed:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(origin, []).append(conn)
        self._idle_count += 1
        if self._idle_count > self.max_keepalive_connections:
            self._evict_one_idle()
        self._wake_waiter()

    async def _acquire(self, origin: Origin, limit: float | None) -> _Connection | None:
        """An idle connection, or None with a slot reserved for a new one."""
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._open < self.max_connections:
                self._open += 1
                return None
            if self._evict_one_idle():
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            handle = None
            if deadline is not None:
                message = "timed out waiting for a connection from the pool"
                handle = loop.call_at(deadline, _expire, waiter, httpx2.PoolTimeout, message)
            try:
                await waiter
            finally:
                if handle is not None:
                    handle.cancel()
                if not waiter.done():
                    waiter.cancel()

    async def _connect(self, origin: Origin, limit: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        tls = scheme == b"https"
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    hostname,
                    port,
                    ssl=self._ssl() if tls else None,
                    server_hostname=hostname if tls else None,
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"timed out connecting to {hostname}:{port}") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    # -- requests ------------------------------------------------------------------

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.raw_scheme
        port = url.port or _DEFAULT_PORTS.get(scheme)
        content: bytes | None
        try:
            content = request.content
        except httpx2.RequestNotRead:
            content = None
        if port is None or content is None or self._closed:
            if self._fallback is None or self._closed:
                raise httpx2.UnsupportedProtocol(f"FastTransport cannot send {url!r}")
            return await self._fallback.handle_async_request(request)
        origin: Origin = (scheme, url.raw_host, port)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _request_head(request)
        self._active_requests += 1
        try:
            conn = await self._acquire(origin, _timeout(timeouts, "pool"))
            if conn is None:
                try:
                    conn = await self._connect(origin, _timeout(timeouts, "connect"))
                except BaseException:
                    self._open -= 1
                    self._wake_waiter()
                    raise
        except BaseException:
            self._active_requests -= 1
            raise
        try:
            await conn.write(head + content if len(content) < 65536 else head, _timeout(timeouts, "write"))
            if len(content) >= 65536:
                await conn.write(content, _timeout(timeouts, "write"))
            read_timeout = _timeout(timeouts, "read")
            status, reason, headers, version = await _read_head(conn, read_timeout)
            body, keep_alive = _framing(request, status, headers, version)
        except BaseException as exc:
            self._release(origin, conn, reuse=False)
            if isinstance(exc, httpx2.WriteError) and conn.error is not None:
                raise httpx2.WriteError(str(conn.error)) from exc
            raise
        stream = _ResponseStream(self, origin, conn, body, read_timeout, keep_alive)
        return httpx2.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
                self._open -= 1
        self._idle.clear()
        self._idle_count = 0
        if self._fallback is not None:
            await self._fallback.aclose()


def _request_head(request: httpx2.Request) -> bytes:
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name or b":" in name:
            raise httpx2.LocalProtocolError(f"illegal header {name!r}")
        parts += (name, b": ", value, _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


async def _read_head(
    conn: _Connection, read_timeout: float | None
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """Status, reason, headers and HTTP version of the next final (non-1xx) response."""
    while True:
        buffer = conn.buffer
        end = _head_end(buffer)
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise httpx2.RemoteProtocolError("the upstream's response head is too long")
            if conn.eof:
                if not buffer:
                    if isinstance(conn.error, OSError):
                        raise httpx2.ReadError(str(conn.error) or type(conn.error).__name__)
                    raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
                raise httpx2.RemoteProtocolError("peer closed connection without sending a complete response head")
            await conn.wait_data(read_timeout)
            continue
        raw = bytes(buffer[:end])
        del buffer[:end]
        conn.consumed()
        lines = raw.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        try:
            version, code_text, *rest = status_line.split(b" ", 2)
            code = int(code_text)
        except ValueError:
            raise httpx2.RemoteProtocolError(f"malformed status line {status_line[:100]!r}") from None
        if not version.startswith(b"HTTP/1.") or not 100 <= code <= 999:
            raise httpx2.RemoteProtocolError(f"malformed status line {status_line[:100]!r}")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            line = line.rstrip(b"\r")
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise httpx2.RemoteProtocolError(f"malformed header line {line[:100]!r}")
            headers.append((name, value.strip(b" \t")))
        if 100 <= code < 200:
            continue  # informational: the final response follows
        return code, rest[0] if rest else b"", headers, version


def _head_end(buffer: bytearray) -> int:
    """Index just past the empty line ending the head (CRLF or bare LF), or -1."""
    crlf = buffer.find(b"\r\n\r\n")
    if crlf >= 0:
        lf = buffer.find(b"\n\n", 0, crlf)
        return lf + 2 if lf >= 0 else crlf + 4
    lf = buffer.find(b"\n\n")
    if lf >= 0:
        return lf + 2
    lf = buffer.find(b"\n\r\n")
    return lf + 3 if lf >= 0 else -1


def _framing(
    request: httpx2.Request, status: int, headers: list[tuple[bytes, bytes]], version: bytes
) -> tuple[_Body, bool]:
    """How the body is delimited, and whether the connection may be kept afterwards."""
    connection = b""
    transfer = b""
    length: bytes | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            if length is not None and length != value:
                raise httpx2.RemoteProtocolError("conflicting Content-Length headers")
            length = value
        elif lower == b"transfer-encoding":
            transfer += value.lower()
        elif lower == b"connection":
            connection += value.lower()
    keep_alive = version == b"HTTP/1.1" and b"close" not in connection
    if version == b"HTTP/1.0" and b"keep-alive" in connection:
        keep_alive = True
    if request.headers.get("connection", "").lower() == "close":
        keep_alive = False
    if request.method == "HEAD" or status in _NO_BODY_STATUS:
        return _Body("none"), keep_alive
    if transfer:
        if not transfer.endswith(b"chunked"):
            return _Body("close"), False
        return _Body("chunked"), keep_alive
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise httpx2.RemoteProtocolError("malformed Content-Length header") from None
        if size < 0:
            raise httpx2.RemoteProtocolError("malformed Content-Length header")
        return _Body("length", size), keep_alive
    return _Body("close"), False


def transport_for(limits: httpx2.Limits, fallback: httpx2.AsyncBaseTransport) -> FastTransport:
    return FastTransport(
        max_connections=limits.max_connections or 1_000_000,
        max_keepalive_connections=limits.max_keepalive_connections or 0,
        keepalive_expiry=limits.keepalive_expiry if limits.keepalive_expiry is not None else 5.0,
        fallback=fallback,
    )


def proxies_configured(environ: Any) -> bool:
    """Whether httpx2 would route through a proxy from the environment."""
    return any(
        environ.get(name)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    )
