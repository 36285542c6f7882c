"""The upstream path without the SDK: the wire request OpenAI reads, and one translation of every failure."""

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

from gpt_grpc.chat import ChatRequest
from gpt_grpc.engine import Engine
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.retry import RetryPolicy
from gpt_grpc.server.app import MAX_MESSAGE_BYTES
from gpt_grpc.settings import Settings
from gpt_grpc.upstream import client as upstream_client
from gpt_grpc.upstream.client import MAX_ANSWER_BYTES, UpstreamClient
from gpt_grpc.upstream.endpoints import openai_endpoint
from gpt_grpc.upstream.failures import AnswerTooLarge, StatusFailure
from gpt_grpc.upstream.scrub import NO_SECRETS
from gpt_grpc.upstream.sse import iter_lines

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
    "max_tokens": 20,
    "stop": ["\n\n"],
    "seed": 123456789012,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
}
KEY = "sk-test-0123456789abcdefghijklmnop"
BASE = "http://127.0.0.1:9/v1"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
# What OpenAI reads of a request (the SDK's X-Stainless-* telemetry headers are not sent).
OPENAI_HEADERS = ("authorization", "openai-organization", "openai-project", "content-type", "accept", "host")


def capture(responder: Callable[[httpx2.Request], httpx2.Response]) -> tuple[list[httpx2.Request], Any]:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return responder(request)

    return seen, httpx2.MockTransport(handler)


def ok(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json=COMPLETION)


def engine_on(transport: httpx2.AsyncBaseTransport, **settings: Any) -> Engine:
    values: dict[str, Any] = {"api_key": KEY, "endpoint": BASE, "retry": RetryPolicy(max_attempts=1)}
    values.update(settings)
    return Engine(Settings(**values), client=UpstreamClient(transport=transport))


@pytest.mark.parametrize(
    ("client_kwargs", "request_id"),
    [({}, None), ({"organization": "org-1", "project": "proj_1"}, "req-42")],
)
async def test_the_wire_request_is_what_the_sdk_sends_openai(
    client_kwargs: dict[str, Any], request_id: str | None
) -> None:
    """URL, body and every header OpenAI reads equal the SDK's; the timeouts are the attempt's."""
    seen, transport = capture(ok)
    async with openai.DefaultAsyncHttpx2Client(transport=transport, follow_redirects=False) as http:
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url=BASE, max_retries=0, http_client=http, **client_kwargs)
        extra = {"X-Client-Request-Id": request_id} if request_id else None
        await sdk.chat.completions.with_raw_response.create(**BODY, extra_headers=extra)  # type: ignore[call-overload]
    client = UpstreamClient(transport=transport)
    endpoint = openai_endpoint(Settings(api_key=KEY, endpoint=BASE, **client_kwargs), NO_SECRETS)
    async with client.post(endpoint, orjson.dumps(BODY), timeout=12.5, client_request_id=request_id) as response:
        await response.aread()
    await client.aclose()
    theirs, ours = seen
    assert (ours.method, str(ours.url)) == (theirs.method, str(theirs.url)) == ("POST", BASE + "/chat/completions")
    assert orjson.loads(ours.content) == orjson.loads(theirs.content) == BODY
    assert ours.headers["content-length"] == str(len(ours.content))
    for name in (*OPENAI_HEADERS, "x-client-request-id"):
        assert ours.headers.get(name) == theirs.headers.get(name), name
    assert ours.headers["user-agent"].startswith("gpt-grpc")
    assert not [name for name in ours.headers if name.lower().startswith("x-stainless")]
    assert ours.extensions["timeout"] == {"connect": 5.0, "read": 12.5, "write": 12.5, "pool": 12.5}


def status(code: int, body: bytes, **headers: str) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: httpx2.Response(code, content=body, headers=headers)


def fails(exc: Exception) -> Callable[[httpx2.Request], httpx2.Response]:
    def raise_it(request: httpx2.Request) -> httpx2.Response:
        raise exc

    return raise_it


ERROR_BODY = b'{"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}}'


