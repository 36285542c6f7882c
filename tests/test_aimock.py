"""The README's error table, row by row, against an upstream nobody on the project wrote (issue 11).

aimock (tests/aimock) answers as its fixtures, chaos modes and stream
truncation say; the gateway, pointed at it, must end each call as the README's
error table states: the status, RetryInfo and ErrorInfo reason are read from
the README itself (tests/error_table.py), and ErrorInfo's metadata must agree
with what aimock saw: `attempts` equals the requests aimock's journal recorded
for the call (or, for a request its client left while aimock was still
sleeping on it, which aimock does not journal, the ones its metrics count as
"destroyed"); `http_status` and `request_id` are the status and X-Request-Id
aimock answered with. Each row runs unary and streaming where aimock can
produce it. The rows aimock cannot produce are named in ELSEWHERE with the
test that runs them against the project's stand-in.

Successful answers are compared too: streamed text byte for byte, delta by
delta as aimock chunked it, tool calls as assembled from their fragments, and
the usage aimock reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests import error_table
from tests.aimock import Aimock
from tests.conftest import TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import Details, access_lines, details, fail

MAX_ATTEMPTS = 3
CALL_SECONDS = 20.0  # the callers' deadline: far past anything a row takes
WAIT_SECONDS = 5.0  # bound on waiting for aimock's metrics or the gateway's access line
SENTENCE = "The quick brown fox jumps over the lazy dog"
CHUNK = 5  # characters per streamed delta aimock sends
# What three deltas of SENTENCE are, in aimock's chunking.
THREE_DELTAS = ["The q", "uick ", "brown"]
# CUT: aimock's truncateAfterChunks writes that many chunks and destroys the response in
# the tick of the last write, which Node has not sent yet (it corks a response's writes
# until the next tick): the last one is lost. With 1 ms between chunks the others go
# out, so truncateAfterChunks=n delivers n - 1 chunks, the role chunk first.
# A gap between two chunks far longer than any request timeout here (ms).
LONG_GAP_MS = 3000
SHORT_TIMEOUT = 0.4  # seconds: the request timeout of the rows about it


@pytest.fixture(scope="module")
def aimock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aimock]:
    mock = Aimock(TEST_KEY, tmp_path_factory.mktemp("aimock"))
    mock.start()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
async def upstream(aimock: Aimock) -> Aimock:
    await aimock.reset()
    return aimock


@contextlib.asynccontextmanager
async def gateway_to(upstream: Aimock, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway pointed at aimock: quick retries, MAX_ATTEMPTS attempts, a 10 s request timeout unless `settings`."""
    values = {"max_attempts": MAX_ATTEMPTS, "request_timeout": 10.0, **settings}
    config = ServerConfig(port=0, upstream=fast_upstream(upstream.base_url, **values), retry_budget=False)
    gateway = await start_gateway(config)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


@pytest.fixture
async def gw(upstream: Aimock) -> AsyncIterator[Gateway]:
    async with gateway_to(upstream) as gateway:
        yield gateway


# -- the rows -----------------------------------------------------------------------------------


