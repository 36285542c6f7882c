"""The direct upstream path sends what the SDK sends and fails the way the SDK fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_grpc.upstream.endpoints import chat_endpoint, iter_lines

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "h\u00e9 \u2603", "name": "bob"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ],
    "temperature": 0.7,
    "top_p": 0.5,
    "max_tokens": 20,
    "stop": ["\n\n"],
    "seed": 123456789012,
    "presence_penalty": -1.5,
    "frequency_penalty": 0.25,
    "user": "u-1",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
                "strict": True,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": True},
    },
}
KEY = "sk-test-0123456789abcdefghijklmnop"


def capture(responder: Callable[[httpx2.Request], httpx2.Response]) -> tuple[list[httpx2.Request], Any]:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return responder(request)

    return seen, httpx2.MockTransport(handler)


def ok(request: httpx2.Request) -> httpx2.Response:
    body = {"id": "x", "object": "chat.completion", "model": "m", "choices": [], "created": 0}
    return httpx2.Response(200, json=body)


def sdk_client(http: httpx2.AsyncClient, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=KEY, base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=60.0, http_client=http, **kwargs
    )


def wire(request: httpx2.Request) -> tuple[str, str, list[tuple[str, str]], Any, Any]:
    headers = sorted((k.lower(), v) for k, v in request.headers.multi_items())
    return request.method, str(request.url), headers, orjson.loads(request.content), request.extensions


@pytest.mark.parametrize(
    ("client_kwargs", "extra"),
    [
        ({}, None),
        ({"organization": "org-1", "project": "proj_1"}, {"X-Client-Request-Id": "req-42"}),
        ({"default_headers": {"X-Custom": "yes"}}, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_the_wire_request_is_the_sdks(
    client_kwargs: dict[str, Any], extra: dict[str, str] | None, stream: bool
) -> None:
    seen, transport = capture(ok)
    async with openai.DefaultAsyncHttpx2Client(transport=transport, follow_redirects=False) as http:
        client = sdk_client(http, **client_kwargs)
        body = {**BODY, "stream": stream}
        timeout = 12.345
        async with client.chat.completions.with_streaming_response.create(
            **body, timeout=httpx2.Timeout(timeout, connect=5.0), extra_headers=extra
        ) as response:
            await response.read()
        async with chat_endpoint(client, http).post(body, timeout=timeout, connect_timeout=5.0, headers=extra) as fast:
            await fast.aread()
    assert len(seen) == 2
    assert wire(seen[1]) == wire(seen[0])


def status(code: int, body: bytes, **headers: str) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: httpx2.Response(code, content=body, headers=headers)


def fails(exc: Exception) -> Callable[[httpx2.Request], httpx2.Response]:
    def raise_it(request: httpx2.Request) -> httpx2.Response:
        raise exc

    return raise_it


ERROR_BODY = b'{"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}}'


@pytest.mark.parametrize(
    "responder",
    [
        status(400, ERROR_BODY),
        status(401, ERROR_BODY),
        status(403, ERROR_BODY),
        status(404, ERROR_BODY),
        status(409, ERROR_BODY),
        status(422, ERROR_BODY),
        status(429, ERROR_BODY, **{"retry-after": "2", "x-request-id": "req_1"}),
        status(500, b"<html>oops</html>"),
        status(503, b""),
        status(302, b"", location="http://elsewhere/"),
        status(418, b'{"message": "teapot"}'),
        fails(httpx2.ConnectTimeout("slow")),
        fails(httpx2.ReadTimeout("slow")),
        fails(httpx2.ConnectError("refused")),
        fails(httpx2.RemoteProtocolError("bad")),
    ],
)
async def test_failures_are_the_sdks(responder: Callable[[httpx2.Request], httpx2.Response]) -> None:
    _, transport = capture(responder)
    async with openai.DefaultAsyncHttpx2Client(transport=transport, follow_redirects=False) as http:
        client = sdk_client(http)
        with pytest.raises(openai.OpenAIError) as by_sdk:
            async with client.chat.completions.with_streaming_response.create(**BODY) as response:
                await response.read()
        with pytest.raises(openai.OpenAIError) as by_us:
            async with chat_endpoint(client, http).post(BODY, timeout=60.0, connect_timeout=5.0) as fast:
                await fast.aread()
    a, b = by_sdk.value, by_us.value
    assert type(b) is type(a)
    assert str(b) == str(a)
    if isinstance(a, openai.APIStatusError):
        assert isinstance(b, openai.APIStatusError)
        assert (b.status_code, b.body, b.code, b.type) == (a.status_code, a.body, a.code, a.type)
        assert dict(b.response.headers) == dict(a.response.headers)


async def test_one_endpoint_per_client() -> None:
    _, transport = capture(ok)
    async with openai.DefaultAsyncHttpx2Client(transport=transport) as http:
        client = sdk_client(http)
        assert chat_endpoint(client, http) is chat_endpoint(client, http)
        assert chat_endpoint(sdk_client(http), http) is not chat_endpoint(client, http)


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await asyncio.sleep(0)
            yield chunk


async def _lines(chunks: list[bytes], ours: bool) -> list[str]:
    response = httpx2.Response(200, stream=_Chunks(chunks), headers={"content-type": "text/event-stream"})
    if ours:
        return [line async for line in iter_lines(response)]
    return [line async for line in response.aiter_lines()]


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        if p > start:
            pieces.append(data[start:p])
            start = p
    pieces.append(data[start:])
    return [p for p in pieces if p]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=st.sampled_from(["a", "é", "☃", ":", " ", "\r", "\n", "d"]), max_size=12), max_size=8
    ),
    ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=8, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_lines_split_like_httpx(lines: list[str], ends: list[str], cuts: list[int]) -> None:
    data = "".join(line + end for line, end in zip(lines, ends, strict=False)).encode()
    chunks = _cut(data, cuts)
    ours = asyncio.run(_lines(chunks, ours=True))
    theirs = asyncio.run(_lines(chunks, ours=False))
    assert ours == theirs


async def test_cookies_the_upstream_set_go_back_like_the_sdks() -> None:
    def set_cookie(request: httpx2.Request) -> httpx2.Response:
        body = {"id": "x", "object": "chat.completion", "model": "m", "choices": [], "created": 0}
        return httpx2.Response(200, json=body, headers={"set-cookie": "__cf_bm=abc; path=/; HttpOnly"})

    seen, transport = capture(set_cookie)
    async with openai.DefaultAsyncHttpx2Client(transport=transport, follow_redirects=False) as http:
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url="https://upstream.test/v1", max_retries=0, timeout=60.0, http_client=http
        )
        for _ in range(2):
            async with client.chat.completions.with_streaming_response.create(
                **BODY, timeout=httpx2.Timeout(9.0, connect=5.0)
            ) as response:
                await response.read()
        async with chat_endpoint(client, http).post(BODY, timeout=9.0, connect_timeout=5.0) as fast:
            await fast.aread()
    assert seen[1].headers["cookie"] == "__cf_bm=abc"
    assert wire(seen[2]) == wire(seen[1])
