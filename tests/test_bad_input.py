"""Bad input wholesale: whatever a caller sends, the gateway answers with a defined status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from tests.conftest import Gateway
from tests.helpers import Details, details

# --------------------------------------------------------------------------- regressions
# Found by the tests above; pinned here in-process, where they run in milliseconds.


async def _fails(call: Any) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return details(info.value)


async def test_thousands_of_invalid_fields_still_arrive_as_invalid_argument(gateway: Gateway) -> None:
    # 10,000 violations made a 430 KB status trailer; the client dropped it past its
    # 16 KiB metadata limit and saw RESOURCE_EXHAUSTED without any details.
    request = pb.ChatCompletionRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER)] * 10_000)
    err = await _fails(gateway.stub.ChatCompletion(request, timeout=10))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert err.fields[:2] == ["messages[0].content", "messages[1].content"] and len(err.fields) == 20
    assert "10000 invalid fields" in err.message and len(err.message) < 1200


async def test_schema_nested_deeper_than_can_be_sent_is_invalid_not_internal(gateway: Gateway) -> None:
    # orjson reads JSON 1024 levels deep but writes only 255: a 300-level schema was
    # accepted, then failed while the upstream request was built, as INTERNAL.
    deep = '{"a":' * 300 + "{}" + "}" * 300
    tools = pb.ChatCompletionRequest(user_message="x", tools=[pb.Tool(name="t", parameters_json=deep)])
    err = await _fails(gateway.stub.ChatCompletion(tools, timeout=10))
    assert (err.code, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["tools[0].parameters_json"])
    schema = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="s", schema_json=deep)
    fmt = pb.StreamChatCompletionRequest(user_message="x", response_format=schema)
    err = await _fails(_drain(gateway.stub.StreamChatCompletion(fmt, timeout=10)))
    assert (err.code, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["response_format.schema_json"])
    at_limit = '{"a":' * 127 + "{}" + "}" * 127  # 128 levels: still sent
    ok = pb.ChatCompletionRequest(user_message="x", tools=[pb.Tool(name="t", parameters_json=at_limit)])
    assert (await gateway.stub.ChatCompletion(ok, timeout=10)).content == "Echo: x"


async def _drain(call: Any) -> list[Any]:
    return [event async for event in call]


@pytest.mark.parametrize("method", ["ChatCompletion", "StreamChatCompletion", "CountTokens", "GetConfiguration"])
async def test_bytes_that_are_not_protobuf_are_invalid_argument(gateway: Gateway, method: str) -> None:
    # gRPC's deserializer raised DecodeError and gRPC answered UNKNOWN.
    path = f"/gptgrpc.v1.GPTService/{method}"
    for raw in (b"\x80", b"\xff\xff\xff\xff", b"\x0a\x05ab"):
        if method.startswith("Stream"):
            err = await _fails(_drain(gateway.channel.unary_stream(path)(raw, timeout=10)))
        else:
            err = await _fails(gateway.channel.unary_unary(path)(raw, timeout=10))
        assert (err.code, err.reason, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["request"])
    # The same method still takes a proper request.
    if method == "GetConfiguration":
        await gateway.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)
