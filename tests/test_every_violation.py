"""A request with several bad fields gets every one of them in its BadRequest (issue 11 item 5).

An empty message used to hide the other violations of the same request; every
check is now made before any is reported, for both chat RPCs (each request form)
and for CountTokens, and nothing reaches the upstream.
"""

from __future__ import annotations

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from tests.conftest import Gateway
from tests.helpers import details, fail
from tests.standin import Standin

BAD_ROLE = 99  # no Role has this number


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        # The original pair, its user message empty.
        (
            pb.ChatCompletionRequest(model="gpt-4o-mini", temperature=3.0, max_tokens=-5, top_p=1.5, stop=[""]),
            ["user_message", "temperature", "max_tokens", "top_p", "stop"],
        ),
        # Messages, the only one empty, and a model name that is blank.
        (
            pb.ChatCompletionRequest(
                model=" ",
                messages=[pb.ChatMessage(role=pb.ROLE_USER, content="")],
                presence_penalty=-3,
                tools=[pb.Tool(name="bad name", parameters_json="[1]")],
            ),
            ["model", "messages[0].content", "presence_penalty", "tools[0].name", "tools[0].parameters_json"],
        ),
        # An empty message, an unknown role, and enum numbers the proto does not define.
        (
            pb.ChatCompletionRequest(
                model="gpt-4o-mini",
                messages=[pb.ChatMessage(role=pb.ROLE_USER), pb.ChatMessage(role=BAD_ROLE, content="x")],  # type: ignore[arg-type]
                response_format=pb.ResponseFormat(type=77),  # type: ignore[arg-type]
                tool_choice=pb.ToolChoice(mode=55),  # type: ignore[arg-type]
            ),
            ["messages[0].content", "messages[1].role", "response_format.type", "tool_choice.mode"],
        ),
    ],
    ids=["pair", "messages", "unknown-enums"],
)
async def test_an_empty_message_and_other_bad_fields_are_all_listed(
    gateway: Gateway, standin: Standin, request_: pb.ChatCompletionRequest, fields: list[str]
) -> None:
    err = details(await fail(gateway.stub.ChatCompletion(request_)))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert sorted(err.fields) == sorted(fields)
    stream = pb.StreamChatCompletionRequest.FromString(request_.SerializeToString())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in gateway.stub.StreamChatCompletion(stream):
            pass
    assert sorted(details(info.value).fields) == sorted(fields)
    assert standin.requests == []


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        # A blank model and a message with an unknown role and a bad name.
        (
            pb.CountTokensRequest(
                model=" ",
                messages=[pb.ChatMessage(role=BAD_ROLE, content="x", name="no spaces allowed")],  # type: ignore[arg-type]
            ),
            ["model", "messages[0].role", "messages[0].name"],
        ),
        # Both text and messages, and the messages bad too.
        (
            pb.CountTokensRequest(text="hello", messages=[pb.ChatMessage(role=BAD_ROLE, content="x")]),  # type: ignore[arg-type]
            ["text", "messages[0].role"],
        ),
    ],
    ids=["blank-model", "text-and-messages"],
)
async def test_count_tokens_lists_every_violation(
    gateway: Gateway, request_: pb.CountTokensRequest, fields: list[str]
) -> None:
    err = details(await fail(gateway.stub.CountTokens(request_)))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert sorted(err.fields) == sorted(fields)
