"""The operator's fallback (GPT_GRPC_UPSTREAM_TRANSPORT=httpx) behaves like the default transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details
from tests.standin import Fault, Standin

HI = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="which transport")


@pytest.fixture(params=["fast", "httpx"])
async def any_transport(
    request: pytest.FixtureRequest, standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("GPT_GRPC_UPSTREAM_TRANSPORT", request.param)
    config = ServerConfig(
        port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url, request_timeout=0.5)
    )
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize(
    ("faults", "code", "reason"),
    [
        ([], "OK", None),
        ([Fault(kind="server_error")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
        ([Fault(kind="reset")] * 3, "UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
        # Answered 200, then cut: an unreadable answer, not an unreachable upstream.
        ([Fault(kind="drop_mid_stream")] * 3, "UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID"),
        ([Fault(kind="invalid_json")] * 3, "UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID"),
        ([Fault(kind="hang")] * 3, "DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT"),
        ([Fault(kind="rate_limit", retry_after=0.01)] * 3, "RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED"),
        ([Fault(kind="unauthorized")], "UNAUTHENTICATED", "UPSTREAM_AUTHENTICATION_FAILED"),
    ],
)
async def test_unary_and_stream_map_alike(
    any_transport: Gateway, standin: Standin, faults: list[Fault], code: str, reason: str | None
) -> None:
    standin.enqueue(*faults)
    try:
        reply = await any_transport.stub.ChatCompletion(HI, timeout=10)
        assert (code, reply.content) == ("OK", "Echo: which transport")
    except grpc.aio.AioRpcError as err:
        got = details(err)
        assert (got.code.name, got.reason) == (code, reason)
    standin.enqueue(*faults)
    stream = pb.StreamChatCompletionRequest.FromString(HI.SerializeToString())
    try:
        events = [e async for e in any_transport.stub.StreamChatCompletion(stream, timeout=10)]
        assert code == "OK" and "".join(e.delta.content for e in events[:-1]) == "Echo: which transport"
    except grpc.aio.AioRpcError as err:
        got = details(err)
        assert (got.code.name, got.reason) == (code, reason)
