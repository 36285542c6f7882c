"""What a caller is told when an answer is cut short or cannot be read (issue 11 items 1, 2 and 5).

Once an upstream has answered 200, an answer that ends early (the connection
dropped, or the body ended before the finish_reason) or that is not what was
asked for (an HTML page where server-sent events were expected) is the
README's "upstream body unreadable (invalid JSON, truncated stream)":
UNAVAILABLE + RetryInfo with reason UPSTREAM_RESPONSE_INVALID, and, like a
unary failure, ErrorInfo carries the upstream's `http_status` and `request_id`.
A connection that fails before any answer is UPSTREAM_UNAVAILABLE, and its
message says whether the upstream could not be reached or accepted the request
and closed without answering.
"""

from __future__ import annotations

import socket

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import Details, details, fail
from tests.standin import Fault, Standin

ATTEMPTS = 3  # fast_upstream's max_attempts
WORDS = "one two three four five six"
# A reply made of one tool call whose arguments stream in 8-character fragments.
TOOL_CALL = {"id": "call_weather_1", "name": "get_weather", "arguments": '{"city": "San Francisco", "unit": "c"}'}


def stream_request() -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message=WORDS)


async def stream_failure(gateway: Gateway) -> tuple[list[str], Details]:
    """The deltas a stream relayed before it failed, and the failure."""
    deltas: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in gateway.stub.StreamChatCompletion(stream_request(), timeout=10):
            deltas.append(event.delta.content)
    return deltas, details(info.value)


def assert_response_invalid(err: Details, standin: Standin, attempts: int) -> None:
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_RESPONSE_INVALID"), err.message
    assert err.retry_info is not None
    metadata = err.error_infos[0].metadata
    assert metadata["attempts"] == str(attempts)
    # The upstream answered 200 (with an X-Request-Id) before its answer went wrong.
    assert metadata["http_status"] == "200"
    assert standin.requests[-1].request_id
    assert metadata["request_id"] == standin.requests[-1].request_id
    assert len(standin.requests) == attempts


@pytest.mark.parametrize(
    ("fault", "retried", "relayed", "message"),
    [
        # Non-SSE garbage with HTTP 200: retried, as nothing reached the caller.
        (Fault(kind="html_ok"), True, [], "not a stream of server-sent events"),
        # The connection cut before the first delta (the role chunk only).
        (Fault(kind="drop_mid_stream", after_chunks=0), True, [], "ended before the answer was complete"),
        # The body ended cleanly but before the first delta and any finish_reason.
        (Fault(kind="truncated_sse", after_chunks=0), True, [], "ended before the answer was complete"),
        # Cut after three deltas: those reached the caller, so no retry.
        (
            Fault(kind="drop_mid_stream", after_chunks=3),
            False,
            ["Echo: ", "one ", "two "],
            "ended before the answer was complete",
        ),
        (
            Fault(kind="truncated_sse", after_chunks=3),
            False,
            ["Echo: ", "one ", "two "],
            "ended before the answer was complete",
        ),
    ],
    ids=["garbage-200", "cut-before-first-delta", "ended-before-first-delta", "cut-after-3", "ended-after-3"],
)
async def test_a_stream_cut_short_or_unreadable_is_response_invalid_with_upstream_metadata(
    gateway: Gateway, standin: Standin, fault: Fault, retried: bool, relayed: list[str], message: str
) -> None:
    standin.enqueue(*([fault] * (ATTEMPTS if retried else 1)))
    deltas, err = await stream_failure(gateway)
    assert deltas == relayed
    assert_response_invalid(err, standin, ATTEMPTS if retried else 1)
    assert message in err.message


async def test_a_stream_cut_inside_tool_call_arguments_is_response_invalid(gateway: Gateway, standin: Standin) -> None:
    # Tool calls reach the caller whole, in the summary: a cut inside their
    # arguments is invisible to it, so the gateway retries.
    standin.set_reply(tool_calls=[TOOL_CALL])
    standin.enqueue(*[Fault(kind="drop_mid_stream", after_chunks=2)] * ATTEMPTS)
    deltas, err = await stream_failure(gateway)
    assert deltas == []
    assert_response_invalid(err, standin, ATTEMPTS)
    # A retry that gets the whole answer relays the arguments exactly as they were sent.
    standin.enqueue(Fault(kind="drop_mid_stream", after_chunks=2))
    events = [e async for e in gateway.stub.StreamChatCompletion(stream_request(), timeout=10)]
    (call,) = events[-1].summary.tool_calls
    assert (call.id, call.name, call.arguments_json) == (TOOL_CALL["id"], TOOL_CALL["name"], TOOL_CALL["arguments"])
    assert events[-1].summary.attempts == 2


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(kind="html_ok"), "cannot read"),
        (Fault(kind="invalid_json"), "cannot read"),
        # Content-Length announced, half the body sent, then the connection closed.
        (Fault(kind="drop_mid_stream"), "ended before the answer was complete"),
    ],
    ids=["garbage-200", "invalid-json", "cut-mid-body"],
)
async def test_a_unary_answer_cut_short_or_unreadable_is_response_invalid(
    gateway: Gateway, standin: Standin, fault: Fault, message: str
) -> None:
    standin.enqueue(*[fault] * ATTEMPTS)
    err = details(await fail(gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message=WORDS), timeout=10)))
    assert_response_invalid(err, standin, ATTEMPTS)
    assert message in err.message


async def test_an_upstream_that_closes_before_answering_is_told_apart_from_one_not_reached(
    gateway: Gateway, standin: Standin
) -> None:
    # Accepted the connection, read the request, closed it without a word (a TCP reset).
    standin.enqueue(*[Fault(kind="reset")] * ATTEMPTS)
    closed = details(await fail(gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="hi"), timeout=10)))
    assert (closed.code, closed.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert "closed the connection before answering" in closed.message, closed.message
    assert "could not reach" not in closed.message
    assert "http_status" not in closed.error_infos[0].metadata

    # Nothing listens on this port: the upstream is never reached.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServerConfig(
        port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(f"http://127.0.0.1:{port}/v1"), retry_budget=False
    )
    unreachable = await start_gateway(config)
    try:
        err = details(
            await fail(unreachable.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="hi"), timeout=10))
        )
    finally:
        await stop_gateway(unreachable)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert "could not reach the upstream" in err.message, err.message
    assert err.error_infos[0].metadata["attempts"] == str(ATTEMPTS)
