"""HTTP/1.1 on the wire, for the upstream pool (transport.py): pure functions, no I/O.

The request head; the response head (status line, header fields with obsolete line folding
unfolded); how the body is delimited and whether the connection may carry another request
(RFC 9112 sections 5-9); the chunked transfer coding decoded incrementally. Failures are
httpx2's own `RemoteProtocolError`, as httpcore/h11 raise them, so callers map them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2

__all__ = [
    "MAX_HEAD",
    "PREPARED",
    "Body",
    "Framing",
    "Head",
    "Prepared",
    "check_fields",
    "framing",
    "head_end",
    "parse_head",
    "request_head",
]

MAX_HEAD = 256 * 1024  # bytes: status line + header fields
MAX_CHUNK_SIZE_LINE = 1024  # bytes: a chunk size and its extensions
_CRLF = b"\r\n"
_NO_BODY_STATUS = (204, 304)
_FOLD = (32, 9)  # SP, HTAB: a line starting with one continues the previous field (obs-fold)


# The request extension under which a sender hands the pool a head it built itself (`Prepared`).
PREPARED = "gpt_grpc.prepared"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request's head, built and checked by its sender, and its body: sent as they are.

    The endpoint (endpoints.py) keeps the head's fields that never change
    between calls as bytes, checked once, and adds a call's own fields
    (checked by `check_fields`): that costs a few bytes joined instead of
    copying httpx2's Headers and scanning every field again on each call.
    """

    head: bytes
    content: bytes
    connection: str  # the Connection field in `head`: how the response's framing is read


def check_fields(fields: list[tuple[bytes, bytes]]) -> None:
    """LocalProtocolError for a field that could split the request or forge another field."""
    # One scan of all names and one of all values (not five per field): a CR or LF would let a
    # header split the request, a colon in a name would forge another field.
    names = b"\0".join([name for name, _ in fields])
    values = b"\0".join([value for _, value in fields])
    if b"\n" in values or b"\r" in values or b"\n" in names or b"\r" in names or b":" in names:
        bad = next(n for n, v in fields if b"\n" in v or b"\r" in v or b"\n" in n or b"\r" in n or b":" in n)
        raise httpx2.LocalProtocolError(f"illegal header {bad!r}")


def request_head(request: httpx2.Request) -> bytes:
    fields = request.headers.raw
    check_fields(fields)
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


def head_end(buffer: bytearray) -> int:
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


@dataclass(slots=True)
class Head:
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]


def parse_head(raw: bytes) -> Head:
    """One response head (status line and fields, up to and including the empty line)."""
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
        if line[0] in _FOLD:  # obs-fold: replaced by a space (RFC 9112 section 5.2)
            if not headers:
                raise httpx2.RemoteProtocolError("malformed header: a continuation line before any field")
            name, value = headers[-1]
            headers[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" \t"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx2.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        headers.append((name, value.strip(b" \t")))
    return Head(version, code, rest[0] if rest else b"", headers)


@dataclass(slots=True)
class Framing:
    """How a response's body is delimited and what becomes of its connection afterwards."""

    body: Body
    keep_alive: bool
    # The server's idle limit for the connection (Keep-Alive: timeout=N), in seconds, if it gave one.
    idle_timeout: float | None


def framing(method: str, request_connection: str, head: Head) -> Framing:
    """The framing of `head`'s body (RFC 9112 section 6.3); normalizes its Content-Length field in place."""
    connection: set[bytes] = set()
    codings: list[bytes] = []
    length: bytes | None = None
    idle_timeout: float | None = None
    fields: list[tuple[bytes, bytes]] = []
    for name, value in head.headers:
        lower = name.lower()
        if lower == b"content-length":
            # "2, 2" or the field twice with one value is one length (RFC 9110 8.6); differing ones are an error.
            values = {v.strip() for v in value.split(b",")}
            if len(values) != 1 or (length is not None and length not in values):
                raise httpx2.RemoteProtocolError("conflicting Content-Length headers")
            if length is not None:
                continue  # a repeated field: keep the first
            length = values.pop()
            value = length
        elif lower == b"transfer-encoding":
            codings += (c.strip().lower() for c in value.split(b",") if c.strip())
        elif lower == b"connection":
            connection.update(t.strip().lower() for t in value.split(b","))
        elif lower == b"keep-alive":
            idle_timeout = _idle_timeout(value)
        fields.append((name, value))
    head.headers = fields
    keep_alive = (
        b"close" not in connection
        and (head.version == b"HTTP/1.1" or (head.version == b"HTTP/1.0" and b"keep-alive" in connection))
        and request_connection.lower() != "close"
    )
    if codings and (length is not None or head.version == b"HTTP/1.0"):
        # Both framings, or Transfer-Encoding in HTTP/1.0: the framing may be faulty (request smuggling, response
        # splitting): Transfer-Encoding wins and the connection is closed after the response (RFC 9112 6.1, 6.3).
        keep_alive = False
    if method == "HEAD" or head.status in _NO_BODY_STATUS:
        return Framing(Body("none"), keep_alive, idle_timeout)
    if codings:
        if codings[-1] != b"chunked":  # chunked not last: the body runs until the connection closes
            return Framing(Body("close"), False, idle_timeout)
        return Framing(Body("chunked"), keep_alive, idle_timeout)
    if length is not None:
        if not length.isdigit():
            raise httpx2.RemoteProtocolError("malformed Content-Length header")
        return Framing(Body("length", int(length)), keep_alive, idle_timeout)
    return Framing(Body("close"), False, idle_timeout)


def _idle_timeout(value: bytes) -> float | None:
    """`timeout=N` of a Keep-Alive field (RFC 2068 19.7.1.1), seconds; None when absent or malformed."""
    for param in value.split(b","):
        key, _, number = param.partition(b"=")
        if key.strip().lower() == b"timeout":
            try:
                seconds = float(number.strip().strip(b'"'))
            except ValueError:
                return None
            return seconds if seconds >= 0 else None
    return None


class Body:
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
                    if end - pos > MAX_CHUNK_SIZE_LINE:
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
                    if end - pos > MAX_HEAD:
                        raise httpx2.RemoteProtocolError("malformed chunked body: trailer too long")
                    break
                empty = not buffer[pos:nl].rstrip(b"\r")
                pos = nl + 1
                if empty:
                    self.done = True
        del buffer[:pos]
        return b"".join(out) if len(out) != 1 else out[0]
