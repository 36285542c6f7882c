"""The upstream pool with llhttp (httptools, Node's and uvicorn's parser) in place of http1.py's parser.

A candidate of issue 12's transport choice (GPT_GRPC_UPSTREAM_TRANSPORT=llhttp): the same pool,
connections, timeouts and failure mapping as transport.FastTransport; llhttp reads the status
line, the header fields and the body framing (Content-Length, chunked) in C, and http1.framing
still decides keep-alive and the server's idle limit from the parsed fields. A body delimited by
the connection's end is the pool's own (llhttp is told nothing about the end of the stream).
"""

from __future__ import annotations

import asyncio

import httptools
import httpx2

from .http1 import Body, Framing, Head, framing
from .transport import FastTransport, _Connection

__all__ = ["LlhttpTransport"]


class _LlhttpConnection(_Connection):
    """A connection whose bytes go through llhttp: `buffer` holds the body bytes it decoded."""

    __slots__ = ("complete", "fields", "head_done", "parse_error", "parser", "reason")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends, as http1.py and h11 take them; both framings present: http1.framing closes after.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_chunked_length=True)
        self.fields: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.head_done = False
        self.complete = False
        self.parse_error: httpx2.RemoteProtocolError | None = None

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.parse_error is None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self.parse_error = httpx2.RemoteProtocolError(f"malformed response: {exc}")
                self.close()  # nothing more is read from it; the reader sees the error
        self.buffered()

    def begin_request(self) -> None:
        super().begin_request()
        self.head_done = False
        self.complete = False

    def ended_error(self, what: str) -> httpx2.TransportError:
        return self.parse_error or super().ended_error(what)

    # -- llhttp's callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.fields = []

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() >= 200:  # 1xx: the final response follows
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.buffer += body  # (data_received then applies the high-water mark)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    @property
    def usable(self) -> bool:
        return super().usable and self.parse_error is None


class _LlhttpBody(Body):
    """The body as llhttp framed it: whatever it decoded so far; done when it says the message is complete."""

    __slots__ = ("_conn", "_ended")

    def __init__(self, kind: str, conn: _LlhttpConnection) -> None:
        super().__init__(kind)
        self._conn = conn
        self._ended = kind == "none"

    @property  # type: ignore[override]
    def done(self) -> bool:
        return self._ended or self._conn.complete

    @done.setter
    def done(self, value: bool) -> None:
        self._ended = value

    def take(self, buffer: bytearray) -> bytes:
        if self._conn.parse_error is not None:
            raise self._conn.parse_error
        data = bytes(buffer)
        buffer.clear()
        return data


class LlhttpTransport(FastTransport):
    """transport.FastTransport with llhttp parsing the responses."""

    _protocol = _LlhttpConnection

    async def _response_head(
        self, conn: _Connection, request: httpx2.Request, read_timeout: float | None
    ) -> tuple[Head, Framing]:
        assert isinstance(conn, _LlhttpConnection)
        while not conn.head_done:
            if conn.parse_error is not None:
                raise conn.parse_error
            if conn.eof:
                if not conn.received:
                    if isinstance(conn.error, OSError):
                        raise httpx2.ReadError(str(conn.error) or type(conn.error).__name__)
                    raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
                raise conn.ended_error("a complete response head")
            await conn.wait_data(read_timeout)
        major_minor = conn.parser.get_http_version()
        head = Head(b"HTTP/" + major_minor.encode("ascii"), conn.parser.get_status_code(), conn.reason, conn.fields)
        framed = framing(request.method, request.headers.get("connection", ""), head)
        framed.body = _LlhttpBody(framed.body.kind, conn)
        return head, framed