def error(status: int, message: str, type_: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """An aimock error response: an OpenAI-shaped error body with this HTTP status."""
    body: dict[str, Any] = {"message": message, "type": type_}
    if code is not None:
        body["code"] = code
    return {"error": body, "status": status, **extra}


TEXT = {"content": SENTENCE}
# Two tool calls whose arguments stream in CHUNK-character fragments.
TOOL_CALLS = [
    {"id": "call_weather_1", "name": "get_weather", "arguments": '{"city": "San Francisco", "unit": "celsius"}'},
    {"id": "call_time_2", "name": "get_time", "arguments": '{"zone": "America/Los_Angeles"}'},
]


@dataclass(frozen=True)
class Row:
    """One way of meeting a README row: what aimock does, and what the gateway's ErrorInfo must then say."""

    id: str
    cause: str  # the README row, by the start of its cause
    response: Mapping[str, Any]  # aimock's fixture response
    options: Mapping[str, Any] = field(default_factory=dict)  # the fixture's options (chunkSize, chaos, ...)
    modes: tuple[str, ...] = ("unary", "stream")
    reason: int = 0  # which of the row's reasons ("A / B")
    http_status: int | None = None  # what the upstream answered, as ErrorInfo says
    relayed: tuple[str, ...] = ()  # deltas a stream relays before failing (then it is not retried)
    settings: Mapping[str, Any] = field(default_factory=dict)  # the gateway's settings for this row
    abandoned: bool = False  # the gateway leaves while aimock sleeps: counted in its metrics, not its journal
    retry_delay: float | None = None  # RetryInfo's delay, when the upstream set it
    message: str = ""  # in the status message


ROWS = [
    Row("400", "upstream 400, 422", error(400, "Invalid 'temperature'.", "invalid_request_error"), http_status=400),
    Row("422", "upstream 400, 422", error(422, "Unprocessable entity.", "invalid_request_error"), http_status=422),
    Row(
        "context-length",
        "context length exceeded",
        error(400, "This model's maximum context length is 128000 tokens.", "invalid_request_error",
              "context_length_exceeded"),
        http_status=400,
    ),
    Row("401", "upstream 401", error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        http_status=401),
    Row("403", "upstream 403", error(403, "Country, region, or territory not supported.", "request_forbidden"),
        http_status=403),
    Row("404", "upstream 404", error(404, "The model does not exist.", "invalid_request_error", "model_not_found"),
        http_status=404),
    Row(
        "429-rate-limit",
        "upstream 429 rate limit",
        error(429, "Rate limit reached for requests.", "rate_limit_error", "rate_limit_exceeded", retryAfter=1),
        http_status=429,
        settings={"max_attempts": 2},  # each retry waits the Retry-After (1 s)
        retry_delay=1.0,
    ),
    Row(
        "429-rate-limit-chaos",
        "upstream 429 rate limit",
        TEXT,
        {"chaos": {"rateLimitRate": 1}},
        http_status=429,
        settings={"max_attempts": 2},
        retry_delay=1.0,
    ),
    Row(
        "429-insufficient-quota",
        "upstream 429 insufficient_quota",
        error(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"),
        http_status=429,
    ),
    Row("500", "upstream 5xx", error(500, "The server had an error.", "server_error"), http_status=500),
    Row("502", "upstream 5xx", error(502, "Bad gateway.", "server_error"), http_status=502),
    Row("503", "upstream 5xx", error(503, "The engine is currently overloaded.", "server_error"), http_status=503),
    Row("500-chaos-drop", "upstream 5xx", TEXT, {"chaos": {"dropRate": 1}}, http_status=500),
    Row(
        "disconnect",
        "upstream 5xx, connection error",
        TEXT,
        {"chaos": {"disconnectRate": 1}},
        message="closed the connection before answering",
    ),
    # aimock's truncation with no latency sends nothing at all (Node corks a response's writes
    # until the next tick, and the cut comes first): the connection closes before any answer.
    Row(
        "truncated-before-anything-was-sent",
        "upstream 5xx, connection error",
        TEXT,
        {"chunkSize": CHUNK, "truncateAfterChunks": 4},
        modes=("stream",),
        message="closed the connection before answering",
    ),
    Row(
        "malformed-body",
        "upstream body unreadable",
        TEXT,
        {"chaos": {"malformedRate": 1}},
        modes=("unary",),
        http_status=200,
        message="cannot read",
    ),
    # A stream request answered with the malformed JSON body: non-SSE garbage with HTTP 200.
    Row(
        "malformed-stream",
        "upstream body unreadable",
        TEXT,
        {"chaos": {"malformedRate": 1}},
        modes=("stream",),
        http_status=200,
        message="not a stream of server-sent events",
    ),
    Row(
        "cut-before-first-delta",
        "upstream body unreadable",
        TEXT,
        {"chunkSize": CHUNK, "latency": 1, "truncateAfterChunks": 2},  # the role chunk only (see CUT)
        modes=("stream",),
        http_status=200,
        message="ended before the answer was complete",
    ),
    Row(
        "cut-after-three-deltas",
        "upstream body unreadable",
        TEXT,
        {"chunkSize": CHUNK, "latency": 1, "truncateAfterChunks": 5},  # the role and three deltas (see CUT)
        modes=("stream",),
        http_status=200,
        relayed=tuple(THREE_DELTAS),
        message="ended before the answer was complete",
    ),
    Row(
        "cut-inside-tool-call-arguments",
        "upstream body unreadable",
        {"toolCalls": TOOL_CALLS},
        # The role, the first call's header, two fragments of its arguments (see CUT).
        {"chunkSize": CHUNK, "latency": 1, "truncateAfterChunks": 5},
        modes=("stream",),
        http_status=200,
        message="ended before the answer was complete",
    ),
    # Truncation by timer: three deltas at once, then a long gap the timer cuts short.
    Row(
        "cut-by-timer",
        "upstream body unreadable",
        TEXT,
        {
            "chunkSize": CHUNK,
            "disconnectAfterMs": 500,
            "recordedTimings": {"ttftMs": 0, "interChunkDelaysMs": [0, 0, 0, LONG_GAP_MS], "totalDurationMs": 0},
        },
        modes=("stream",),
        http_status=200,
        relayed=tuple(THREE_DELTAS),
        message="ended before the answer was complete",
    ),
    Row("409", "upstream 409", error(409, "Conflict.", "invalid_request_error"), http_status=409),
    # Latency beyond the request timeout, before anything is answered (aimock's chaos latency).
    Row(
        "latency",
        "upstream timeout",
        TEXT,
        {"chaos": {"latencyMs": LONG_GAP_MS}},
        settings={"request_timeout": SHORT_TIMEOUT, "max_attempts": 2},
        abandoned=True,
    ),
    # ... before the first chunk of a stream (its time to first token).
    Row(
        "time-to-first-token",
        "upstream timeout",
        TEXT,
        {"streamingProfile": {"ttft": LONG_GAP_MS}},
        modes=("stream",),
        settings={"request_timeout": SHORT_TIMEOUT, "max_attempts": 2},
    ),
    # ... between two chunks once deltas flow: each gap is bounded, and the call is not retried.
    Row(
        "gap-after-three-deltas",
        "upstream timeout",
        TEXT,
        {
            "chunkSize": CHUNK,
            "recordedTimings": {"ttftMs": 0, "interChunkDelaysMs": [0, 0, 0, LONG_GAP_MS], "totalDurationMs": 0},
        },
        modes=("stream",),
        settings={"request_timeout": SHORT_TIMEOUT},
        http_status=200,
        relayed=tuple(THREE_DELTAS),
    ),
]  # fmt: skip

# The README rows aimock does not run, and the tests that run them (against the stand-in,
# or without an upstream: the gateway's own decisions).
ELSEWHERE = {
    # aimock relays any fixture, but a 16 MiB one through its control API and back is the
    # stand-in's job (it streams the answer piece by piece without holding it).
    "upstream answer over 15 MiB": "tests/test_hostile_upstream.py::test_an_oversized_*",
    "Configure without / with a wrong admin token": "tests/test_server.py::test_configure_requires_the_admin_token",
    "Configure on a server with no admin token": "tests/test_server.py::test_configure_disabled_without_admin_token",
    "server shutting down": "tests/test_lifecycle.py::test_sigterm_drains_500_streams_and_exits_zero",
    # The context assistant's own decisions, before (or instead of) any upstream call.
    "conversation unknown, expired, deleted or another client's": (
        "tests/test_conversations.py::test_another_client_cannot_read_it, ::test_expired_and_deleted_*"
    ),
    "a turn of the same conversation is in progress": "tests/test_conversations.py::test_two_turns_at_once_*",
    "the conversation holds its most messages": "tests/test_conversations.py::test_caps_on_messages_and_bytes",
    "the new message does not fit the conversation's context even alone": (
        "tests/test_conversations.py::test_a_message_that_cannot_fit_alone_is_refused_with_its_numbers"
    ),
    # Several upstreams (an upstreams file): the stand-ins of tests/test_upstreams.py.
    "no configured upstream serves the model": "tests/test_upstreams.py::test_a_fallback_model_is_used_and_reported",
}
# The rows run here by tests of their own below (not through ROWS).
OWN_TESTS = {
    "invalid field": "test_an_invalid_field_reaches_no_upstream",
    "no API key configured": "test_no_api_key_reaches_no_upstream",
    "the caller's deadline reached": "test_the_callers_deadline",
    "the caller cancels": "test_the_caller_cancels",
    "too many calls in flight": "test_too_many_calls_in_flight",
}


def test_every_readme_row_is_run_here_or_named_elsewhere() -> None:
    run = {error_table.row(r.cause).cause for r in ROWS}
    named = {error_table.row(cause).cause for cause in [*ELSEWHERE, *OWN_TESTS]}
    assert run.isdisjoint(named)
    assert run | named == {r.cause for r in error_table.rows()}


CASES = [pytest.param(row, mode, id=f"{row.id}-{mode}") for row in ROWS for mode in row.modes]


@pytest.mark.parametrize(("row", "mode"), CASES)
async def test_the_error_table_row_by_row(upstream: Aimock, row: Row, mode: str) -> None:
    async with gateway_to(upstream, **row.settings) as gw:
        await run_row(gw, upstream, row, mode)


async def run_row(gw: Gateway, upstream: Aimock, row: Row, mode: str) -> None:
    promised = error_table.row(row.cause)
    attempts_left = row.settings.get("max_attempts", MAX_ATTEMPTS)
    token = f"row {row.id} {mode}"
    await upstream.add([{"match": {"userMessage": token}, "response": row.response, **row.options}])
    before = await upstream.requests_by_status()
    call_id = token.replace(" ", "-")

    relayed: list[str] = []
    if mode == "unary":
        err = details(await fail(gw.stub.ChatCompletion(chat(token), timeout=CALL_SECONDS, metadata=tagged(call_id))))
    else:
        relayed, err = await stream_failure(gw, token, call_id)

    assert err.code == promised.code, err.message
    assert err.reason == promised.reason(row.reason), err.message
    assert (err.retry_info is not None) == promised.retry_info
    if row.retry_delay is not None:
        assert err.retry_info is not None
        assert err.retry_info.retry_delay.ToNanoseconds() == int(row.retry_delay * 1e9)
    assert row.message in err.message
    assert relayed == list(row.relayed)
    attempts = attempts_left if promised.retried and not row.relayed else 1
    metadata = err.error_infos[0].metadata
    assert metadata["attempts"] == str(attempts)
    # What aimock saw of this call.
    journal = await upstream.journal(call_id)
    if row.abandoned:
        assert journal == []
        await until_abandoned(upstream, before, attempts)
    else:
        assert len(journal) == attempts, journal
    if row.http_status is None:
        assert "http_status" not in metadata and "request_id" not in metadata, metadata
    else:
        assert metadata["http_status"] == str(row.http_status)
        assert metadata["request_id"] == journal[-1]["headers"]["x-request-id"]
    assert TEST_KEY not in err.message


# -- rows with tests of their own ---------------------------------------------------------------


async def test_an_invalid_field_reaches_no_upstream(gw: Gateway, upstream: Aimock) -> None:
    promised = error_table.row("invalid field")
    request = pb.ChatCompletionRequest(user_message="row invalid", temperature=5.0)
    err = details(await fail(gw.stub.ChatCompletion(request, metadata=tagged("row-invalid"))))
    assert (err.code, err.reason, err.retry_info is None) == (promised.code, promised.reason(), True)
    assert err.fields == ["temperature"]
    assert await upstream.journal("row-invalid") == []


async def test_no_api_key_reaches_no_upstream(upstream: Aimock) -> None:
    promised = error_table.row("no API key configured")
    keyless = await start_gateway(ServerConfig(port=0, upstream=type(fast_upstream(""))(endpoint=upstream.base_url)))
    try:
        err = details(await fail(keyless.stub.ChatCompletion(chat("row no key"), metadata=tagged("row-no-key"))))
    finally:
        await stop_gateway(keyless)
    assert (err.code, err.reason) == (promised.code, promised.reason())
    assert await upstream.journal("row-no-key") == []


@pytest.mark.parametrize("mode", ["unary", "stream"])
async def test_the_callers_deadline(gw: Gateway, upstream: Aimock, caplog: pytest.LogCaptureFixture, mode: str) -> None:
    promised = error_table.row("the caller's deadline reached")
    caplog.set_level(logging.INFO, logger="gpt_grpc.access")
    token = f"row deadline {mode}"
    await upstream.add([{"match": {"userMessage": token}, "response": TEXT, "chaos": {"latencyMs": LONG_GAP_MS}}])
    before = await upstream.requests_by_status()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if mode == "unary":
            await gw.stub.ChatCompletion(chat(token), timeout=0.5)
        else:
            async for _ in gw.stub.StreamChatCompletion(stream(token), timeout=0.5):
                pass
    assert info.value.code() == promised.code
    line = await access_line(caplog)
    assert (line["status"], line.get("reason")) == (promised.code.name, promised.reason())
    await until_abandoned(upstream, before, 1)  # the upstream request was closed, not left running


async def test_the_caller_cancels(gw: Gateway, upstream: Aimock, caplog: pytest.LogCaptureFixture) -> None:
    promised = error_table.row("the caller cancels")
    caplog.set_level(logging.INFO, logger="gpt_grpc.access")
    token = "row cancel"
    timings = {"ttftMs": 0, "interChunkDelaysMs": [0, LONG_GAP_MS], "totalDurationMs": 0}
    await upstream.add([{"match": {"userMessage": token}, "response": TEXT, "recordedTimings": timings}])
    before = await upstream.requests_by_status()
    call = gw.stub.StreamChatCompletion(stream(token), timeout=CALL_SECONDS)
    assert (await call.read()).delta.content == SENTENCE[:20]  # aimock's default chunk size
    call.cancel()
    assert await call.code() == promised.code
    line = await access_line(caplog)
    assert (line["status"], line.get("reason")) == (promised.code.name, promised.reason())
    await until_abandoned(upstream, before, 1)  # closed at once: aimock saw the client leave mid-stream


async def test_too_many_calls_in_flight(upstream: Aimock) -> None:
    promised = error_table.row("too many calls in flight")
    config = ServerConfig(port=0, max_in_flight=1, upstream=fast_upstream(upstream.base_url), retry_budget=False)
    narrow = await start_gateway(config)
    token = "row in flight"
    timings = {"ttftMs": 0, "interChunkDelaysMs": [0, LONG_GAP_MS], "totalDurationMs": 0}
    await upstream.add([{"match": {"userMessage": token}, "response": TEXT, "recordedTimings": timings}])
    try:
        holding = narrow.stub.StreamChatCompletion(stream(token), timeout=CALL_SECONDS)
        await holding.read()
        err = details(await fail(narrow.stub.ChatCompletion(chat(token), metadata=tagged("row-refused"))))
        holding.cancel()
    finally:
        await stop_gateway(narrow)
    assert (err.code, err.reason, err.retry_info is not None) == (
        promised.code,
        promised.reason(),
        promised.retry_info,
    )
    assert await upstream.journal("row-refused") == []


# -- successful answers, as aimock sent them ------------------------------------------------------

USAGE = {"prompt_tokens": 17, "completion_tokens": 9, "total_tokens": 26}
# Non-ASCII text (in the Basic Multilingual Plane: aimock slices JavaScript strings).
WIDE = "Naïve café — 漢字テスト, ¿sí? «ok» ẞ"


async def test_streamed_text_is_relayed_byte_for_byte(gw: Gateway, upstream: Aimock) -> None:
    fixture = {"content": WIDE, "usage": USAGE, "id": "chatcmpl-aimock-1", "model": "gpt-4o-mini-2024-07-18"}
    await upstream.add([{"match": {"userMessage": "wide"}, "response": fixture, "chunkSize": 3}])
    events = [e async for e in gw.stub.StreamChatCompletion(stream("wide"), timeout=CALL_SECONDS)]
    deltas = [e.delta.content for e in events[:-1]]
    assert deltas == [WIDE[i : i + 3] for i in range(0, len(WIDE), 3)]
    summary = events[-1].summary
    assert (summary.id, summary.model, summary.finish_reason) == (
        "chatcmpl-aimock-1",
        "gpt-4o-mini-2024-07-18",
        pb.FINISH_REASON_STOP,
    )
    assert_usage(summary.usage)
    reply = await gw.stub.ChatCompletion(chat("wide"), timeout=CALL_SECONDS)
    assert (reply.content, reply.id, reply.finish_reason) == (WIDE, "chatcmpl-aimock-1", pb.FINISH_REASON_STOP)
    assert_usage(reply.usage)


async def test_tool_call_fragments_are_assembled_exactly(gw: Gateway, upstream: Aimock) -> None:
    await upstream.add([{"match": {"userMessage": "tools"}, "response": {"toolCalls": TOOL_CALLS}, "chunkSize": 4}])
    events = [e async for e in gw.stub.StreamChatCompletion(stream("tools"), timeout=CALL_SECONDS)]
    assert [e.WhichOneof("event") for e in events] == ["summary"]  # tool calls arrive whole, in the summary
    summary = events[-1].summary
    assert summary.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, c.arguments_json) for c in summary.tool_calls] == [
        (c["id"], c["name"], c["arguments"]) for c in TOOL_CALLS
    ]
    reply = await gw.stub.ChatCompletion(chat("tools"), timeout=CALL_SECONDS)
    assert [(c.id, c.name, c.arguments_json) for c in reply.tool_calls] == [
        (c["id"], c["name"], c["arguments"]) for c in TOOL_CALLS
    ]


