"""The application's trace context on every call, when it uses OpenTelemetry.

With ``opentelemetry-api`` installed (``pip install 'gpt-grpc-client[otel]'``),
:class:`~gpt_grpc_client.Client` and :class:`~gpt_grpc_client.AsyncClient`
add a gRPC interceptor that writes the current OpenTelemetry context into each
call's metadata with the application's configured propagators (W3C
``traceparent`` and ``tracestate`` by default, and ``baggage``): the gateway's
server span then continues the application's trace. Without a current span
nothing is added; without ``opentelemetry-api`` there is no interceptor at all.
A key already in the call's metadata (written by another instrumentation, such
as ``opentelemetry-instrumentation-grpc``) is left as it is.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import aio

try:
    from opentelemetry import propagate
except ImportError:  # the otel extra is not installed: no interceptor
    propagate = None  # type: ignore[assignment]

#: Whether ``opentelemetry-api`` is installed (the clients add their interceptor only then).
AVAILABLE = propagate is not None

Pairs = tuple[tuple[str, str | bytes], ...]


def trace_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Pairs:
    """``metadata`` plus the current trace context (keys it already has are kept as they are)."""
    pairs: Pairs = tuple(metadata or ())
    if propagate is None:
        return pairs
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return pairs
    present = {key for key, _ in pairs}
    return pairs + tuple((key, value) for key, value in carrier.items() if key not in present)


_Fields = collections.namedtuple("_Fields", ("method", "timeout", "metadata", "credentials", "wait_for_ready"))


class _CallDetails(_Fields, grpc.ClientCallDetails):  # type: ignore[misc]
    """A sync call's details with other metadata (grpc.ClientCallDetails has no constructor)."""


def _details(details: Any) -> _CallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        trace_metadata(details.metadata),
        details.credentials,
        getattr(details, "wait_for_ready", None),
    )


class TraceContextInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the current trace context to each call of a synchronous channel."""

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_details(details), request)


def _aio_details(details: Any) -> aio.ClientCallDetails:
    return aio.ClientCallDetails(
        details.method,
        details.timeout,
        aio.Metadata(*trace_metadata(tuple(details.metadata or ()))),
        details.credentials,
        details.wait_for_ready,
    )


class AsyncUnaryTraceContextInterceptor(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the current trace context to each unary call of a ``grpc.aio`` channel."""

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


class AsyncStreamTraceContextInterceptor(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the current trace context to each server-streaming call of a ``grpc.aio`` channel."""

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


def async_interceptors() -> list[aio.ClientInterceptor]:
    """The ``grpc.aio`` interceptors: one per kind (a channel files an interceptor under one kind only)."""
    return [AsyncUnaryTraceContextInterceptor(), AsyncStreamTraceContextInterceptor()]
