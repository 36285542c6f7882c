"""Distributed tracing with OpenTelemetry: a server span per RPC, a GenAI client span per upstream attempt.

Imported only when tracing is on (`app.tracing_from_env`: the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set,
and `OTEL_SDK_DISABLED` is not true): with tracing off nothing of OpenTelemetry
is imported and a call pays one `is None` check in the servicer and one per
attempt in the engine.

Configuration is the OpenTelemetry SDK's own, from the standard variables:
the OTLP exporter reads its endpoint, headers, certificates, timeout and
compression; `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`
choose `grpc` (the Python SDK's default, kept here) or `http/protobuf`; the
tracer provider reads `OTEL_TRACES_SAMPLER` / `_ARG` (default: parentbased
always on) and the `OTEL_BSP_*` batching settings; the resource reads
`OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` (default `gpt-grpc`).
Each `Tracing` owns its provider (none is installed globally), so a process
can start several gateways, each with a fresh one.

Spans:

- the server span, `gptgrpc.v1.GPTService/<Method>` (kind SERVER, RPC
  conventions), continues the caller's W3C `traceparent`/`tracestate` from the
  gRPC metadata and carries the request id and the gRPC status code. Its
  status is ERROR for the codes the RPC conventions count as server errors
  (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
  DATA_LOSS); any failure sets `error.type` to the gateway's ErrorReason;
- one child span per upstream attempt, `chat <model>` (kind CLIENT), in the
  OpenTelemetry GenAI conventions (see `_AttemptSpans`); the upstream request
  carries its `traceparent`, so a traced upstream joins the trace;
- a retry: event `gpt_grpc.retry` on the server span, at the start of the
  wait, with the seconds waited, the attempt it precedes and the reason
  retried.

Prompts and answers are recorded only when
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (the OpenTelemetry
GenAI instrumentations' switch), as `gen_ai.input.messages` and
`gen_ai.output.messages`. Everything an upstream sent that lands on a span
(model, id, finish reason, error text, the answer) goes through the
endpoint's scrubber first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import grpc
import orjson
from opentelemetry import trace
from opentelemetry.sdk import environment_variables as env_names
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..engine import PreparedCall
from ..errors import GatewayError
from ..spans import Answer, AttemptSpan
from ..upstream.endpoints import Endpoint
from ..upstream.scrub import MAX_CODE_CHARS, MAX_MESSAGE_CHARS, Scrubber, scrubbed

log = logging.getLogger("gpt_grpc.server")

DEFAULT_SERVICE_NAME = "gpt-grpc"
INSTRUMENTATION_NAME = "gpt_grpc"
# The OpenTelemetry GenAI instrumentations' switch for recording prompts and answers.
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"
# Codes a server span reports as an error (OpenTelemetry RPC conventions for gRPC servers).
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# gen_ai.provider.name (and the older gen_ai.system) by endpoint kind.
PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai"}
_TRACE_HEADERS = ("traceparent", "tracestate")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class TracingConfigError(ValueError):
    """Tracing variables that cannot work (an unknown protocol)."""


def _version() -> str:
    try:
        return metadata.version("gpt-grpc")
    except metadata.PackageNotFoundError:
        return "0"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol for traces: the traces-specific variable, else the general one, else grpc."""
    chosen = (
        env.get(env_names.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) or env.get(env_names.OTEL_EXPORTER_OTLP_PROTOCOL) or ""
    )
    chosen = chosen.strip().lower() or DEFAULT_PROTOCOL
    if chosen not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {chosen!r} is not supported: use {' or '.join(PROTOCOLS)}"
        )
    return chosen


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    """The OTLP span exporter of the chosen protocol; it reads its own OTEL_EXPORTER_OTLP_* variables."""
    if protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def resource() -> Resource:
    """The service's resource: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, else service.name gpt-grpc."""
    detected = Resource.create({SERVICE_VERSION: _version()})
    if not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return detected


