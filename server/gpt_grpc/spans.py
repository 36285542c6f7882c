"""The seam through which the engine reports each upstream attempt: a span, when someone traces.

The core imports no tracing library. The engine holds an optional
`AttemptTracer` (the server's OpenTelemetry implementation lives in
server/tracing.py); while it is None - tracing off, the default - an attempt
costs one `is None` check and nothing else.

When it is set, every attempt of every call (`Engine._attempts.one`, with the
endpoint chosen for it) asks it for an `AttemptSpan` and reports to it:

- `headers`: the trace context the upstream request carries (W3C
  `traceparent`/`tracestate`), so that a traced upstream joins the trace;
- `first_chunk()`: a stream's first delta is ready for the caller;
- `answered(answer)`: what the upstream answered (the model, the id, the
  finish reason, the usage, the text: the tracer decides what of it to record);
- `failed(error)`: why the attempt failed (a `GatewayError`, already
  translated and scrubbed, or a cancellation);
- `end()`: the attempt is over (for a stream: when its last event was read).

`after` names the failed attempt this one retries (the wait between them is a
retry wait). `PreparedCall.trace` is opaque to the core: whatever the caller
of the engine handed over to parent the attempts (the server's span).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .chat import ToolCall, Usage
    from .engine import PreparedCall
    from .upstream.endpoints import Endpoint


class Answer(Protocol):
    """What an attempt got back: a whole answer (unary) or a stream's totals."""

    @property
    def content(self) -> str: ...
    @property
    def tool_calls(self) -> tuple[ToolCall, ...]: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def usage(self) -> Usage: ...


class AttemptSpan(Protocol):
    """One upstream attempt as a tracer records it."""

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        """Trace-context headers for the attempt's upstream request."""

    def first_chunk(self) -> None:
        """A stream's first delta is ready for the caller."""

    def answered(self, answer: Answer) -> None:
        """The attempt succeeded with this answer."""

    def failed(self, error: BaseException) -> None:
        """The attempt failed (or was cancelled) with this."""

    def end(self) -> None:
        """The attempt is over; called once, after `answered` or `failed` if either."""


class AttemptTracer(Protocol):
    """Makes the span of each upstream attempt."""

    def attempt(
        self, call: PreparedCall, endpoint: Endpoint, number: int, *, stream: bool, after: AttemptSpan | None
    ) -> AttemptSpan:
        """Attempt `number` (1-based) of `call` to `endpoint` starts; `after`: the failed attempt it retries."""
