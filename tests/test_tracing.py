"""Distributed tracing end to end over real OTLP (issue 16).

A test OTLP receiver on loopback (tests/otlp_receiver.py: OpenTelemetry's
TraceService over gRPC, /v1/traces over HTTP) receives what the gateway
exports. The gateway runs in process (configured, as in production, by the
standard OTEL_* variables; each GatewayServer builds its own tracer provider)
or as a subprocess (`python -m gpt_grpc.server`, env-driven).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ConfigError, GatewayServer, ServerConfig, tracing_from_env
from tests.conftest import ADMIN_TOKEN, TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.standin import Fault, Standin

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "gptgrpc.v1.GPTService"
MODEL = "gpt-4o-mini"
PROMPT = "The launch code for the tracing test is PROMPT-7f3a9c21"
ANSWER = "The answer nobody may see in a span: ANSWER-c0ffee42"
# Every OTEL_* variable a test sets is removed first: the machine's own must not leak in.
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


def _traceparent() -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a sampled W3C trace context."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def _chat(prompt: str = PROMPT, **fields: Any) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(model=MODEL, user_message=prompt, temperature=0.5, max_tokens=50, **fields)


def _by_kind(spans: list[ReceivedSpan], trace_id: str, kind: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id and s.kind == kind]


def _have(trace_id: str, servers: int, clients: int) -> Any:
    def enough(spans: list[ReceivedSpan]) -> bool:
        return len(_by_kind(spans, trace_id, "SERVER")) >= servers and len(_by_kind(spans, trace_id, "CLIENT")) >= clients

    return enough


def _texts(span: ReceivedSpan) -> list[str]:
    """Every string a span carries: attribute values, event attributes, its name and status message."""
    out = [span.name, span.status_message]

    def add(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, tuple | list):
            for item in value:
                add(item)
        elif isinstance(value, dict):
            for item in value.values():
                add(item)

    add(span.attributes)
    for event in span.events:
        out.append(event.name)
        add(event.attributes)
    return out


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: spans leave within a poll of the receiver
    yield monkeypatch


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as r:
        yield r


async def _traced_gateway(standin: Standin, **upstream: Any) -> Gateway:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url, **upstream),
        retry_budget=False,
    )
    gw = await start_gateway(config)
    assert gw.server.tracing is not None, "tracing should be on: an OTLP endpoint variable is set"
    return gw


@pytest.fixture
async def traced(
    standin: Standin, receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    gw = await _traced_gateway(standin)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def test_server_span_continues_the_callers_trace_and_each_attempt_is_a_genai_child(
    traced: Gateway, standin: Standin, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    header, trace_id, parent = _traceparent()
    metadata = (("traceparent", header), ("tracestate", "vendor=opaque"), ("x-request-id", "trace-req-1"))
    with caplog.at_level(logging.INFO, logger="gpt_grpc.access"):
        reply = await traced.stub.ChatCompletion(_chat(), metadata=metadata)
    assert reply.content
    spans = await receiver.wait_for(_have(trace_id, 1, 1))

    (server,) = _by_kind(spans, trace_id, "SERVER")
    assert server.name == f"{SERVICE}/ChatCompletion"
    assert server.parent_span_id == parent
    assert server.attributes["gpt_grpc.request_id"] == "trace-req-1"
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == SERVICE
    assert server.attributes["rpc.method"] == "ChatCompletion"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status_code == "UNSET"
    assert server.resource["service.name"] == "gpt-grpc"

    (attempt,) = _by_kind(spans, trace_id, "CLIENT")
    assert attempt.name == f"chat {MODEL}"
    assert attempt.parent_span_id == server.span_id
    a = attempt.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.response.model"] == reply.model
    assert a["gen_ai.response.id"] == reply.id
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.stream"] is False
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == standin.port
    assert a["gpt_grpc.attempt"] == 1
    assert attempt.status_code == "UNSET"

    # The upstream got the attempt's context: same trace, the attempt span as its parent.
    (request,) = standin.requests
    assert request.headers["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"
    assert request.headers["tracestate"] == "vendor=opaque"

    # The access line joins the trace.
    (line,) = [r for r in caplog.records if r.name == "gpt_grpc.access"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["trace_id"] == trace_id and fields["span_id"] == server.span_id


async def test_a_retried_call_has_two_attempt_spans_and_a_retry_event(
    traced: Gateway, standin: Standin, receiver: OtlpReceiver
) -> None:
    standin.enqueue(Fault(kind="server_error"))
    header, trace_id, _ = _traceparent()
    reply = await traced.stub.ChatCompletion(_chat(), metadata=(("traceparent", header),))
    assert reply.attempts == 2
    spans = await receiver.wait_for(_have(trace_id, 1, 2))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    first, second = sorted(_by_kind(spans, trace_id, "CLIENT"), key=lambda s: s.attributes["gpt_grpc.attempt"])
    for span in (first, second):
        assert span.parent_span_id == server.span_id
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["gen_ai.request.model"] == MODEL
    assert [first.attributes["gpt_grpc.attempt"], second.attributes["gpt_grpc.attempt"]] == [1, 2]
    assert first.status_code == "ERROR"
    assert first.attributes["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert first.attributes["http.response.status_code"] == 500
    assert "gen_ai.response.model" not in first.attributes
    assert second.status_code == "UNSET" and second.attributes["gen_ai.response.model"]
    assert first.end_unix_nano <= second.start_unix_nano

    (retry,) = [e for e in server.events if e.name == "gpt_grpc.retry"]
    assert retry.attributes["gpt_grpc.attempt"] == 2
    assert retry.attributes["error.type"] == "UPSTREAM_UNAVAILABLE"
    waited = retry.attributes["gpt_grpc.retry.wait_seconds"]
    assert retry.time_unix_nano == first.end_unix_nano
    assert 0 <= waited and retry.time_unix_nano + waited * 1e9 <= second.start_unix_nano + 1e6

    # Each upstream request carried its own attempt's context, in the caller's trace.
    assert [r.headers["traceparent"] for r in standin.requests] == [
        f"00-{trace_id}-{first.span_id}-01",
        f"00-{trace_id}-{second.span_id}-01",
    ]


async def test_a_failed_call_carries_the_grpc_status_and_the_reason(
    traced: Gateway, standin: Standin, receiver: OtlpReceiver
) -> None:
    standin.enqueue(*[Fault(kind="server_error")] * 3)  # every attempt fails: UNAVAILABLE, a server error
    header, trace_id, _ = _traceparent()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await traced.stub.ChatCompletion(_chat(), metadata=(("traceparent", header),))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    spans = await receiver.wait_for(_have(trace_id, 1, 3))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert server.attributes["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert server.status_code == "ERROR"
    assert [e.attributes["gpt_grpc.attempt"] for e in server.events if e.name == "gpt_grpc.retry"] == [2, 3]
    attempts = _by_kind(spans, trace_id, "CLIENT")
    assert sorted(s.attributes["gpt_grpc.attempt"] for s in attempts) == [1, 2, 3]
    assert {s.status_code for s in attempts} == {"ERROR"}

    # A caller's mistake (no model known upstream: NOT_FOUND) is not a server error: status left unset.
    standin.enqueue(Fault(kind="model_not_found"))
    header, trace_id, _ = _traceparent()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await traced.stub.ChatCompletion(_chat(), metadata=(("traceparent", header),))
    spans = await receiver.wait_for(_have(trace_id, 1, 1))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    assert server.attributes["rpc.grpc.status_code"] == failure.value.code().value[0] != 0
    assert server.attributes["error.type"] == "UPSTREAM_NOT_FOUND"
    assert server.status_code == "UNSET"


async def test_a_stream_carries_the_time_to_first_chunk(
    traced: Gateway, standin: Standin, receiver: OtlpReceiver
) -> None:
    standin.set_reply(chunks=5)
    header, trace_id, _ = _traceparent()
    request = pb.StreamChatCompletionRequest(model=MODEL, user_message=PROMPT)
    events = [e async for e in traced.stub.StreamChatCompletion(request, metadata=(("traceparent", header),))]
    assert events[-1].HasField("summary")
    spans = await receiver.wait_for(_have(trace_id, 1, 1))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    (attempt,) = _by_kind(spans, trace_id, "CLIENT")
    assert server.name == f"{SERVICE}/StreamChatCompletion"
    assert attempt.parent_span_id == server.span_id
    a = attempt.attributes
    assert a["gen_ai.request.stream"] is True
    ttfc = a["gen_ai.response.time_to_first_chunk"]
    assert 0 < ttfc < (attempt.end_unix_nano - attempt.start_unix_nano) / 1e9
    assert a["gen_ai.usage.output_tokens"] == events[-1].summary.usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    (request,) = standin.requests
    assert request.headers["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"