async def test_request_timeout_bounds_each_gap_not_the_whole_stream(upstream: Aimock) -> None:
    # Ten chunks 0.15 s apart: 1.5 s in all, three times the request timeout, each gap under a third of it.
    timeout = 0.5
    gaps = [150] * 10
    timings = {"ttftMs": 0, "interChunkDelaysMs": gaps, "totalDurationMs": sum(gaps)}
    fixture = {"match": {"userMessage": "gaps"}, "response": TEXT, "chunkSize": CHUNK, "recordedTimings": timings}
    await upstream.add([fixture])
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with gateway_to(upstream, request_timeout=timeout) as gw:
        events = [e async for e in gw.stub.StreamChatCompletion(stream("gaps"), timeout=CALL_SECONDS)]
    assert loop.time() - started > 2 * timeout  # the premise: the whole stream took longer than the timeout
    assert "".join(e.delta.content for e in events[:-1]) == SENTENCE
    assert events[-1].summary.attempts == 1


# -- helpers --------------------------------------------------------------------------------------


def chat(text: str) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(model="gpt-4o-mini", user_message=text)


def stream(text: str) -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message=text)


def tagged(call_id: str) -> tuple[tuple[str, str], ...]:
    """The call's request id, which the gateway sends upstream as X-Client-Request-Id."""
    return (("x-request-id", call_id),)


async def stream_failure(gw: Gateway, text: str, call_id: str) -> tuple[list[str], Details]:
    deltas: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in gw.stub.StreamChatCompletion(stream(text), timeout=CALL_SECONDS, metadata=tagged(call_id)):
            deltas.append(event.delta.content)
    return deltas, details(info.value)


def assert_usage(usage: pb.Usage) -> None:
    reported = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.estimated)
    assert reported == (USAGE["prompt_tokens"], USAGE["completion_tokens"], USAGE["total_tokens"], False)


async def until_abandoned(upstream: Aimock, before: Mapping[str, float], count: int) -> None:
    """Wait (bounded) until aimock's metrics count `count` more chat requests whose client left first."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_SECONDS
    while True:
        now = await upstream.requests_by_status()
        left = now.get("destroyed", 0) - before.get("destroyed", 0)
        if left >= count or loop.time() > give_up:
            assert left == count, (before, now)
            return
        await asyncio.sleep(0.05)


async def access_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The one chat access line."""
    lines = await access_lines(caplog, lambda lines: any("Chat" in line["method"] for line in lines))
    (line,) = [line for line in lines if "Chat" in line["method"]]
    return line