@pytest.mark.parametrize(
    ("responder", "reason", "message", "cause"),
    [
        (status(400, ERROR_BODY), Reason.UPSTREAM_BAD_REQUEST, "upstream returned HTTP 400: nope", StatusFailure),
        (status(401, ERROR_BODY), Reason.UPSTREAM_AUTHENTICATION_FAILED, "HTTP 401: nope", StatusFailure),
        (status(403, ERROR_BODY), Reason.UPSTREAM_PERMISSION_DENIED, "HTTP 403: nope", StatusFailure),
        (status(404, ERROR_BODY), Reason.UPSTREAM_NOT_FOUND, "HTTP 404: nope", StatusFailure),
        (status(409, ERROR_BODY), Reason.UPSTREAM_CONFLICT, "HTTP 409: nope", StatusFailure),
        (status(422, ERROR_BODY), Reason.UPSTREAM_BAD_REQUEST, "HTTP 422: nope", StatusFailure),
        (status(429, ERROR_BODY), Reason.UPSTREAM_RATE_LIMITED, "HTTP 429: nope", StatusFailure),
        (status(500, b"<html>oops</html>"), Reason.UPSTREAM_UNAVAILABLE, "HTTP 500 with a non-JSON", StatusFailure),
        (status(503, b""), Reason.UPSTREAM_UNAVAILABLE, "HTTP 503 with a non-JSON body", StatusFailure),
        (status(302, b"", location="http://x/"), Reason.UPSTREAM_BAD_REQUEST, "HTTP 302", StatusFailure),
        (status(418, b'{"message": "teapot"}'), Reason.UPSTREAM_BAD_REQUEST, "HTTP 418: teapot", StatusFailure),
        (status(200, b'{"choices": []}'), Reason.UPSTREAM_RESPONSE_INVALID, "cannot read", ValueError),
        (status(200, b"{"), Reason.UPSTREAM_RESPONSE_INVALID, "completion the gateway cannot read", ValueError),
        (fails(httpx2.ConnectTimeout("slow")), Reason.UPSTREAM_TIMEOUT, "within the request timeout", None),
        (fails(httpx2.ReadTimeout("slow")), Reason.UPSTREAM_TIMEOUT, "within the request timeout", None),
        (fails(httpx2.ConnectError("refused")), Reason.UPSTREAM_UNAVAILABLE, "could not reach the upstream", None),
        # Connected, then closed (or broke the protocol) before any answer: not "could not reach".
        (fails(httpx2.RemoteProtocolError("bad")), Reason.UPSTREAM_UNAVAILABLE, "closed the connection before", None),
        (fails(ConnectionResetError("reset")), Reason.UPSTREAM_UNAVAILABLE, "closed the connection before", None),
    ],
)
async def test_every_failure_is_translated_once_with_its_cause(
    responder: Callable[[httpx2.Request], httpx2.Response],
    reason: Reason,
    message: str,
    cause: type[BaseException] | None,
) -> None:
    _, transport = capture(responder)
    engine = engine_on(transport)
    with pytest.raises(GatewayError) as info:
        await engine.acomplete(ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}]))
    await engine.aclose()
    err = info.value
    assert err.reason is reason and message in err.message
    # The original failure is chained, not dropped: the cause is what the HTTP stack (or the parser) raised.
    assert err.__cause__ is not None
    if cause is not None:
        assert isinstance(err.__cause__, cause)
    else:
        assert isinstance(err.__cause__, (httpx2.HTTPError, OSError))


async def test_retry_after_and_request_id_of_an_error_reach_the_error() -> None:
    _, transport = capture(status(429, ERROR_BODY, **{"retry-after": "2", "x-request-id": "req_1"}))
    engine = engine_on(transport)
    with pytest.raises(GatewayError) as info:
        await engine.acomplete(ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}]))
    await engine.aclose()
    assert (info.value.retry_after, info.value.request_id, info.value.http_status) == (2.0, "req_1", 429)
    assert info.value.upstream_code == "bad"


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
        return [line async for line in iter_lines(response, MAX_ANSWER_BYTES)]
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


async def test_a_stream_past_the_bound_is_refused() -> None:
    response = httpx2.Response(200, stream=_Chunks([b"data: x\n\n" * 100] * 3))
    with pytest.raises(AnswerTooLarge):
        async for _ in iter_lines(response, 2_000):
            pass


async def test_a_whole_answer_is_bounded() -> None:
    assert MAX_ANSWER_BYTES < MAX_MESSAGE_BYTES  # what fits the bound fits a gRPC message
    piece = b"x" * (1 << 20)
    unannounced = httpx2.Response(200, stream=_Chunks([piece] * (MAX_ANSWER_BYTES // len(piece) + 1)))
    with pytest.raises(AnswerTooLarge):
        await upstream_client.read(unannounced)
    exact = httpx2.Response(200, stream=_Chunks([piece] * (MAX_ANSWER_BYTES // len(piece))))
    assert len(await upstream_client.read(exact)) == MAX_ANSWER_BYTES


async def test_cookies_the_upstream_set_go_back() -> None:
    def set_cookie(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=COMPLETION, headers={"set-cookie": "__cf_bm=abc; path=/; HttpOnly"})

    seen, transport = capture(set_cookie)
    engine = engine_on(transport, endpoint="https://upstream.test/v1")
    for _ in range(2):
        await engine.acomplete(ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}]))
    await engine.aclose()
    assert "cookie" not in seen[0].headers
    assert seen[1].headers["cookie"] == "__cf_bm=abc"


async def test_one_endpoint_per_settings_snapshot() -> None:
    seen, transport = capture(ok)
    engine = engine_on(transport)
    request = ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}])
    first = engine.prepare(request).snapshot
    assert engine.prepare(request).snapshot is first  # built once, not per call
    engine.install(Settings(api_key="sk-other-0123456789abcdefghijkl", endpoint=BASE))
    await engine.acomplete(request)
    await engine.aclose()
    assert engine.prepare(request).snapshot is not first
    assert seen[-1].headers["authorization"] == "Bearer sk-other-0123456789abcdefghijkl"
