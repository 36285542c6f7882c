"""The pooled HTTP client every call to an upstream goes through.

One transport per event loop: the gateway's own HTTP/1.1 pool
(transport.FastTransport, behind the system's proxies if it has any) unless
`GPT_GRPC_UPSTREAM_TRANSPORT=httpx` asks for httpx2's own. Redirects are not
followed: they could carry prompts somewhere the operator did not choose.

`post` sends one attempt's request and yields the streamed response when
its status is 2xx; otherwise it reads the start of the error body and raises
`failures.StatusFailure`. `read` reads a whole answer, bounded by
MAX_ANSWER_BYTES. Nothing here decides what a failure means: the engine
hands every exception to `failures.translate`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from types import TracebackType

import httpx2

from .endpoints import Endpoint
from .failures import AnswerTooLarge, StatusFailure
from .transport import KEEPALIVE_EXPIRY, FastTransport, behind_system_proxies, transport_for

# Enough for thousands of slow calls in flight (httpx's default, 100, would make calls queue).
DEFAULT_MAX_CONNECTIONS = 20_000
DEFAULT_KEEPALIVE_CONNECTIONS = 1_000
CONNECT_TIMEOUT_SECONDS = 5.0
# The most of one answer (a body, or a stream's total) the gateway reads and relays: below
# the gRPC send limit (16 MiB, server/app.py), with room for the rest of the response
# message, so an answer that fits here always reaches the caller.
MAX_ANSWER_BYTES = 15 * 1024 * 1024
# An error body is read only this far: enough for any real error object.
MAX_ERROR_BODY_BYTES = 64 * 1024


def _transport(limits: httpx2.Limits) -> httpx2.AsyncBaseTransport:
    """The pool: FastTransport, unless GPT_GRPC_UPSTREAM_TRANSPORT=httpx asks for httpx2's own;
    either behind the system's proxies when it has any."""
    fallback = httpx2.AsyncHTTPTransport(limits=limits)
    if os.environ.get("GPT_GRPC_UPSTREAM_TRANSPORT", "fast") == "httpx":
        return behind_system_proxies(fallback, limits)
    return transport_for(limits, fallback=fallback)


class UpstreamClient:
    """The shared connection pool; serves the event loop that first used it.

    Requests go straight to the transport: an httpx2.AsyncClient's send would add
    its auth and redirect machinery, event hooks and elapsed-time stream wrapper
    (~20 us a call) for nothing the gateway uses (no auth flow, redirects never
    followed). What it would still do is kept here: the cookies an upstream sets
    (Cloudflare's) are stored and sent back.
    """

    def __init__(
        self, max_connections: int = DEFAULT_MAX_CONNECTIONS, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self._max_connections = max_connections
        self._given = transport  # a given one (a test double) instead of the pool
        self._transport: httpx2.AsyncBaseTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The transport is the own pool itself (no proxy, no test double): it takes prepared heads.
        self._own_pool = False
        self.cookies = httpx2.Cookies()

    @property
    def started(self) -> bool:
        return self._transport is not None and self._loop is not None and not self._loop.is_closed()

    def transport(self) -> httpx2.AsyncBaseTransport:
        loop = asyncio.get_running_loop()
        if self._transport is None:
            limits = httpx2.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=DEFAULT_KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY,  # below common servers' 5 s (see transport.py)
            )
            self._transport = self._given or _transport(limits)
            self._own_pool = isinstance(self._transport, FastTransport)
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a GPT instance serves one event loop; use one GPT per loop")
        return self._transport

    def pool_summary(self) -> object:
        """The pool's own one-line summary (active and idle connections), for the debug aid."""
        return getattr(self._transport, "_pool", None)

    def post(
        self,
        endpoint: Endpoint,
        content: bytes,
        *,
        timeout: float,
        client_request_id: str | None,
        trace_headers: Sequence[tuple[str, str]] = (),
    ) -> Exchange:
        """`async with client.post(...) as response:` the streamed 2xx response of one attempt."""
        transport = self.transport()
        cookies = bool(self.cookies)
        # The own pool takes the head as the endpoint builds it, as bytes (http1.Prepared); a cookie
        # the upstream set, a proxy or a test double take the request with its header fields.
        build = endpoint.prepared if self._own_pool and not cookies else endpoint.request
        request = build(
            content,
            timeout=timeout,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            client_request_id=client_request_id,
            trace_headers=trace_headers,
        )
        if cookies:  # cookies the upstream set earlier (Cloudflare's), as httpx2's build_request adds them
            httpx2.Cookies(self.cookies).set_cookie_header(request)
        return Exchange(transport, self.cookies, request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
            self._loop = None


class Exchange:
    """One request and its response; the response is closed on the way out."""

    __slots__ = ("cookies", "request", "response", "transport")

    def __init__(self, transport: httpx2.AsyncBaseTransport, cookies: httpx2.Cookies, request: httpx2.Request) -> None:
        self.transport = transport
        self.cookies = cookies
        self.request = request
        self.response: httpx2.Response | None = None

    async def __aenter__(self) -> httpx2.Response:
        request = self.request
        response = await self.transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        if not response.is_success:
            try:
                body, complete = await _read_up_to(response, MAX_ERROR_BODY_BYTES)
            finally:
                await response.aclose()
            raise StatusFailure(response.status_code, response.headers, body, complete)
        self.response = response
        return response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.response is not None:
            await self.response.aclose()


async def read(response: httpx2.Response) -> bytes:
    """A whole answer; AnswerTooLarge past MAX_ANSWER_BYTES.

    Counted as it arrives (decoded), not taken from Content-Length: a compressed
    or chunked body announces nothing reliable, and a header lookup on every
    call would cost more than the rare oversized answer it would save reading.
    """
    body, complete = await _read_up_to(response, MAX_ANSWER_BYTES)
    if not complete:
        raise AnswerTooLarge(MAX_ANSWER_BYTES)
    return body


async def _read_up_to(response: httpx2.Response, limit: int) -> tuple[bytes, bool]:
    """(the body's first `limit` bytes, whether that is all of it)."""
    chunks: list[bytes] = []
    total = 0
    stream = response.stream
    # Without a content coding the body is the bytes as they came: read them off the transport's
    # stream, past httpx2's decoder and re-chunking layers (a few us an answer).
    source = (
        stream
        if isinstance(stream, httpx2.AsyncByteStream) and "content-encoding" not in response.headers
        else response.aiter_bytes()
    )
    async for chunk in source:
        total += len(chunk)
        if total > limit:
            chunks.append(chunk[: limit - (total - len(chunk))])
            return b"".join(chunks), False
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), True
