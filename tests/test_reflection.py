"""Server reflection (issue 11 item 6): both versions, and every symbol a tool asks for.

Python's grpcio-reflection serves only `grpc.reflection.v1alpha` and resolves
neither method names nor `Enum.VALUE` names (grpc/grpc#34743), which is why
grpcurl could not describe a method and ghz could not call through reflection.
The requests below are what those tools send; tests/test_grpc_tools.py runs the
tools themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.conftest import Gateway

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
GATEWAY_FILE = "gptgrpc/v1/gateway.proto"
# Where the Python packages register these two (not grpc/health/..., grpc/reflection/...).
HEALTH_FILE = "grpc_health/v1/health.proto"
V1ALPHA_FILE = "grpc_reflection/v1alpha/reflection.proto"


async def ask(
    gateway: Gateway, version: str, requests: Sequence[rpb.ServerReflectionRequest]
) -> list[rpb.ServerReflectionResponse]:
    """One reflection stream; v1 and v1alpha messages are the same on the wire."""
    method = gateway.channel.stream_stream(
        f"/{version}/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return [response async for response in method(iter(requests), timeout=10)]


def files_of(response: rpb.ServerReflectionResponse) -> list[str]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response.error_response
    out = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        out.append(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
    return out


@pytest.mark.parametrize("version", [V1, V1ALPHA])
async def test_both_versions_list_every_service(gateway: Gateway, version: str) -> None:
    [reply] = await ask(gateway, version, [rpb.ServerReflectionRequest(list_services="")])
    names = {s.name for s in reply.list_services_response.service}
    assert names == {"gptgrpc.v1.GPTService", "grpc.health.v1.Health", V1, V1ALPHA}


SYMBOLS = [
    ("gptgrpc.v1.GPTService", GATEWAY_FILE),
    ("gptgrpc.v1.GPTService.CountTokens", GATEWAY_FILE),  # a method: NOT_FOUND before
    ("gptgrpc.v1.GPTService.StreamChatCompletion", GATEWAY_FILE),
    ("gptgrpc.v1.ChatCompletionRequest", GATEWAY_FILE),
    ("gptgrpc.v1.ChatMessage.content", GATEWAY_FILE),
    ("gptgrpc.v1.Role", GATEWAY_FILE),
    ("gptgrpc.v1.ROLE_USER", GATEWAY_FILE),  # an enum value's full name (scoped beside its enum)
    ("gptgrpc.v1.Role.ROLE_USER", GATEWAY_FILE),  # the same value qualified by its enum: NOT_FOUND before
    ("grpc.health.v1.Health.Check", HEALTH_FILE),
    ("grpc.health.v1.HealthCheckResponse.SERVING", HEALTH_FILE),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING", HEALTH_FILE),
    (V1, "grpc/reflection/v1/reflection.proto"),
    (f"{V1}.ServerReflectionInfo", "grpc/reflection/v1/reflection.proto"),
    ("grpc.reflection.v1.ServerReflectionRequest", "grpc/reflection/v1/reflection.proto"),
    (f"{V1ALPHA}.ServerReflectionInfo", V1ALPHA_FILE),
]


@pytest.mark.parametrize("version", [V1, V1ALPHA])
async def test_symbols_resolve_to_their_file(gateway: Gateway, version: str) -> None:
    requests = [rpb.ServerReflectionRequest(file_containing_symbol=symbol) for symbol, _ in SYMBOLS]
    replies = await ask(gateway, version, requests)
    found = {r.original_request.file_containing_symbol: r for r in replies}
    wrong = []
    for symbol, file in SYMBOLS:
        reply = found[symbol]
        if reply.WhichOneof("message_response") != "file_descriptor_response" or files_of(reply)[0] != file:
            wrong.append(symbol)
    assert not wrong, f"not resolved to their file: {wrong}"


async def test_unknown_symbols_are_not_found(gateway: Gateway) -> None:
    unknown = ["gptgrpc.v1.Nope", "gptgrpc.v1.GPTService.Nope", "gptgrpc.v1.Role.NOPE", "", ".", "gptgrpc"]
    replies = await ask(gateway, V1, [rpb.ServerReflectionRequest(file_containing_symbol=s) for s in unknown])
    assert [r.error_response.error_code for r in replies] == [grpc.StatusCode.NOT_FOUND.value[0]] * len(unknown)


async def test_the_v1_file_has_the_v1alpha_shape(gateway: Gateway) -> None:
    """The v1 descriptor served is v1alpha's under the v1 package: same messages, fields and numbers."""
    [v1, v1alpha] = await ask(
        gateway,
        V1,
        [
            rpb.ServerReflectionRequest(file_by_filename="grpc/reflection/v1/reflection.proto"),
            rpb.ServerReflectionRequest(file_by_filename=V1ALPHA_FILE),
        ],
    )
    new = descriptor_pb2.FileDescriptorProto.FromString(v1.file_descriptor_response.file_descriptor_proto[0])
    old = descriptor_pb2.FileDescriptorProto.FromString(v1alpha.file_descriptor_response.file_descriptor_proto[0])
    assert (new.package, old.package) == ("grpc.reflection.v1", "grpc.reflection.v1alpha")
    assert [s.name for s in new.service] == ["ServerReflection"]
    shape = [(m.name, [(f.name, f.number, f.type, f.label) for f in m.field]) for m in new.message_type]
    assert shape == [(m.name, [(f.name, f.number, f.type, f.label) for f in m.field]) for m in old.message_type]
    refs = [f.type_name for m in new.message_type for f in m.field if f.type_name]
    assert refs and all(r.startswith(".grpc.reflection.v1.") for r in refs)
    method = new.service[0].method[0]
    assert (method.input_type, method.output_type, method.client_streaming, method.server_streaming) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
        True,
        True,
    )


async def test_a_reflection_client_finds_a_method_and_its_messages(gateway: Gateway) -> None:
    """What a dynamic client does: a pool fed by reflection alone describes CountTokens."""

    def describe() -> tuple[str, str, list[str]]:
        with grpc.insecure_channel(gateway.target) as channel:
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            method = pool.FindMethodByName("gptgrpc.v1.GPTService.CountTokens")
            return method.input_type.full_name, method.output_type.full_name, list(method.input_type.fields_by_name)

    # A blocking client: on a thread, so that the server's loop keeps serving it.
    request, response, fields = await asyncio.to_thread(describe)
    assert (request, response) == ("gptgrpc.v1.CountTokensRequest", "gptgrpc.v1.CountTokensResponse")
    assert {"text", "messages", "model"} <= set(fields)
