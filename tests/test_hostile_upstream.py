"""Issue 9: a hostile or broken upstream. The key never reaches a caller; an oversized answer is refused.

The stand-in echoes the Authorization header (and the key URL-encoded) into error
messages, error codes, X-Request-Id and SSE error events; the gateway must remove
every form of every key it holds before any of that reaches the status message,
the details, the trailing metadata or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, quote_plus

import grpc
import pytest
from google.rpc import status_pb2
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details
from tests.standin import Fault, Standin
from tests.standin.faults import OVERSIZED_BYTES

# Characters that URL-encoding changes, so each encoded form differs from the bare key.
HOSTILE_KEY = "sk-hostile/key+with=chars&more~0123456789abcdef"
ROTATED_KEY = "sk-rotated/by+configure=9876543210fedcba"
HI = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello")
STREAM_HI = pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message="one two three four")


def forms(key: str) -> list[str]:
    """Every way a key could show up: bare, as a header, URL-encoded (any hex case), and a long piece of it."""
    encoded = [quote(key), quote(key, safe=""), quote_plus(key)]
    return [key, f"Bearer {key}", *encoded, *(e.lower() for e in encoded), key[3:20]]


def assert_nowhere(key: str, texts: list[str], blobs: list[bytes]) -> None:
    for form in forms(key):
        for text in texts:
            assert form not in text, f"{form!r} leaked into {text[:300]!r}"
        for blob in blobs:
            assert form.encode() not in blob, f"{form!r} leaked into binary metadata"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line with its structured fields (the access log keeps them out of the message)."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in caplog.records)


def everything_of(err: grpc.aio.AioRpcError) -> tuple[list[str], list[bytes]]:
    """The caller's whole view of a failure: message, details (decoded) and every trailer."""
    texts = [err.details() or "", str(details(err))]
    blobs: list[bytes] = []
    for key, value in err.trailing_metadata() or ():
        if isinstance(value, bytes):
            blobs.append(value)
            if key == "grpc-status-details-bin":
                texts.append(str(status_pb2.Status.FromString(value)))
        else:
            texts.append(f"{key}={value}")
    return texts, blobs


@pytest.fixture
async def hostile() -> AsyncIterator[Standin]:
    async with Standin(host="127.0.0.1", port=0, api_keys=None) as s:  # any Bearer key is accepted
        yield s