class Tracing:
    """The gateway's tracer provider, its server spans and (`attempts`) the engine's attempt spans."""

    def __init__(self, provider: TracerProvider, service: str, *, capture_content: bool = False) -> None:
        self.provider = provider
        self.service = service
        self.capture_content = capture_content
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME, _version())
        self._propagator = TraceContextTextMapPropagator()
        self.attempts = _AttemptSpans(self._tracer, self._propagator, capture_content)

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str) -> Tracing:
        """Tracing as the standard OTEL_* variables describe it, exporting in batches over OTLP."""
        exporter = _exporter(env)
        # The sampler is the SDK's from OTEL_TRACES_SAMPLER(_ARG); shut down by `shutdown`, not at exit.
        provider = TracerProvider(resource=resource(), shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, service, capture_content=_truthy(env.get(CAPTURE_CONTENT)))

    def shutdown(self) -> None:
        """Export what is buffered, then stop (blocking: run it off the event loop)."""
        self.provider.shutdown()

    # -- the server span of one RPC --------------------------------------------------

    def server_span(self, method: str, metadata: Iterable[tuple[str, Any]] | None, request_id: str) -> Span:
        """The span of one RPC, child of the caller's span when its metadata carries a trace context."""
        carrier = {key: value for key, value in metadata or () if key in _TRACE_HEADERS and isinstance(value, str)}
        parent = self._propagator.extract(carrier) if carrier else None
        return self._tracer.start_span(
            f"{self.service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self.service,
                "rpc.method": method,
                "gpt_grpc.request_id": request_id,
            },
        )

    @staticmethod
    def end_server_span(span: Span, code: grpc.StatusCode, reason: str | None) -> None:
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if reason:
                span.set_attribute("error.type", reason)
            if code in SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, reason or code.name))
        span.end()

    @staticmethod
    def log_fields(span: Span) -> dict[str, str]:
        """trace_id and span_id of `span`, as the access log line carries them (W3C hex)."""
        context = span.get_span_context()
        return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class _AttemptSpans:
    """The engine's `AttemptTracer`: one `chat <model>` client span per upstream attempt.

    Attributes (OpenTelemetry GenAI conventions): gen_ai.operation.name=chat,
    gen_ai.provider.name and gen_ai.system (the older name) = openai,
    gen_ai.request.model, .temperature, .max_tokens, .top_p, gen_ai.request.stream,
    server.address and server.port; on an answer gen_ai.response.model, .id,
    .finish_reasons, gen_ai.usage.input_tokens and .output_tokens; for a stream
    gen_ai.response.time_to_first_chunk (seconds); on a failure error.type (the
    ErrorReason), http.response.status_code when the upstream answered, and the
    ERROR status with the (scrubbed) message. gpt_grpc.attempt is the attempt number.
    """

    def __init__(self, tracer: trace.Tracer, propagator: TraceContextTextMapPropagator, capture: bool) -> None:
        self._tracer = tracer
        self._propagator = propagator
        self._capture = capture

    def attempt(
        self, call: PreparedCall, endpoint: Endpoint, number: int, *, stream: bool, after: AttemptSpan | None
    ) -> _AttemptSpan:
        parent = call.trace if isinstance(call.trace, Span) else trace.get_current_span()
        if isinstance(after, _AttemptSpan) and parent.is_recording():
            _retry_event(parent, after, number)
        context = trace.set_span_in_context(parent)
        model = call.model.name
        span = self._tracer.start_span(f"chat {model}", context=context, kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes(self._request_attributes(call, endpoint, number, stream))
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span, context))
        return _AttemptSpan(span, tuple(carrier.items()), endpoint.scrubber, self._capture)

    def _request_attributes(self, call: PreparedCall, endpoint: Endpoint, number: int, stream: bool) -> dict[str, Any]:
        provider = PROVIDERS.get(endpoint.kind, endpoint.kind)
        url = endpoint.url
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": call.model.name,
            "gen_ai.request.stream": stream,
            "server.address": endpoint.name,
            "server.port": url.port or _DEFAULT_PORTS.get(url.scheme, 443),
            "gpt_grpc.attempt": number,
            "gpt_grpc.upstream": endpoint.upstream,  # the configured upstream's name (upstreams file)
        }
        params = call.request.params
        for key, name, kind in (
            ("temperature", "gen_ai.request.temperature", float),
            ("top_p", "gen_ai.request.top_p", float),
            ("max_tokens", "gen_ai.request.max_tokens", int),
            ("max_completion_tokens", "gen_ai.request.max_tokens", int),
        ):
            value = params.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = kind(value)
        if self._capture:
            messages = call.body.get("messages") or call.request.messages
            attributes["gen_ai.input.messages"] = endpoint.scrubber(_input_messages(messages))
        return attributes


