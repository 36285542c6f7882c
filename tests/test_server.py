"""The gateway end to end: real server on loopback, real stand-in upstream, generated stubs."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest
from google.protobuf import duration_pb2
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from gpt_grpc.server.app import ServerConfig
from gpt_grpc.server.servicer import GPTServicer
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin

HI = pb.ChatCompletionRequest(model="gpt-4o-mini", system_message="Be brief.", user_message="hi there")


def stream_request(**fields: object) -> pb.StreamChatCompletionRequest:
    base = {"model": "gpt-4o-mini", "user_message": "one two three four five six"}
    base.update(fields)
    return pb.StreamChatCompletionRequest(**base)  # type: ignore[arg-type]


# -- the contract is implemented ---------------------------------------------------


def test_every_rpc_is_implemented_and_wrapped() -> None:
    service = pb.DESCRIPTOR.services_by_name["GPTService"]
    for method in service.methods:
        handler = getattr(GPTServicer, method.name)
        base = getattr(pb_grpc.GPTServiceServicer, method.name)
        assert handler is not base, f"{method.name} is not implemented"
        assert getattr(handler, "__gpt_grpc_wrapped__", False), f"{method.name} is not wrapped"


def test_stream_request_has_exactly_the_unary_fields() -> None:
    def shape(message: type) -> list[tuple[str, int, int, bool]]:
        return [
            (f.name, f.number, f.type, f.has_presence)
            for f in message.DESCRIPTOR.fields  # type: ignore[attr-defined]
        ]

    assert shape(pb.StreamChatCompletionRequest) == shape(pb.ChatCompletionRequest)


# -- happy paths -------------------------------------------------------------------


async def test_chat_completion(gateway: Gateway, standin: Standin) -> None:
    reply = await gateway.stub.ChatCompletion(HI, timeout=10)
    assert reply.content == "Echo: hi there"
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    assert reply.model == "gpt-4o-mini"
    assert reply.id.startswith("chatcmpl-")
    assert reply.attempts == 1
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert not reply.usage.estimated
    assert reply.HasField("cost_usd") and reply.cost_usd > 0
    sent = standin.requests[-1]
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
    ]
    assert sent.api_key == TEST_KEY
    assert "temperature" not in sent.body  # unset stays unset


async def test_all_request_fields_reach_the_upstream(gateway: Gateway, standin: Standin) -> None:
    request = pb.ChatCompletionRequest(
        model="gpt-4o",
        messages=[
            pb.ChatMessage(role=pb.ROLE_DEVELOPER, content="dev"),
            pb.ChatMessage(role=pb.ROLE_USER, content="call tool please", name="alice"),
        ],
        temperature=0.0,
        max_tokens=50,
        top_p=0.5,
        stop=["END"],
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=-0.1,
        response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
        tools=[pb.Tool(name="lookup", description="find", parameters_json='{"type":"object","properties":{}}')],
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO),
        user="user-42",
    )
    reply = await gateway.stub.ChatCompletion(request, timeout=10)
    body = standin.requests[-1].body
    assert body["temperature"] == 0.0  # zero is a value, not "unset"
    assert (body["max_tokens"], body["top_p"], body["stop"], body["seed"]) == (50, 0.5, ["END"], 7)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.1, -0.1)
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"][0]["function"]["name"] == "lookup"
    assert body["tool_choice"] == "auto"
    assert body["user"] == "user-42"
    assert body["messages"][1] == {"role": "user", "content": "call tool please", "name": "alice"}
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c.name for c in reply.tool_calls] == ["lookup"]


async def test_stream_chat_completion(gateway: Gateway, standin: Standin) -> None:
    unary = await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="one two three four five six"), timeout=10
    )
    deltas: list[str] = []
    summaries: list[pb.ChatCompletionSummary] = []
    async for event in gateway.stub.StreamChatCompletion(stream_request(), timeout=10):
        if event.HasField("delta"):
            assert not summaries, "no delta after the summary"
            deltas.append(event.delta.content)
        else:
            summaries.append(event.summary)
    assert len(deltas) > 3
    assert "".join(deltas) == unary.content
    (summary,) = summaries
    assert summary.finish_reason == pb.FINISH_REASON_STOP
    assert summary.usage.total_tokens > 0 and not summary.usage.estimated
    assert summary.attempts == 1 and summary.HasField("cost_usd")
    assert standin.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_without_upstream_usage_is_estimated(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="no_usage"))
    events = [e async for e in gateway.stub.StreamChatCompletion(stream_request(), timeout=10)]
    summary = events[-1].summary
    assert summary.usage.estimated
    assert summary.usage.prompt_tokens > 0 and summary.usage.completion_tokens > 0


async def test_count_tokens_text_and_messages(gateway: Gateway, standin: Standin) -> None:
    text = await gateway.stub.CountTokens(pb.CountTokensRequest(text="hello world", model="gpt-4"))
    assert (text.token_count, text.encoding, text.encoding_fallback) == (2, "cl100k_base", False)
    unknown = await gateway.stub.CountTokens(pb.CountTokensRequest(text="hello world", model="llama3:8b"))
    assert (unknown.encoding, unknown.encoding_fallback) == ("o200k_base", True)
    # The count for messages equals what the upstream bills as prompt_tokens.
    messages = [
        pb.ChatMessage(role=pb.ROLE_SYSTEM, content="You are terse."),
        pb.ChatMessage(role=pb.ROLE_USER, content="What is the capital of France?"),
    ]
    counted = await gateway.stub.CountTokens(pb.CountTokensRequest(messages=messages, model="gpt-4o"))
    reply = await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", messages=messages))
    assert counted.token_count == reply.usage.prompt_tokens
    both = await fail(gateway.stub.CountTokens(pb.CountTokensRequest(text="x", messages=messages)))
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_models_and_usage(gateway: Gateway) -> None:
    models = {m.id: m for m in (await gateway.stub.ListModels(pb.ListModelsRequest())).models}
    mini = models["gpt-4o-mini"]
    assert mini.encoding == "o200k_base" and mini.context_window > 0
    assert mini.HasField("input_usd_per_million") and mini.output_usd_per_million > mini.input_usd_per_million
    assert models["o3-mini"].reasoning

    await gateway.stub.ChatCompletion(HI)
    await gateway.stub.ChatCompletion(HI)
    usage = await gateway.stub.GetUsage(pb.GetUsageRequest())
    (row,) = [m for m in usage.models if m.model == "gpt-4o-mini"]
    assert row.requests == 2 and row.prompt_tokens > 0 and row.cost_usd > 0
    assert usage.total.requests == 2
    assert usage.since.seconds > 0


# -- Configure ------------------------------------------------------------------------


async def test_configure_requires_the_admin_token(gateway: Gateway) -> None:
    request = pb.ConfigureRequest(default_model="gpt-4o")
    missing = details(await fail(gateway.stub.Configure(request)))
    assert (missing.code, missing.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_MISSING")
    wrong = details(await fail(gateway.stub.Configure(request, metadata=(("authorization", "Bearer nope"),))))
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_INVALID")
    assert ADMIN_TOKEN not in wrong.message

    before = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
    reply = await gateway.stub.Configure(request, metadata=ADMIN)
    assert reply.configuration.default_model == "gpt-4o"
    assert reply.configuration.generation == before.generation + 1


async def test_configure_disabled_without_admin_token(standin: Standin) -> None:
    gw = await start_gateway(ServerConfig(port=0, admin_token=None, upstream=fast_upstream(standin.base_url)))
    try:
        err = details(await fail(gw.stub.Configure(pb.ConfigureRequest(default_model="x"), metadata=ADMIN)))
        assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DISABLED")
    finally:
        await stop_gateway(gw)


async def test_partly_invalid_configure_changes_nothing(gateway: Gateway) -> None:
    before = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
    request = pb.ConfigureRequest(
        default_model="gpt-4.1",  # valid
        endpoint="file:///etc/passwd",  # invalid
        retry_policy=pb.RetryPolicy(max_attempts=0),  # invalid
    )
    err = details(await fail(gateway.stub.Configure(request, metadata=ADMIN)))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert set(err.fields) == {"endpoint", "retry_policy.max_attempts"}
    after = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
    assert after == before


async def test_configure_switches_upstream_and_key(gateway: Gateway, standin: Standin) -> None:
    async with Standin(api_keys={"other-upstream-key"}) as other:
        await gateway.stub.Configure(
            pb.ConfigureRequest(api_key="other-upstream-key", endpoint=other.base_url), metadata=ADMIN
        )
        reply = await gateway.stub.ChatCompletion(HI)
        assert reply.content == "Echo: hi there"
        assert [r.api_key for r in other.requests] == ["other-upstream-key"]
        conf = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
        assert conf.endpoint == other.base_url and conf.api_key_set
        assert "other-upstream-key" not in str(conf)


async def test_configuration_masks_the_key(gateway: Gateway) -> None:
    conf = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
    assert conf.api_key_masked == "sk-..." + TEST_KEY[-4:]
    assert TEST_KEY not in conf.SerializeToString().decode(errors="replace")
    assert conf.request_timeout == duration_pb2.Duration(seconds=5)


# -- the error table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "code", "reason", "upstream_requests", "retry_info"),
    [
        (
            [Fault(kind="http_error", status=400, code="invalid_value")],
            "INVALID_ARGUMENT",
            "UPSTREAM_BAD_REQUEST",
            1,
            False,
        ),
        ([Fault(kind="http_error", status=422)], "INVALID_ARGUMENT", "UPSTREAM_BAD_REQUEST", 1, False),
        (
            [Fault(kind="context_length_exceeded")],
            "INVALID_ARGUMENT",
            "UPSTREAM_CONTEXT_LENGTH_EXCEEDED",
            1,
            False,
        ),
        ([Fault(kind="unauthorized")], "UNAUTHENTICATED", "UPSTREAM_AUTHENTICATION_FAILED", 1, False),
        ([Fault(kind="forbidden")], "PERMISSION_DENIED", "UPSTREAM_PERMISSION_DENIED", 1, False),
        ([Fault(kind="model_not_found")], "NOT_FOUND", "UPSTREAM_NOT_FOUND", 1, False),
        (
            [Fault(kind="rate_limit", retry_after=0.01)] * 3,
            "RESOURCE_EXHAUSTED",
            "UPSTREAM_RATE_LIMITED",
            3,
            True,
        ),
        ([Fault(kind="insufficient_quota")], "RESOURCE_EXHAUSTED", "UPSTREAM_QUOTA_EXCEEDED", 1, False),
        ([Fault(kind="server_error")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", 3, True),
        ([Fault(kind="bad_gateway")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", 3, True),
        ([Fault(kind="unavailable")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", 3, True),
        ([Fault(kind="html_error")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", 3, True),
        ([Fault(kind="reset")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", 3, True),
        ([Fault(kind="invalid_json")] * 3, "UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID", 3, True),
        ([Fault(kind="http_error", status=409)] * 3, "ABORTED", "UPSTREAM_CONFLICT", 3, True),
    ],
)
async def test_upstream_error_table(
    gateway: Gateway,
    standin: Standin,
    faults: list[Fault],
    code: str,
    reason: str,
    upstream_requests: int,
    retry_info: bool,
) -> None:
    standin.enqueue(*faults)
    err = details(await fail(gateway.stub.ChatCompletion(HI, timeout=10)))
    assert err.code == getattr(grpc.StatusCode, code)
    assert err.reason == reason
    assert err.error_infos[0].domain == "gpt-grpc"
    assert (err.retry_info is not None) == retry_info
    assert len(standin.requests) == upstream_requests
    assert err.error_infos[0].metadata["attempts"] == str(upstream_requests)
    if faults[0].kind not in ("reset",):
        assert err.error_infos[0].metadata.get("http_status"), err.error_infos[0]
    assert TEST_KEY not in err.message


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="x", temperature=3.0), ["temperature"]),
        (pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="x", max_tokens=-5), ["max_tokens"]),
        (pb.ChatCompletionRequest(model="gpt-4o-mini"), ["user_message"]),
        (pb.ChatCompletionRequest(model="gpt-4o-mini", messages=[]), ["user_message"]),
        (
            pb.ChatCompletionRequest(model="gpt-4o-mini", messages=[pb.ChatMessage(role=99, content="x")]),  # type: ignore[arg-type]
            ["messages[0].role"],
        ),
        (
            pb.ChatCompletionRequest(model="gpt-4o-mini", messages=[pb.ChatMessage(role=pb.ROLE_USER)]),
            ["messages[0].content"],
        ),
        (
            pb.ChatCompletionRequest(
                model="gpt-4o-mini", user_message="x", tools=[pb.Tool(name="t", parameters_json="[1,2")]
            ),
            ["tools[0].parameters_json"],
        ),
        (
            pb.ChatCompletionRequest(
                model="gpt-4o-mini",
                user_message="x",
                response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="s"),
            ),
            ["response_format.schema_json"],
        ),
        (
            pb.ChatCompletionRequest(
                model="gpt-4o-mini", user_message="x", top_p=1.5, presence_penalty=-3, stop=["a"] * 5
            ),
            ["top_p", "presence_penalty", "stop"],
        ),
    ],
)
async def test_invalid_fields(
    gateway: Gateway, standin: Standin, request_: pb.ChatCompletionRequest, fields: list[str]
) -> None:
    err = details(await fail(gateway.stub.ChatCompletion(request_)))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert sorted(err.fields) == sorted(fields)
    assert standin.requests == []  # refused before anything was sent
    stream_err = details(
        await fail(
            _drain(
                gateway.stub.StreamChatCompletion(
                    pb.StreamChatCompletionRequest.FromString(request_.SerializeToString())
                )
            )
        )
    )
    assert sorted(stream_err.fields) == sorted(fields)


async def _drain(call: grpc.aio.UnaryStreamCall) -> list[object]:  # type: ignore[type-arg]
    return [event async for event in call]


async def test_no_api_key_is_failed_precondition(standin: Standin) -> None:
    upstream = fast_upstream(standin.base_url)
    upstream = type(upstream)(endpoint=standin.base_url)
    gw = await start_gateway(ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=upstream))
    try:
        err = details(await fail(gw.stub.ChatCompletion(HI)))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "API_KEY_MISSING")
        # Configure fixes it, in flight.
        await gw.stub.Configure(pb.ConfigureRequest(api_key=TEST_KEY), metadata=ADMIN)
        assert (await gw.stub.ChatCompletion(HI)).content == "Echo: hi there"
    finally:
        await stop_gateway(gw)


async def test_transient_failure_then_success_honours_retry_after(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="rate_limit", retry_after=0.3), Fault(kind="server_error"))
    reply = await gateway.stub.ChatCompletion(HI, timeout=10)
    assert reply.attempts == 3 and reply.content == "Echo: hi there"
    first, second, third = standin.requests
    assert second.received_at - first.received_at >= 0.3  # Retry-After honoured
    assert third.received_at - second.received_at < 0.3  # then plain backoff (max 0.05 s)


async def test_retry_after_ms_is_honoured(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="rate_limit", retry_after_ms=250))
    reply = await gateway.stub.ChatCompletion(HI, timeout=10)
    assert reply.attempts == 2
    first, second = standin.requests
    assert second.received_at - first.received_at >= 0.25


async def test_retry_after_as_an_http_date_is_honoured(gateway: Gateway, standin: Standin) -> None:
    # RFC 9110 section 10.2.3: Retry-After is delay-seconds or an HTTP-date; the date here is
    # at least 1 s ahead (rounded up to the second it names).
    standin.enqueue(Fault(kind="rate_limit", retry_after=1, retry_after_http_date=True))
    reply = await gateway.stub.ChatCompletion(HI, timeout=10)
    assert reply.attempts == 2
    first, second = standin.requests
    assert second.received_at - first.received_at >= 0.9  # not the plain backoff (at most 0.05 s)


async def test_retry_after_http_date_past_the_deadline_is_reported_in_retry_info(
    gateway: Gateway, standin: Standin
) -> None:
    standin.enqueue(Fault(kind="rate_limit", retry_after=5, retry_after_http_date=True))
    err = details(await fail(gateway.stub.ChatCompletion(HI, timeout=1.0)))
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED")
    assert err.retry_info is not None
    assert 4 <= err.retry_info.retry_delay.seconds <= 5  # the date, seen from the instant it was read
    assert len(standin.requests) == 1


async def test_deadline_shorter_than_backoff_is_respected(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="rate_limit", retry_after=5))
    started = time.monotonic()
    err = details(await fail(gateway.stub.ChatCompletion(HI, timeout=1.0)))
    elapsed = time.monotonic() - started
    # The gateway does not wait 5 s past a 1 s deadline: it reports at once.
    assert elapsed < 1.0
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED")
    assert err.retry_info is not None and err.retry_info.retry_delay.seconds == 5
    assert len(standin.requests) == 1


async def test_upstream_timeout_is_deadline_exceeded(standin: Standin) -> None:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url, request_timeout=0.3, max_attempts=2),
    )
    gw = await start_gateway(config)
    try:
        standin.enqueue(Fault(kind="hang"), Fault(kind="hang"))
        err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
        assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
        assert len(standin.requests) == 2
        await standin.wait_for(lambda s: all(r.client_disconnected for r in s.requests), timeout=5)
    finally:
        await stop_gateway(gw)


async def test_caller_deadline_closes_the_upstream_request(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="hang"))
    err = await fail(gateway.stub.ChatCompletion(HI, timeout=0.5))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await standin.wait_for(lambda s: s.requests and s.requests[0].client_disconnected, timeout=5)


async def test_cancelling_a_stream_closes_the_upstream_connection(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="slow_stream", delay=0.2))
    call = gateway.stub.StreamChatCompletion(stream_request(), timeout=30)
    first = await call.read()
    assert first.delta.content
    call.cancel()
    await standin.wait_for(lambda s: s.requests and s.requests[0].client_disconnected, timeout=5)
    assert not standin.requests[0].completed
    await standin.wait_for(lambda s: s.open_connections == 0 or True, timeout=1)
    assert gateway.server.admission.in_flight == 0


async def test_stream_failure_after_first_delta_is_not_retried(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="drop_mid_stream", after_chunks=2))
    call = gateway.stub.StreamChatCompletion(stream_request(), timeout=10)
    deltas: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in call:
            deltas.append(event.delta.content)
    err = details(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_RESPONSE_INVALID")
    assert len(deltas) >= 1
    assert len(standin.requests) == 1


async def test_truncated_stream_is_an_error_not_a_short_answer(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="truncated_sse"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(gateway.stub.StreamChatCompletion(stream_request(), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stream_retries_before_the_first_delta(gateway: Gateway, standin: Standin) -> None:
    standin.enqueue(Fault(kind="server_error"), Fault(kind="rate_limit", retry_after=0.01))
    events = await _drain(gateway.stub.StreamChatCompletion(stream_request(), timeout=10))
    summary = events[-1].summary  # type: ignore[attr-defined]
    assert summary.attempts == 3
    text = "".join(e.delta.content for e in events[:-1])  # type: ignore[attr-defined]
    assert text == "Echo: one two three four five six"


@pytest.mark.parametrize(
    ("model", "expect_absent", "expect_present"),
    [
        ("o3-mini", ["temperature", "max_tokens"], {"max_completion_tokens": 40}),
        ("o1", ["temperature", "max_tokens"], {"max_completion_tokens": 40}),
        ("gpt-5", ["temperature", "max_tokens"], {"max_completion_tokens": 40}),
        ("gpt-4o", [], {"max_tokens": 40, "temperature": 0.7}),
        ("llama3:8b", [], {"max_tokens": 40, "temperature": 0.7}),
    ],
)
async def test_reasoning_model_rewrite_as_sent_upstream(
    gateway: Gateway,
    standin: Standin,
    model: str,
    expect_absent: list[str],
    expect_present: dict[str, object],
) -> None:
    request = pb.ChatCompletionRequest(
        model=model, system_message="sys", user_message="hi", temperature=0.7, max_tokens=40
    )
    await gateway.stub.ChatCompletion(request)
    body = standin.requests[-1].body
    for name in expect_absent:
        assert name not in body
    for name, value in expect_present.items():
        assert body[name] == value
    assert body["model"] == model


async def test_o1_mini_gets_no_system_message(gateway: Gateway, standin: Standin) -> None:
    await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="o1-mini", system_message="sys", user_message="hi")
    )
    messages = standin.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user"]
    assert "sys" in messages[0]["content"] and "hi" in messages[0]["content"]


async def test_unexpected_errors_are_internal_without_detail(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway.server.engine, "acomplete", broken)
    with caplog.at_level(logging.ERROR):
        err = details(await fail(gateway.stub.ChatCompletion(HI)))
    assert (err.code, err.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert "secret internals" not in err.message
    assert "secret internals" in caplog.text  # the operator sees it in the log


async def test_secrets_never_leak(gateway: Gateway, standin: Standin, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        seen.append(str(await gateway.stub.GetConfiguration(pb.GetConfigurationRequest())))
        seen.append(str(await gateway.stub.ChatCompletion(HI)))
        standin.enqueue(Fault(kind="unauthorized"))
        err = await fail(gateway.stub.ChatCompletion(HI))
        seen.append(err.details() or "")
        seen.append(str(err.trailing_metadata()))
        new_key = "sk-rotated-key-zyxwvutsrqponmlk"
        seen.append(str(await gateway.stub.Configure(pb.ConfigureRequest(api_key=new_key), metadata=ADMIN)))
        err2 = await fail(gateway.stub.Configure(pb.ConfigureRequest(api_key=new_key + "\n"), metadata=ADMIN))
        seen.append(err2.details() or "")
        seen.append(str(err2.trailing_metadata()))
    everything = "\n".join(seen) + caplog.text
    for secret in (TEST_KEY, new_key, ADMIN_TOKEN):
        assert secret not in everything


async def test_health_and_reflection(gateway: Gateway) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "gptgrpc.v1.GPTService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert "gptgrpc.v1.GPTService" in names


async def test_many_slow_calls_in_flight_at_once(gateway: Gateway, standin: Standin) -> None:
    """No thread per request: 300 calls are all waiting on the upstream at the same time."""
    standin.enqueue(*[Fault(kind="slow", delay=3.0)] * 300)
    calls = [asyncio.ensure_future(gateway.stub.ChatCompletion(HI, timeout=30)) for _ in range(300)]
    # All 300 reach the upstream while the first is still waiting for its answer.
    await standin.wait_for(lambda s: len(s.requests) == 300, timeout=20)
    assert not any(r.completed for r in standin.requests)
    replies = await asyncio.gather(*calls)
    assert all(r.content == "Echo: hi there" for r in replies)