@pytest.fixture
async def exposed(hostile: Standin) -> AsyncIterator[Gateway]:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(hostile.base_url, api_key=HOSTILE_KEY),
        retry_budget=False,
    )
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def stream_failure(gw: Gateway) -> tuple[list[pb.StreamChatCompletionResponse], grpc.aio.AioRpcError]:
    received: list[pb.StreamChatCompletionResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in gw.stub.StreamChatCompletion(STREAM_HI, timeout=20):
            received.append(event)
    return received, info.value


# (fault, how many to queue so that retries meet it too, reason the caller gets)
HTTP_ECHOES = [
    (Fault(kind="echo_key", status=400), 1, "UPSTREAM_BAD_REQUEST"),
    (Fault(kind="echo_key", status=401), 1, "UPSTREAM_AUTHENTICATION_FAILED"),
    (Fault(kind="echo_key", status=429), 3, "UPSTREAM_RATE_LIMITED"),
]


@pytest.mark.parametrize(("fault", "count", "reason"), HTTP_ECHOES, ids=["400", "401", "429"])
async def test_an_echoed_key_is_scrubbed_from_unary_errors(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture, fault: Fault, count: int, reason: str
) -> None:
    hostile.enqueue(*[fault] * count)
    with caplog.at_level(logging.DEBUG):
        err = await failure(exposed.stub.ChatCompletion(HI, timeout=20))
    assert details(err).reason == reason
    assert "[redacted]" in (err.details() or "")  # the message survives, without the key
    texts, blobs = everything_of(err)
    assert_nowhere(HOSTILE_KEY, [*texts, logged(caplog)], blobs)


@pytest.mark.parametrize(("fault", "count", "reason"), HTTP_ECHOES, ids=["400", "401", "429"])
async def test_an_echoed_key_is_scrubbed_from_stream_errors(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture, fault: Fault, count: int, reason: str
) -> None:
    hostile.enqueue(*[fault] * count)
    with caplog.at_level(logging.DEBUG):
        received, err = await stream_failure(exposed)
    assert received == [] and details(err).reason == reason
    texts, blobs = everything_of(err)
    assert_nowhere(HOSTILE_KEY, [*texts, logged(caplog)], blobs)


@pytest.mark.parametrize("after_chunks", [0, 2], ids=["before-first-delta", "after-deltas"])
async def test_an_echoed_key_is_scrubbed_from_sse_error_events(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture, after_chunks: int
) -> None:
    # Before the first delta the error is retried; every attempt meets it.
    hostile.enqueue(*[Fault(kind="echo_key_sse", after_chunks=after_chunks)] * 3)
    with caplog.at_level(logging.DEBUG):
        received, err = await stream_failure(exposed)
    assert len(received) == after_chunks
    assert details(err).reason == "UPSTREAM_UNAVAILABLE"
    assert "[redacted]" in (err.details() or "")
    texts, blobs = everything_of(err)
    texts += [str(event) for event in received]
    assert_nowhere(HOSTILE_KEY, [*texts, logged(caplog)], blobs)


async def test_a_key_set_through_configure_is_scrubbed_the_same(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    await exposed.stub.Configure(pb.ConfigureRequest(api_key=ROTATED_KEY), metadata=ADMIN)
    hostile.enqueue(Fault(kind="echo_key", status=401), Fault(kind="echo_key_sse", after_chunks=1))
    with caplog.at_level(logging.DEBUG):
        unary = await failure(exposed.stub.ChatCompletion(HI, timeout=20))
        _, streamed = await stream_failure(exposed)
    assert hostile.requests[-1].api_key == ROTATED_KEY  # the new key is the one echoed
    for err in (unary, streamed):
        texts, blobs = everything_of(err)
        assert_nowhere(ROTATED_KEY, [*texts, logged(caplog)], blobs)
        assert_nowhere(HOSTILE_KEY, [*texts, logged(caplog)], blobs)


# -- an oversized upstream answer ------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.name == "gpt_grpc.access"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["oversized", "oversized_chunked"])
async def test_an_oversized_unary_answer_is_refused_with_details_and_not_billed(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    hostile.enqueue(*[Fault(kind=kind)] * 3)
    with caplog.at_level(logging.INFO):
        err = await failure(exposed.stub.ChatCompletion(HI, timeout=30))
    got = details(err)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_RESPONSE_INVALID")
    assert "larger than" in got.message
    assert got.retry_info is None  # asking again would get the same answer
    assert got.error_infos[0].metadata["http_status"] == "200"
    assert len(hostile.requests) == 1  # the same question would get the same answer: not retried
    [line] = access_lines(caplog)
    assert (line["status"], line["reason"]) == ("UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID")
    usage = await exposed.stub.GetUsage(pb.GetUsageRequest())
    assert (usage.total.requests, usage.total.failed_requests, usage.total.cost_usd) == (0, 1, 0.0)


async def test_an_oversized_stream_ends_with_details_and_is_not_billed(
    exposed: Gateway, hostile: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.enqueue(Fault(kind="oversized"))
    with caplog.at_level(logging.INFO):
        received, err = await stream_failure(exposed)
    got = details(err)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_RESPONSE_INVALID")
    relayed = sum(len(event.delta.content) for event in received)
    assert 0 < relayed < OVERSIZED_BYTES  # what fit reached the caller, then the stream ended
    assert all(not event.HasField("summary") for event in received)
    [line] = access_lines(caplog)
    assert (line["status"], line["reason"]) == ("UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID")
    usage = await exposed.stub.GetUsage(pb.GetUsageRequest())
    assert (usage.total.requests, usage.total.failed_requests) == (0, 1)
