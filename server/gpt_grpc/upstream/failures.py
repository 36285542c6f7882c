"""Every failure on the way to the upstream becomes a `GatewayError` here, once.

`translate` is the one mapping from what can go wrong during an attempt to
the gateway's error: a timeout (ours or the transport's), a connection that
could not be made or that the upstream closed before answering, an HTTP
error status, an `{"error": ...}` event inside a stream, a body that cannot
be read, an answer cut short, an answer larger than the gateway relays. The
original exception stays chained as the cause.

Once the upstream has answered (a 2xx status line), whatever goes wrong with
the answer - a body that is not JSON, a stream that is not server-sent
events, an answer the connection cut or that ended before its finish_reason -
is UPSTREAM_RESPONSE_INVALID, and the error keeps the status and request id
of that answer, for a stream as for a whole answer. Before any answer, a
dropped connection is UPSTREAM_UNAVAILABLE.

Text that came from the upstream (its error message and code, its request
id) is scrubbed of every key the gateway holds (scrub.py) and bounded in
length and to printable characters before it is put into an error: from
here on it reaches callers, logs and spans as it is.

The exceptions defined here are the vocabulary of the reading code
(client.py, sse.py) for failures that are not exceptions of the HTTP stack.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import anyio
import httpx2
import orjson

from ..errors import RETRYABLE, GatewayError, Reason, parse_retry_after, reason_for_http
from .scrub import MAX_CODE_CHARS, MAX_ID_CHARS, MAX_MESSAGE_CHARS, Scrubber, scrubbed


class Phase(enum.Enum):
    """Where in an attempt a failure happened (the message tells the caller)."""

    SEND = "send"  # connecting, sending, waiting for the status line
    BODY = "body"  # reading a whole answer
    STREAM = "stream"  # reading a stream


class StatusFailure(Exception):
    """The upstream answered with a non-2xx status; `body` is its start (bounded), `complete` if whole."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, complete: bool) -> None:
        super().__init__(f"upstream returned HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body
        self.complete = complete


class ErrorEvent(Exception):
    """A stream carried an `{"error": ...}` event instead of a chunk."""

    def __init__(self, event: Mapping[str, Any]) -> None:
        super().__init__("upstream sent an error event")
        self.event = event


class StreamCut(Exception):
    """A stream ended before its answer was complete (no finish_reason).

    `sse` is False when the body held no server-sent event at all (an HTML page
    or a JSON body where a stream was expected), not a stream cut short.
    """

    def __init__(self, *, sse: bool = True) -> None:
        super().__init__("upstream stream ended before the answer was complete" if sse else "not an event stream")
        self.sse = sse


class AnswerTooLarge(Exception):
    """The upstream's answer (a body, or a stream's total) is over the gateway's bound."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream answer over {limit} bytes")
        self.limit = limit


# Left as they are: the caller went away, or the process is stopping.
_PASS_THROUGH = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)
# The connection failed or dropped: httpx2's errors, and what its own transport may
# leak untranslated (ssl.SSLError, anyio.EndOfStream), and plain socket errors.
_CONNECTION_ERRORS = (httpx2.HTTPError, ssl.SSLError, anyio.EndOfStream, OSError)
# Of those, the ones that mean no connection was ever made (both transports raise
# httpx2.ConnectError when connecting fails; the others are there if one leaks them).
_NOT_CONNECTED = (httpx2.ConnectError, ConnectionRefusedError, socket.gaierror)
# A body or an event the gateway cannot read.
_UNREADABLE = (ValueError, KeyError, TypeError, IndexError)

_NOT_REACHED = "could not reach the upstream: connection failed"
_CLOSED_BEFORE_ANSWERING = "upstream accepted the request but closed the connection before answering"
_CUT = {
    Phase.BODY: "upstream response ended before the answer was complete (connection dropped)",
    Phase.STREAM: "upstream stream ended before the answer was complete (connection dropped)",
}
_ENDED_EARLY = "upstream stream ended before the answer was complete"
_NOT_SSE = "upstream answered a stream request with a body that is not a stream of server-sent events"
_UNREADABLE_MESSAGES = {
    Phase.SEND: "upstream sent a response the gateway cannot read",
    Phase.BODY: "upstream sent a completion the gateway cannot read",
    Phase.STREAM: "upstream sent a stream the gateway cannot read",
}


def translate(
    exc: BaseException,
    *,
    phase: Phase,
    by_deadline: bool,
    scrubber: Scrubber,
    request_id: str | None = None,
    http_status: int | None = None,
) -> BaseException:
    """The exception to raise for `exc`, raised during an attempt (`raise translate(...) from exc`).

    A GatewayError, a cancellation or an exit comes back as it is, and so does
    anything this module does not know (a bug: the server logs it and answers
    INTERNAL). `by_deadline` says whether the caller's deadline, not the
    request timeout, limited the attempt; `request_id` and `http_status` are
    the upstream's answer's, when one had begun (phase BODY or STREAM).
    """
    if isinstance(exc, (GatewayError, *_PASS_THROUGH)):
        return exc
    upstream_id = scrubbed(request_id, scrubber, MAX_ID_CHARS)

    def error(reason: Reason, message: str, *, final: bool = False) -> GatewayError:
        """An error that keeps what the upstream's answer, if one began, said: its status and request id."""
        return GatewayError(reason, message, http_status=http_status, request_id=upstream_id, final=final)

    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        if by_deadline:
            return error(Reason.DEADLINE_EXCEEDED, "the caller's deadline passed while waiting upstream")
        return error(Reason.UPSTREAM_TIMEOUT, "upstream did not answer within the request timeout")
    if isinstance(exc, StatusFailure):
        return _status_error(exc, scrubber)
    if isinstance(exc, ErrorEvent):
        return _event_error(exc.event, http_status, upstream_id, scrubber)
    if isinstance(exc, AnswerTooLarge):
        return error(
            Reason.UPSTREAM_RESPONSE_INVALID,
            f"upstream answer is larger than {exc.limit // (1024 * 1024)} MiB, the most the gateway relays",
            final=True,  # the same question would get the same answer
        )
    if isinstance(exc, StreamCut):
        return error(Reason.UPSTREAM_RESPONSE_INVALID, _ENDED_EARLY if exc.sse else _NOT_SSE)
    if isinstance(exc, _CONNECTION_ERRORS):
        if phase is not Phase.SEND:
            # The upstream had answered: what it sent is an answer cut short.
            return error(Reason.UPSTREAM_RESPONSE_INVALID, _CUT[phase])
        message = _NOT_REACHED if isinstance(exc, _NOT_CONNECTED) else _CLOSED_BEFORE_ANSWERING
        return GatewayError(Reason.UPSTREAM_UNAVAILABLE, message)
    if isinstance(exc, _UNREADABLE):
        return error(Reason.UPSTREAM_RESPONSE_INVALID, _UNREADABLE_MESSAGES[phase])
    return exc


def _status_error(exc: StatusFailure, scrubber: Scrubber) -> GatewayError:
    body: object = None
    if exc.complete:
        try:
            body = orjson.loads(exc.body)
        except orjson.JSONDecodeError:
            body = None
    return from_http(exc.status, exc.headers, body, scrubber=scrubber)


def from_http(status: int, headers: Mapping[str, str], body: object, *, scrubber: Scrubber) -> GatewayError:
    """The error for an upstream HTTP error status; `body` is its parsed JSON (None if it was not JSON)."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    code, upstream_message = _code_and_message(error, scrubber)
    reason = reason_for_http(status, code)
    message = f"upstream returned HTTP {status}"
    if not isinstance(error, Mapping):
        # A non-JSON error page (an HTML page from a proxy, say): the status
        # still says what happened; keep the message short.
        message += " with a non-JSON body"
    elif upstream_message:
        message += f": {upstream_message}"
    return GatewayError(
        reason,
        message,
        http_status=status,
        request_id=scrubbed(headers.get("x-request-id"), scrubber, MAX_ID_CHARS),
        upstream_code=code,
        retry_after=parse_retry_after(headers) if reason in RETRYABLE else None,
    )


def _event_error(
    event: Mapping[str, Any], http_status: int | None, request_id: str | None, scrubber: Scrubber
) -> GatewayError:
    code, upstream_message = _code_and_message(event.get("error"), scrubber)
    message = "upstream sent an error in the stream"
    if upstream_message:
        message += f": {upstream_message}"
    # The stream's status was 2xx; the error says what went wrong, as a 5xx would.
    return GatewayError(
        reason_for_http(500, code), message, http_status=http_status, request_id=request_id, upstream_code=code
    )


def _code_and_message(error: object, scrubber: Scrubber) -> tuple[str | None, str | None]:
    """(code, message) of an OpenAI-shaped error object, scrubbed and bounded."""
    if not isinstance(error, Mapping):
        return None, None
    code = error.get("code") or error.get("type")
    message = error.get("message")
    return (
        scrubbed(str(code), scrubber, MAX_CODE_CHARS) if code else None,
        scrubbed(str(message), scrubber, MAX_MESSAGE_CHARS) if message else None,
    )