def _retry_event(parent: Span, failed: _AttemptSpan, number: int) -> None:
    """The wait before attempt `number`, on the call's span, stamped at the failed attempt's end."""
    waited_ns = max(0, time.time_ns() - failed.ended_ns)
    attributes: dict[str, Any] = {"gpt_grpc.attempt": number, "gpt_grpc.retry.wait_seconds": waited_ns / 1e9}
    if failed.error_type:
        attributes["error.type"] = failed.error_type
    parent.add_event("gpt_grpc.retry", attributes, timestamp=failed.ended_ns)


class _AttemptSpan:
    """One attempt's span; see `_AttemptSpans` for what it records."""

    __slots__ = ("_capture", "_scrubber", "_started", "ended_ns", "error_type", "headers", "span")

    def __init__(self, span: Span, headers: Sequence[tuple[str, str]], scrubber: Scrubber, capture: bool) -> None:
        self.span = span
        self.headers = headers
        self._scrubber = scrubber
        self._capture = capture
        self._started = time.monotonic()
        self.ended_ns = 0
        self.error_type = ""

    def first_chunk(self) -> None:
        if self.span.is_recording():
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", time.monotonic() - self._started)

    def answered(self, answer: Answer) -> None:
        span = self.span
        if not span.is_recording():
            return
        scrub = self._scrubber
        attributes: dict[str, Any] = {
            "gen_ai.response.model": scrub(answer.model),
            "gen_ai.usage.input_tokens": answer.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.usage.completion_tokens,
        }
        if answer.id:
            attributes["gen_ai.response.id"] = scrub(answer.id)
        finish = scrubbed(answer.finish_reason, scrub, MAX_CODE_CHARS)
        if finish:
            attributes["gen_ai.response.finish_reasons"] = (finish,)
        if answer.usage.estimated:
            attributes["gpt_grpc.usage.estimated"] = True
        if self._capture:
            attributes["gen_ai.output.messages"] = scrub(_output_messages(answer, finish))
        span.set_attributes(attributes)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, GatewayError):
            self.error_type = error.reason.value
            message = scrubbed(error.message, self._scrubber, MAX_MESSAGE_CHARS) or self.error_type
        else:  # a cancellation (the caller went away), or a bug the servicer reports as INTERNAL
            self.error_type = type(error).__name__
            message = self.error_type
        span = self.span
        if span.is_recording():
            span.set_attribute("error.type", self.error_type)
            if isinstance(error, GatewayError) and error.http_status is not None:
                span.set_attribute("http.response.status_code", error.http_status)
            span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        self.ended_ns = time.time_ns()
        self.span.end(self.ended_ns)


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}] if content else []
    parts = []
    for part in content or ():
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append({"type": "text", "content": part.get("text", "")})
        elif isinstance(part, Mapping):  # an image or audio part: its kind, not its data
            parts.append({"type": str(part.get("type", "unknown"))})
    return parts


def _input_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """The request's messages as gen_ai.input.messages (the GenAI conventions' JSON shape)."""
    out = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            result = message.get("content")
            parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"), "result": result}]
        else:
            parts = _text_parts(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append({"type": "tool_call", "id": call.get("id"), **_function(function)})
        out.append({"role": role, "parts": parts})
    return orjson.dumps(out).decode()


def _function(function: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": function.get("name"), "arguments": function.get("arguments")}


def _output_messages(answer: Answer, finish_reason: str | None) -> str:
    """The answer as gen_ai.output.messages."""
    parts: list[dict[str, Any]] = _text_parts(answer.content)
    parts += [{"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments} for c in answer.tool_calls]
    message = {"role": "assistant", "parts": parts, "finish_reason": finish_reason or ""}
    return orjson.dumps([message]).decode()
