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
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import TracerProvider

from gpt_grpc.server.app import ConfigError, ServerConfig, tracing_from_env
from gpt_grpc_client import AsyncClient, Client
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
        found = len(_by_kind(spans, trace_id, "SERVER")), len(_by_kind(spans, trace_id, "CLIENT"))
        return found[0] >= servers and found[1] >= clients

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
async def traced(standin: Standin, receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
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


async def test_a_conversation_turn_is_a_server_span_with_its_attempt_as_a_child(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    made = await traced.stub.CreateConversation(pb.CreateConversationRequest(model=MODEL, system_message="Be terse."))
    header, trace_id, parent = _traceparent()
    reply = await traced.stub.Converse(
        pb.ConverseRequest(conversation_id=made.conversation.id, user_message=PROMPT, max_tokens=50),
        metadata=(("traceparent", header),),
    )
    assert reply.content
    spans = await receiver.wait_for(_have(trace_id, 1, 1))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    assert server.name == f"{SERVICE}/Converse" and server.parent_span_id == parent
    (attempt,) = _by_kind(spans, trace_id, "CLIENT")
    assert attempt.parent_span_id == server.span_id
    assert attempt.attributes["gen_ai.request.model"] == MODEL
    assert attempt.attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens == reply.context_tokens
    assert not any(PROMPT in text for span in spans for text in _texts(span))


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


def _all_texts(spans: list[ReceivedSpan], trace_id: str) -> str:
    return "\n".join(text for span in spans if span.trace_id == trace_id for text in _texts(span))


async def test_no_span_holds_a_prompt_an_answer_or_a_key(
    traced: Gateway, standin: Standin, receiver: OtlpReceiver
) -> None:
    # The first attempt meets a hostile upstream echoing the key into its error; the second answers.
    standin.enqueue(Fault(kind="echo_key", status=429))
    standin.set_reply(content=f"{ANSWER} (and the key {TEST_KEY})")
    header, trace_id, _ = _traceparent()
    metadata = (("traceparent", header), ("authorization", f"Bearer {ADMIN_TOKEN}"))
    reply = await traced.stub.ChatCompletion(_chat(), metadata=metadata)
    assert ANSWER in reply.content and reply.attempts == 2
    # A stream too (the stand-in's default answer echoes the prompt).
    standin.set_reply()
    request = pb.StreamChatCompletionRequest(model=MODEL, user_message=PROMPT)
    events = [e async for e in traced.stub.StreamChatCompletion(request, metadata=metadata)]
    assert PROMPT in "".join(e.delta.content for e in events)
    spans = await receiver.wait_for(_have(trace_id, 2, 3))
    assert [s.attributes["error.type"] for s in _by_kind(spans, trace_id, "CLIENT") if s.status_code == "ERROR"] == [
        "UPSTREAM_RATE_LIMITED"
    ]
    texts = _all_texts(spans, trace_id)
    for secret in ("PROMPT-7f3a9c21", "ANSWER-c0ffee42", TEST_KEY, TEST_KEY[-16:], ADMIN_TOKEN):
        assert secret not in texts
    keys = {key for span in spans for key in span.attributes}
    assert not keys & {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"}


async def test_content_capture_records_prompts_and_answers_only_when_switched_on(
    standin: Standin, receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.grpc_endpoint)
    otel_env.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    gw = await _traced_gateway(standin)
    try:
        standin.enqueue(Fault(kind="echo_key", status=429))
        standin.set_reply(content=f"{ANSWER} (and the key {TEST_KEY})")
        header, trace_id, _ = _traceparent()
        request = _chat(system_message="Be brief.")
        reply = await gw.stub.ChatCompletion(request, metadata=(("traceparent", header),))
    finally:
        await stop_gateway(gw)
    assert ANSWER in reply.content
    spans = await receiver.wait_for(_have(trace_id, 1, 2))
    failed, answered = sorted(_by_kind(spans, trace_id, "CLIENT"), key=lambda s: s.attributes["gpt_grpc.attempt"])
    assert json.loads(answered.attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": PROMPT}]},
    ]
    (output,) = json.loads(answered.attributes["gen_ai.output.messages"])
    assert output["role"] == "assistant" and output["finish_reason"] == "stop"
    assert output["parts"] == [{"type": "text", "content": f"{ANSWER} (and the key [redacted])"}]
    assert "gen_ai.output.messages" not in failed.attributes
    texts = _all_texts(spans, trace_id)
    assert TEST_KEY not in texts and TEST_KEY[-16:] not in texts


async def test_the_sampler_is_the_sdks_from_the_environment(
    standin: Standin, receiver: OtlpReceiver, otel_env: pytest.MonkeyPatch
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint)
    otel_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    gw = await _traced_gateway(standin)
    header, trace_id, _ = _traceparent()
    try:
        await gw.stub.ChatCompletion(_chat(), metadata=(("traceparent", header),))
    finally:
        await stop_gateway(gw)  # flushes whatever was recorded: nothing
    assert receiver.requests == 0
    # Not sampled, the trace still goes on upstream (flags 00), as W3C asks.
    (request,) = standin.requests
    version, upstream_trace, _, flags = request.headers["traceparent"].split("-")
    assert (version, upstream_trace, flags) == ("00", trace_id, "00")


def test_an_unknown_otlp_protocol_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(ConfigError, match="http/json"):
        tracing_from_env(env)
    assert tracing_from_env({}) is None
    assert tracing_from_env({**env, "OTEL_SDK_DISABLED": "true"}) is None


def _env_without_otel(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return {**env, **extra}


# A gateway in a process of its own (the parent imports OpenTelemetry for its receiver): one call
# with a caller's traceparent, then which OpenTelemetry modules the process ever imported.
_UNTRACED_GATEWAY = """
import asyncio, json, sys
import grpc
from gptgrpc.v1 import gateway_pb2 as pb, gateway_pb2_grpc as pb_grpc
from gpt_grpc.server import logs
from gpt_grpc.server.app import GatewayServer, ServerConfig
from gpt_grpc.settings import SettingsUpdate

async def main(base_url, key, traceparent):
    logs.configure("INFO")
    server = GatewayServer(ServerConfig(port=0, upstream=SettingsUpdate(api_key=key, endpoint=base_url)))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello")
        await pb_grpc.GPTServiceStub(channel).ChatCompletion(request, metadata=(("traceparent", traceparent),))
    await server.stop(grace=1)
    modules = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    print(json.dumps({"tracing": server.tracing is not None, "engine_tracer": server.engine.tracer is not None,
                      "modules": modules}))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_tracing_off_imports_nothing_and_sends_nothing(standin: Standin, receiver: OtlpReceiver) -> None:
    # Every OpenTelemetry variable but a traces endpoint, the others pointing at the receiver.
    env = _env_without_otel(
        OTEL_SERVICE_NAME="untraced-gateway",
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=receiver.grpc_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    header, _, _ = _traceparent()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _UNTRACED_GATEWAY, standin.base_url, TEST_KEY, header,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report == {"tracing": False, "engine_tracer": False, "modules": []}
    # The gateway has stopped (a traced one flushes everything then): the receiver got nothing.
    assert receiver.requests == 0 and receiver.spans == []
    (request,) = standin.requests
    assert "traceparent" not in request.headers and "tracestate" not in request.headers
    (line,) = [json.loads(x) for x in stderr.decode().splitlines() if '"gpt_grpc.access"' in x]
    assert line["status"] == "OK" and "trace_id" not in line and "span_id" not in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_gateway_process_exports_over_http_protobuf_as_the_variables_say(
    standin: Standin, receiver: OtlpReceiver
) -> None:
    port = _free_port()
    env = _env_without_otel(
        OPENAI_API_KEY=TEST_KEY,
        OPENAI_BASE_URL=standin.base_url,
        GPT_GRPC_PORT=str(port),
        GPT_GRPC_ADMIN_TOKEN=ADMIN_TOKEN,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.http_endpoint}/v1/traces",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="gateway-under-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.namespace=llm",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="1.0",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpt_grpc.server", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            stub = pb_grpc.GPTServiceStub(channel)
            header, trace_id, parent = _traceparent()
            await stub.ChatCompletion(_chat(), metadata=(("traceparent", header),), wait_for_ready=True)
    finally:
        process.send_signal(signal.SIGTERM)  # a graceful stop exports what is still batched
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()[-3000:]
    spans = await receiver.wait_for(_have(trace_id, 1, 1))
    (server,) = _by_kind(spans, trace_id, "SERVER")
    (attempt,) = _by_kind(spans, trace_id, "CLIENT")
    assert server.transport == attempt.transport == "http"
    assert server.parent_span_id == parent and attempt.parent_span_id == server.span_id
    assert server.resource["service.name"] == "gateway-under-test"
    assert server.resource["deployment.environment.name"] == "test"
    assert server.resource["service.namespace"] == "llm"
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    (line,) = [json.loads(x) for x in stderr.decode().splitlines() if '"gpt_grpc.access"' in x]
    assert (line["trace_id"], line["span_id"]) == (trace_id, server.span_id)


async def test_the_python_client_propagates_the_applications_trace(traced: Gateway, receiver: OtlpReceiver) -> None:
    # The application's own OpenTelemetry: a provider of its own, its span current while it calls.
    app_tracer = TracerProvider().get_tracer("the-application")

    async def server_span_of(app_span: Any) -> ReceivedSpan:
        trace_id = format(app_span.get_span_context().trace_id, "032x")
        spans = await receiver.wait_for(_have(trace_id, 1, 0))
        (server,) = _by_kind(spans, trace_id, "SERVER")
        return server

    async with AsyncClient(traced.target) as client:
        with app_tracer.start_as_current_span("async unary") as app_span:
            await client.chat_completion(user_message=PROMPT)
        server = await server_span_of(app_span)
        assert server.parent_span_id == format(app_span.get_span_context().span_id, "016x")
        assert server.name == f"{SERVICE}/ChatCompletion"

        with app_tracer.start_as_current_span("async stream") as app_span:
            assert [d async for d in client.stream_chat(user_message=PROMPT)]
        server = await server_span_of(app_span)
        assert server.parent_span_id == format(app_span.get_span_context().span_id, "016x")
        assert server.name == f"{SERVICE}/StreamChatCompletion"

        with app_tracer.start_as_current_span("raw stub") as app_span:
            await client.stub.CountTokens(pb.CountTokensRequest(text="hello"))
        server = await server_span_of(app_span)
        assert server.parent_span_id == format(app_span.get_span_context().span_id, "016x")

    def sync_calls() -> Any:
        with Client(traced.target) as client, app_tracer.start_as_current_span("sync") as app_span:
            client.chat_completion(user_message=PROMPT)
            assert [d for d in client.stream_chat(user_message=PROMPT)]
        return app_span

    app_span = await asyncio.to_thread(sync_calls)
    trace_id = format(app_span.get_span_context().trace_id, "032x")
    spans = await receiver.wait_for(_have(trace_id, 2, 0))
    parents = {s.parent_span_id for s in _by_kind(spans, trace_id, "SERVER")}
    assert parents == {format(app_span.get_span_context().span_id, "016x")}

    # Turned off, the call starts a trace of its own.
    before = {s.trace_id for s in receiver.spans}
    async with AsyncClient(traced.target, trace_context=False) as client:
        with app_tracer.start_as_current_span("not propagated") as app_span:
            await client.count_tokens("hello")
    spans = await receiver.wait_for(lambda spans: any(s.trace_id not in before for s in spans))
    (server,) = [s for s in spans if s.trace_id not in before]
    assert server.parent_span_id == ""
    assert server.trace_id != format(app_span.get_span_context().trace_id, "032x")


def test_the_python_client_needs_no_opentelemetry() -> None:
    """Without opentelemetry-api (an optional extra) the client has no interceptor, and asking for one says why."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if it were not installed
        "import grpc\n"
        "from gpt_grpc_client import Client, tracing\n"
        "assert not tracing.AVAILABLE\n"
        "with Client('127.0.0.1:1') as c: assert isinstance(c.channel, grpc.Channel) and c._trace_context is False\n"
        "try:\n"
        "    Client('127.0.0.1:1', trace_context=True)\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "pip install 'gpt-grpc-client[otel]'" in result.stdout
