"""The Python client package (gpt_grpc_client) against a fake GPTService servicer.

The fake is a synchronous servicer hosted by pytest-grpc (real-server mode, on a loopback
port); it records every request with its metadata, and can fail with rich google.rpc.Status
errors or block until the call is cancelled.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2
from gptgrpc.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_status import rpc_status

import gpt_grpc_client
from gpt_grpc.server.app import ServerConfig
from gpt_grpc_client import AsyncClient, Client, GatewayError, cli
from tests.conftest import ADMIN_TOKEN as GATEWAY_ADMIN_TOKEN
from tests.conftest import fast_upstream, start_gateway, stop_gateway
from tests.standin import Standin

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "clients" / "python"
ADMIN_TOKEN = "admin-token-0123456789-abcdefghijklmnopqrstuv"
CLIENT_TOKEN = "gptk_client-token-abcdef"
CLIENT_TOKEN_ISSUED = "gptk_ab12-issued-token-987654"
API_KEY = "sk-proj-SECRETSECRETSECRET1234"

# pytest-grpc serves with this many worker threads (a stream blocked until cancelled
# occupies one while other calls go on).
grpc_max_workers = 8


# --------------------------------------------------------------------------- the fake


@dataclass
class Recorded:
    method: str
    request: message.Message
    metadata: dict[str, str | bytes]
    pairs: tuple[tuple[str, str | bytes], ...] = ()

    @property
    def authorizations(self) -> list[str | bytes]:
        """Every ``authorization`` entry the call carried (the dict keeps only one)."""
        return [value for key, value in self.pairs if key == "authorization"]


class FakeGateway(gateway_pb2_grpc.GPTServiceServicer):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: list[Recorded] = []
        self.error: status_pb2.Status | None = None
        self.deltas = ["Hel", "lo", "", "!"]
        self.stream_error: status_pb2.Status | None = None  # after the deltas
        self.block = False  # block (after the deltas) until the call ends
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def _record(self, method: str, request: message.Message, context: grpc.ServicerContext) -> None:
        pairs = tuple(context.invocation_metadata())
        self.calls.append(Recorded(method, request, dict(pairs), pairs))
        if self.block:
            # A blocked call never completes by itself: whenever it ends, it was cancelled.
            # (The server may see the cancellation before it resumes the handler's generator,
            # so this is registered before anything is sent.)
            context.add_callback(self.cancelled.set)
            self.started.set()
        if self.error is not None:
            context.abort_with_status(rpc_status.to_status(self.error))

    @staticmethod
    def _block(context: grpc.ServicerContext) -> None:
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(30)

    def last(self, method: str) -> Recorded:
        found = [c for c in self.calls if c.method == method]
        assert found, f"no {method} call recorded: {[c.method for c in self.calls]}"
        return found[-1]

    def ChatCompletion(
        self, request: gateway_pb2.ChatCompletionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ChatCompletionResponse:
        self._record("ChatCompletion", request, context)
        if self.block:
            self._block(context)
        return gateway_pb2.ChatCompletionResponse(
            content=f"echo: {request.user_message or request.messages[-1].content}",
            finish_reason=gateway_pb2.FINISH_REASON_STOP,
            model="gpt-4o-mini-2024-07-18",
            id="chatcmpl-1",
            usage=gateway_pb2.Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
            cost_usd=0.000123,
            attempts=1,
        )

    def StreamChatCompletion(
        self, request: gateway_pb2.StreamChatCompletionRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.StreamChatCompletionResponse]:
        self._record("StreamChatCompletion", request, context)
        for text in self.deltas:
            yield gateway_pb2.StreamChatCompletionResponse(delta=gateway_pb2.ChatCompletionDelta(content=text))
        if self.block:
            self._block(context)
            return
        if self.stream_error is not None:
            context.abort_with_status(rpc_status.to_status(self.stream_error))
        yield gateway_pb2.StreamChatCompletionResponse(
            summary=gateway_pb2.ChatCompletionSummary(
                finish_reason=gateway_pb2.FINISH_REASON_STOP,
                model="gpt-4o-mini-2024-07-18",
                id="chatcmpl-2",
                usage=gateway_pb2.Usage(prompt_tokens=7, completion_tokens=4, total_tokens=11),
                cost_usd=0.00042,
                attempts=2,
            )
        )

    def CountTokens(
        self, request: gateway_pb2.CountTokensRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CountTokensResponse:
        self._record("CountTokens", request, context)
        count = len(request.text.split()) + sum(len(m.content.split()) + 3 for m in request.messages)
        return gateway_pb2.CountTokensResponse(token_count=count, encoding="o200k_base")

    def _configuration(self) -> gateway_pb2.Configuration:
        return gateway_pb2.Configuration(
            api_key_masked="sk-...1234",
            api_key_set=True,
            endpoint="https://api.openai.com/v1",
            default_model="gpt-4o-mini",
            request_timeout=duration_pb2.Duration(seconds=30),
            retry_policy=gateway_pb2.RetryPolicy(max_attempts=3),
            generation=7,
        )

    def Configure(
        self, request: gateway_pb2.ConfigureRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ConfigureResponse:
        self._record("Configure", request, context)
        return gateway_pb2.ConfigureResponse(configuration=self._configuration())

    def GetConfiguration(
        self, request: gateway_pb2.GetConfigurationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetConfigurationResponse:
        self._record("GetConfiguration", request, context)
        return gateway_pb2.GetConfigurationResponse(configuration=self._configuration())

    def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        self._record("ListModels", request, context)
        return gateway_pb2.ListModelsResponse(
            models=[
                gateway_pb2.ModelInfo(
                    id="gpt-4o-mini",
                    encoding="o200k_base",
                    context_window=128000,
                    max_output_tokens=16384,
                    input_usd_per_million=0.15,
                    cached_input_usd_per_million=0.075,
                    output_usd_per_million=0.6,
                    price_source="genai-prices 0.0.1",
                ),
                gateway_pb2.ModelInfo(id="o3-mini", encoding="o200k_base", reasoning=True),
            ]
        )

    def ListUpstreams(
        self, request: gateway_pb2.ListUpstreamsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListUpstreamsResponse:
        self._record("ListUpstreams", request, context)
        return gateway_pb2.ListUpstreamsResponse(
            upstreams=[
                gateway_pb2.UpstreamStatus(
                    name="openai", kind=gateway_pb2.UPSTREAM_KIND_OPENAI, base_url="https://api.openai.com/v1",
                    models=["gpt-4o*"], priority=1, weight=1, state=gateway_pb2.BREAKER_STATE_OPEN, in_flight=2,
                    error_rate=0.5, recent_attempts=40, retry_in=duration_pb2.Duration(seconds=7),
                ),
                gateway_pb2.UpstreamStatus(
                    name="azure-east", kind=gateway_pb2.UPSTREAM_KIND_AZURE, base_url="https://r.openai.azure.com",
                    models=["gpt-4o"], priority=2, weight=1, state=gateway_pb2.BREAKER_STATE_CLOSED,
                ),
            ],
            fallbacks=[gateway_pb2.FallbackModels(model="gpt-4o", fallbacks=["gpt-4o-mini"])],
        )  # fmt: skip

    def GetUsage(
        self, request: gateway_pb2.GetUsageRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetUsageResponse:
        self._record("GetUsage", request, context)
        usage = gateway_pb2.ModelUsage(
            model="gpt-4o-mini", requests=3, failed_requests=1, prompt_tokens=30, completion_tokens=12
        )
        usage.cost_usd = 0.0125
        total = gateway_pb2.ModelUsage()
        total.CopyFrom(usage)
        total.model = ""
        response = gateway_pb2.GetUsageResponse(models=[usage], total=total, client=request.client)
        response.since.FromSeconds(1_700_000_000)
        return response

    def _client(self, name: str, limits: gateway_pb2.ClientLimits) -> gateway_pb2.Client:
        client = gateway_pb2.Client(name=name, limits=limits, token_prefix="gptk_ab12", period_spend_usd=0.25)
        client.create_time.FromSeconds(1_700_000_000)
        return client

    def CreateClient(
        self, request: gateway_pb2.CreateClientRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CreateClientResponse:
        self._record("CreateClient", request, context)
        return gateway_pb2.CreateClientResponse(
            client=self._client(request.name, request.limits), token=CLIENT_TOKEN_ISSUED
        )

    def ListClients(
        self, request: gateway_pb2.ListClientsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListClientsResponse:
        self._record("ListClients", request, context)
        limited = gateway_pb2.ClientLimits(
            requests_per_minute=60, budget_usd=5, budget_period=gateway_pb2.BUDGET_PERIOD_DAY
        )
        clients = [self._client("billing", limited), self._client("search", gateway_pb2.ClientLimits())]
        if request.include_revoked:
            gone = self._client("zz-old", gateway_pb2.ClientLimits(tokens_per_minute=1000))
            gone.revoke_time.FromSeconds(1_700_000_600)
            clients.append(gone)
        return gateway_pb2.ListClientsResponse(clients=clients)

    def UpdateClient(
        self, request: gateway_pb2.UpdateClientRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.UpdateClientResponse:
        self._record("UpdateClient", request, context)
        return gateway_pb2.UpdateClientResponse(client=self._client(request.name, request.limits))

    def RevokeClient(
        self, request: gateway_pb2.RevokeClientRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RevokeClientResponse:
        self._record("RevokeClient", request, context)
        client = self._client(request.name, gateway_pb2.ClientLimits())
        client.revoke_time.FromSeconds(1_700_000_600)
        return gateway_pb2.RevokeClientResponse(client=client)

    # -- conversations: canned answers, for what the client sends ---------------------------

    def CreateConversation(
        self, request: gateway_pb2.CreateConversationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CreateConversationResponse:
        self._record("CreateConversation", request, context)
        return gateway_pb2.CreateConversationResponse(conversation=gateway_pb2.Conversation(id="conv_" + "a" * 32))

    def Converse(
        self, request: gateway_pb2.ConverseRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ConverseResponse:
        self._record("Converse", request, context)
        return gateway_pb2.ConverseResponse(content=f"echo: {request.user_message}", message_count=2)

    def StreamConverse(
        self, request: gateway_pb2.StreamConverseRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.StreamConverseResponse]:
        self._record("StreamConverse", request, context)
        for text in self.deltas:
            yield gateway_pb2.StreamConverseResponse(delta=gateway_pb2.ChatCompletionDelta(content=text))
        yield gateway_pb2.StreamConverseResponse(summary=gateway_pb2.ConverseSummary(message_count=2))

    def GetConversation(
        self, request: gateway_pb2.GetConversationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetConversationResponse:
        self._record("GetConversation", request, context)
        return gateway_pb2.GetConversationResponse(conversation=gateway_pb2.Conversation(id=request.conversation_id))

    def ListConversations(
        self, request: gateway_pb2.ListConversationsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListConversationsResponse:
        self._record("ListConversations", request, context)
        return gateway_pb2.ListConversationsResponse()

    def DeleteConversation(
        self, request: gateway_pb2.DeleteConversationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteConversationResponse:
        self._record("DeleteConversation", request, context)
        return gateway_pb2.DeleteConversationResponse()


def rich_status(
    code: grpc.StatusCode,
    message_: str,
    reason: str,
    *,
    metadata: dict[str, str] | None = None,
    retry_delay: float | None = None,
    violations: tuple[tuple[str, str], ...] = (),
) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message_)
    details: list[message.Message] = [
        error_details_pb2.ErrorInfo(reason=reason, domain="gpt-grpc", metadata=metadata or {})
    ]
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                ]
            )
        )
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


RATE_LIMITED = rich_status(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    "the upstream kept rate limiting",
    "UPSTREAM_RATE_LIMITED",
    metadata={"http_status": "429", "request_id": "req-42"},
    retry_delay=2.5,
)
BAD_REQUEST = rich_status(
    grpc.StatusCode.INVALID_ARGUMENT,
    "invalid request",
    "INVALID_REQUEST",
    violations=(("temperature", "must be between 0 and 2"), ("max_tokens", "must be at least 1")),
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def grpc_addr() -> str:
    """A free IPv4 loopback port (overrides pytest-grpc's, which leaks its socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[[Any, grpc.Server], None]:
    return gateway_pb2_grpc.add_GPTServiceServicer_to_server  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def grpc_servicer() -> FakeGateway:
    return FakeGateway()


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type:
    return gateway_pb2_grpc.GPTServiceStub


@pytest.fixture
def fake(grpc_server: grpc.Server, grpc_servicer: FakeGateway) -> Iterator[FakeGateway]:
    grpc_servicer.reset()
    yield grpc_servicer
    grpc_servicer.reset()


@pytest.fixture
def client(fake: FakeGateway, grpc_addr: str) -> Iterator[Client]:
    with Client(grpc_addr, admin_token=ADMIN_TOKEN, timeout=10) as c:
        yield c


@pytest.fixture
def free_addr() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------- sync client


def test_chat_completion_builds_the_request(client: Client, fake: FakeGateway) -> None:
    answer = client.chat_completion(
        model="gpt-4o", system_message="Be brief.", user_message="Hi!", top_p=0.5, stop="END", seed=7
    )
    assert answer == "echo: Hi!"
    call = fake.last("ChatCompletion")
    request = call.request
    assert isinstance(request, gateway_pb2.ChatCompletionRequest)
    assert request.model == "gpt-4o"
    assert request.system_message == "Be brief."
    assert request.user_message == "Hi!"
    assert request.HasField("temperature") and request.temperature == pytest.approx(0.7)
    assert not request.HasField("max_tokens")
    assert request.HasField("top_p") and request.top_p == pytest.approx(0.5)
    assert list(request.stop) == ["END"]
    assert request.seed == 7
    assert not request.messages
    assert "authorization" not in call.metadata


def test_chat_completion_defaults_match_the_original_module(client: Client, fake: FakeGateway) -> None:
    assert client.chat_completion(user_message="x") == "echo: x"
    request = fake.last("ChatCompletion").request
    assert isinstance(request, gateway_pb2.ChatCompletionRequest)
    assert request.model == "gpt-4o-mini"
    assert request.temperature == pytest.approx(0.7)

    client.chat_completion("gpt-4o", "sys", "user", None, 64)  # positional, like the original
    request = fake.last("ChatCompletion").request
    assert isinstance(request, gateway_pb2.ChatCompletionRequest)
    assert (request.model, request.system_message, request.user_message) == ("gpt-4o", "sys", "user")
    assert not request.HasField("temperature")
    assert request.max_tokens == 64


def test_chat_completion_with_messages(client: Client, fake: FakeGateway) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "No emojis."},
        {"role": "user", "content": "What is 2+2?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "name": "add", "arguments_json": '{"a": 2, "b": 2}'},
                {"id": "call_2", "type": "function", "function": {"name": "mul", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        gateway_pb2.ChatMessage(role=gateway_pb2.ROLE_USER, content="And 3+3?"),
        {"role": "ROLE_USER", "content": "thanks"},
    ]
    answer = client.chat_completion(messages=messages, response_format={"type": "RESPONSE_FORMAT_TYPE_JSON_OBJECT"})
    assert answer == "echo: thanks"
    request = fake.last("ChatCompletion").request
    assert isinstance(request, gateway_pb2.ChatCompletionRequest)
    assert [m.role for m in request.messages] == [
        gateway_pb2.ROLE_SYSTEM,
        gateway_pb2.ROLE_DEVELOPER,
        gateway_pb2.ROLE_USER,
        gateway_pb2.ROLE_ASSISTANT,
        gateway_pb2.ROLE_TOOL,
        gateway_pb2.ROLE_USER,
        gateway_pb2.ROLE_USER,
    ]
    assert request.messages[2].name == "alice"
    assert not request.messages[0].HasField("name")
    assert request.messages[3].content == ""
    assert [(t.id, t.name, t.arguments_json) for t in request.messages[3].tool_calls] == [
        ("call_1", "add", '{"a": 2, "b": 2}'),
        ("call_2", "mul", "{}"),
    ]
    assert request.messages[4].tool_call_id == "call_1"
    assert request.response_format.type == gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    assert request.system_message == "" and request.user_message == ""


def test_chat_completion_rejects_bad_arguments_before_sending(client: Client, fake: FakeGateway) -> None:
    with pytest.raises(ValueError, match="unknown chat message role"):
        client.chat_completion(messages=[{"role": "robot", "content": "beep"}])
    with pytest.raises(ValueError, match="unknown chat message keys"):
        client.chat_completion(messages=[{"role": "user", "text": "typo"}])
    with pytest.raises(ValueError, match="not both"):
        client.chat_completion(user_message="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(TypeError, match="not a ChatCompletionRequest field"):
        client.chat_completion(user_message="a", top_k=3)
    assert fake.calls == []


def test_chat_returns_the_whole_response(client: Client, fake: FakeGateway) -> None:
    response = client.chat(user_message="hello", max_tokens=10)
    assert isinstance(response, gateway_pb2.ChatCompletionResponse)
    assert response.content == "echo: hello"
    assert response.usage.total_tokens == 8
    assert response.cost_usd == pytest.approx(0.000123)
    request = fake.last("ChatCompletion").request
    assert isinstance(request, gateway_pb2.ChatCompletionRequest)
    assert request.model == "gpt-4o-mini" and request.max_tokens == 10

    prepared = gateway_pb2.ChatCompletionRequest(model="m", user_message="prepared")
    assert client.chat(prepared).content == "echo: prepared"
    assert fake.last("ChatCompletion").request == prepared
    with pytest.raises(TypeError, match="not both"):
        client.chat(prepared, model="other")


def test_stream_chat_yields_deltas_then_summary(client: Client, fake: FakeGateway) -> None:
    stream = client.stream_chat(system_message="sys", user_message="hi", seed=3)
    assert stream.summary is None
    deltas = list(stream)
    assert deltas == ["Hel", "lo", "!"]  # empty deltas are skipped
    assert stream.text == "Hello!"
    assert stream.done and not stream.cancelled
    assert stream.summary is not None
    assert stream.summary.usage.total_tokens == 11
    assert stream.summary.attempts == 2
    assert stream.summary.finish_reason == gateway_pb2.FINISH_REASON_STOP
    request = fake.last("StreamChatCompletion").request
    assert isinstance(request, gateway_pb2.StreamChatCompletionRequest)
    assert (request.system_message, request.user_message, request.seed) == ("sys", "hi", 3)
    assert request.temperature == pytest.approx(0.7)
    assert "authorization" not in fake.last("StreamChatCompletion").metadata

    # A ChatCompletionRequest is accepted as well (same fields).
    stream = client.stream_chat(gateway_pb2.ChatCompletionRequest(model="m", user_message="x"))
    assert stream.collect() == "Hello!"
    assert fake.last("StreamChatCompletion").request == gateway_pb2.StreamChatCompletionRequest(
        model="m", user_message="x"
    )


def test_stream_chat_error_after_deltas(client: Client, fake: FakeGateway) -> None:
    fake.stream_error = rich_status(grpc.StatusCode.UNAVAILABLE, "upstream gone", "UPSTREAM_UNAVAILABLE")
    stream = client.stream_chat(user_message="hi")
    received = []
    with pytest.raises(GatewayError) as caught:
        for delta in stream:
            received.append(delta)
    assert received == ["Hel", "lo", "!"]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    assert stream.summary is None and stream.done


def test_stream_chat_stopping_early_cancels_the_call(client: Client, fake: FakeGateway) -> None:
    fake.block = True
    with client.stream_chat(user_message="long story") as stream:
        for delta in stream:
            assert delta == "Hel"
            break
    assert fake.cancelled.wait(10), "the server never saw the call cancelled"
    assert stream.cancelled and stream.summary is None

    fake.reset()
    fake.block = True
    stream = client.stream_chat(user_message="again")
    assert next(stream) == "Hel"
    assert stream.cancel() is True
    assert stream.cancel() is False
    assert list(stream) == []  # cancelled by us: the iteration just ends
    assert fake.cancelled.wait(10)


def test_count_tokens(client: Client, fake: FakeGateway) -> None:
    assert client.count_tokens("one two three") == 3
    request = fake.last("CountTokens").request
    assert request == gateway_pb2.CountTokensRequest(text="one two three", model="gpt-4o-mini")

    detailed = client.count_tokens_detailed("a b", model="gpt-4o")
    assert (detailed.token_count, detailed.encoding) == (2, "o200k_base")

    assert client.count_tokens(messages=[{"role": "user", "content": "hi there"}], model="gpt-4o") == 5
    request = fake.last("CountTokens").request
    assert isinstance(request, gateway_pb2.CountTokensRequest)
    assert request.text == "" and request.model == "gpt-4o"
    assert request.messages[0] == gateway_pb2.ChatMessage(role=gateway_pb2.ROLE_USER, content="hi there")
    with pytest.raises(ValueError, match="not both"):
        client.count_tokens("x", messages=[{"role": "user", "content": "y"}])


def test_configure_sends_only_the_set_fields_and_the_admin_token(client: Client, fake: FakeGateway) -> None:
    config = client.configure(api_key=API_KEY, request_timeout=12.5, max_attempts=4, max_backoff=8)
    assert isinstance(config, gateway_pb2.Configuration)
    assert config.api_key_masked == "sk-...1234" and config.generation == 7
    call = fake.last("Configure")
    request = call.request
    assert isinstance(request, gateway_pb2.ConfigureRequest)
    assert request.api_key == API_KEY
    for name in ("endpoint", "organization", "project", "default_model"):
        assert not request.HasField(name)  # type: ignore[arg-type]
    assert request.request_timeout == duration_pb2.Duration(seconds=12, nanos=500_000_000)
    assert request.retry_policy.max_attempts == 4
    assert not request.retry_policy.HasField("initial_backoff")
    assert request.retry_policy.max_backoff == duration_pb2.Duration(seconds=8)
    assert call.metadata["authorization"] == f"Bearer {ADMIN_TOKEN}"

    client.configure(organization="", endpoint="http://127.0.0.1:9/v1")
    request = fake.last("Configure").request
    assert isinstance(request, gateway_pb2.ConfigureRequest)
    assert request.HasField("organization") and request.organization == ""
    assert request.endpoint == "http://127.0.0.1:9/v1"
    assert not request.HasField("api_key") and not request.HasField("retry_policy")

    with pytest.raises(ValueError, match="finite"):
        client.configure(request_timeout=float("nan"))


def test_admin_token_only_on_configure(client: Client, fake: FakeGateway, grpc_addr: str) -> None:
    client.chat_completion(user_message="x")
    client.count_tokens("x")
    client.get_configuration()
    client.list_models()
    client.get_usage()
    list(client.stream_chat(user_message="x"))
    client.configure(default_model="gpt-4o")
    for call in fake.calls:
        if call.method == "Configure":
            assert call.metadata["authorization"] == f"Bearer {ADMIN_TOKEN}"
        else:
            assert "authorization" not in call.metadata, call.method
            assert not any(ADMIN_TOKEN in str(v) for v in call.metadata.values())
    assert ADMIN_TOKEN not in repr(client)
    assert ADMIN_TOKEN not in str(client)

    with Client(grpc_addr, metadata=[("x-tenant", "t1")]) as anonymous:
        anonymous.configure(default_model="gpt-4o")
    call = fake.last("Configure")
    assert "authorization" not in call.metadata
    assert call.metadata["x-tenant"] == "t1"
    with pytest.raises(ValueError, match="admin_token"):
        Client(grpc_addr, metadata=[("authorization", "Bearer x")])


ADMIN_METHODS = {"Configure", "CreateClient", "ListClients", "UpdateClient", "RevokeClient"}
ALL_METHODS = set(gateway_pb2.DESCRIPTOR.services_by_name["GPTService"].methods_by_name)


def check_token_routing(calls: list[Recorded], token: str, admin_token: str) -> None:
    """Every RPC was called; each call carried exactly the one token of its kind."""
    assert {c.method for c in calls} == ALL_METHODS
    for call in calls:
        want, other = (admin_token, token) if call.method in ADMIN_METHODS else (token, admin_token)
        assert call.authorizations == [f"Bearer {want}"], call.method
        assert not any(other in str(v) for _, v in call.pairs), call.method


def test_client_token_on_data_plane_admin_token_on_admin_calls(fake: FakeGateway, grpc_addr: str) -> None:
    with Client(grpc_addr, token=CLIENT_TOKEN, admin_token=ADMIN_TOKEN, timeout=10) as both:
        both.chat_completion(user_message="x")
        assert both.stream_chat(user_message="x").collect() == "Hello!"
        both.count_tokens("x")
        both.get_configuration()
        both.list_models()
        both.list_upstreams()
        both.get_usage()
        both.configure(default_model="gpt-4o")
        both.create_client("a")
        both.list_clients()
        both.update_client("a")
        both.revoke_client("a")
        conversation = both.create_conversation(system_message="Be brief.", trimming_policy="summarize")
        assert both.converse(conversation.id, "hi", max_tokens=5).content == "echo: hi"
        assert both.stream_converse(conversation.id, "hi").collect() == "Hello!"
        both.get_conversation(conversation.id)
        both.list_conversations(page_size=5)
        both.delete_conversation(conversation.id)
        for text in (repr(both), str(both)):
            assert CLIENT_TOKEN not in text and ADMIN_TOKEN not in text
    check_token_routing(fake.calls, CLIENT_TOKEN, ADMIN_TOKEN)
    created = fake.last("CreateConversation").request
    assert created == gateway_pb2.CreateConversationRequest(
        system_message="Be brief.", trimming_policy=gateway_pb2.SUMMARIZE
    )
    assert fake.last("Converse").request == gateway_pb2.ConverseRequest(
        conversation_id=conversation.id, user_message="hi", max_tokens=5
    )
    # Everyone's conversations: the admin token on a data-plane call, when asked for.
    fake.reset()
    with Client(grpc_addr, token=CLIENT_TOKEN, admin_token=ADMIN_TOKEN, timeout=10) as both:
        both.list_conversations(admin=True)
        both.delete_conversation(conversation.id, admin=True)
    assert [c.authorizations for c in fake.calls] == [[f"Bearer {ADMIN_TOKEN}"]] * 2

    fake.reset()
    with Client(grpc_addr, token=CLIENT_TOKEN, timeout=10) as only_client:
        only_client.count_tokens("x")
        only_client.list_clients()
    assert fake.last("CountTokens").authorizations == [f"Bearer {CLIENT_TOKEN}"]
    assert fake.last("ListClients").authorizations == []  # a client token is never sent to an admin RPC


def test_tokens_are_checked_before_sending(fake: FakeGateway, grpc_addr: str) -> None:
    for bad in (CLIENT_TOKEN + "\n", " " + CLIENT_TOKEN, "tok en", "jeton-\u00e9"):
        with pytest.raises(ValueError, match="printable ASCII"):
            Client(grpc_addr, token=bad)
        with pytest.raises(ValueError, match="printable ASCII"):
            AsyncClient(grpc_addr, admin_token=bad)
    with pytest.raises(TypeError, match="token must be a str"):
        Client(grpc_addr, token=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token"):
        Client(grpc_addr, metadata=[("Authorization", f"Bearer {CLIENT_TOKEN}")])
    with Client(grpc_addr, token="", admin_token="", timeout=10) as empty:  # "" means none
        empty.count_tokens("x")
        empty.configure()
    assert all(c.authorizations == [] for c in fake.calls)


def test_client_registry_methods(client: Client, fake: FakeGateway) -> None:
    created = client.create_client("billing", requests_per_minute=60, budget_usd=5, budget_period="day")
    assert isinstance(created, gateway_pb2.CreateClientResponse)
    assert created.token == CLIENT_TOKEN_ISSUED and created.client.name == "billing"
    request = fake.last("CreateClient").request
    assert isinstance(request, gateway_pb2.CreateClientRequest)
    assert request.name == "billing"
    assert request.limits == gateway_pb2.ClientLimits(
        requests_per_minute=60, budget_usd=5.0, budget_period=gateway_pb2.BUDGET_PERIOD_DAY
    )
    assert not request.limits.HasField("tokens_per_minute")  # unset: no limit

    client.create_client("plain")
    request = fake.last("CreateClient").request
    assert isinstance(request, gateway_pb2.CreateClientRequest)
    assert request.limits == gateway_pb2.ClientLimits()

    updated = client.update_client(
        "billing", tokens_per_minute=1000, budget_usd=100, budget_period="BUDGET_PERIOD_MONTH"
    )
    assert isinstance(updated, gateway_pb2.Client)
    assert updated.limits.tokens_per_minute == 1000 and not updated.limits.HasField("requests_per_minute")
    assert updated.limits.budget_period == gateway_pb2.BUDGET_PERIOD_MONTH
    client.update_client("billing", budget_usd=1, budget_period=gateway_pb2.BUDGET_PERIOD_DAY)
    request = fake.last("UpdateClient").request
    assert isinstance(request, gateway_pb2.UpdateClientRequest)
    assert request.limits.budget_period == gateway_pb2.BUDGET_PERIOD_DAY

    assert [c.name for c in client.list_clients()] == ["billing", "search"]
    listed = fake.last("ListClients").request
    assert isinstance(listed, gateway_pb2.ListClientsRequest) and not listed.include_revoked
    assert [c.name for c in client.list_clients(include_revoked=True)] == ["billing", "search", "zz-old"]

    revoked = client.revoke_client("billing")
    assert revoked.name == "billing" and revoked.HasField("revoke_time")
    assert fake.last("RevokeClient").request == gateway_pb2.RevokeClientRequest(name="billing")

    assert client.get_usage("billing").client == "billing"
    assert fake.last("GetUsage").request == gateway_pb2.GetUsageRequest(client="billing")
    client.get_usage()
    assert fake.last("GetUsage").request == gateway_pb2.GetUsageRequest()

    calls = len(fake.calls)
    for period in ("week", 7, True):
        with pytest.raises(ValueError, match="budget period"):
            client.create_client("x", budget_usd=1, budget_period=period)  # type: ignore[arg-type]
    assert len(fake.calls) == calls


def test_quota_failure_is_decoded(client: Client, fake: FakeGateway) -> None:
    status = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "budget used up", "CLIENT_BUDGET_EXCEEDED")
    status.details.add().Pack(
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject="client:billing", description="daily budget used up")
            ]
        )
    )
    fake.error = status
    with pytest.raises(GatewayError) as caught:
        client.chat_completion(user_message="x")
    err = caught.value
    assert err.reason == "CLIENT_BUDGET_EXCEEDED"
    assert err.quota_violations == [("client:billing", "daily budget used up")]
    assert not err.retryable
    assert pickle.loads(pickle.dumps(err)).quota_violations == err.quota_violations


def test_read_only_methods(client: Client, fake: FakeGateway) -> None:
    config = client.get_configuration()
    assert config.endpoint == "https://api.openai.com/v1"
    models = client.list_models()
    assert [m.id for m in models.models] == ["gpt-4o-mini", "o3-mini"]
    usage = client.get_usage()
    assert usage.total.requests == 3 and usage.models[0].model == "gpt-4o-mini"
    assert [c.method for c in fake.calls] == ["GetConfiguration", "ListModels", "GetUsage"]


def test_gateway_error_decodes_error_info_and_retry_info(client: Client, fake: FakeGateway) -> None:
    fake.error = RATE_LIMITED
    with pytest.raises(GatewayError) as caught:
        client.chat_completion(user_message="x")
    err = caught.value
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.message == "the upstream kept rate limiting"
    assert err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.domain == "gpt-grpc"
    assert err.metadata == {"http_status": "429", "request_id": "req-42"}
    assert err.retry_delay == pytest.approx(2.5)
    assert err.retryable
    assert err.field_violations == []
    assert err.request_id == "req-42"
    assert str(err) == "RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: the upstream kept rate limiting"
    assert isinstance(err.__cause__, grpc.RpcError)
    assert err.status is not None and err.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.reason, copy.retry_delay, copy.request_id) == (
        err.code,
        err.reason,
        err.retry_delay,
        err.request_id,
    )


@pytest.mark.parametrize("method", ["count_tokens", "get_usage", "list_models", "get_configuration", "configure"])
def test_every_method_raises_gateway_error(client: Client, fake: FakeGateway, method: str) -> None:
    fake.error = BAD_REQUEST
    with pytest.raises(GatewayError) as caught:
        getattr(client, method)(**({"text": "x"} if method == "count_tokens" else {}))
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_REQUEST"
    assert err.retry_delay is None and not err.retryable
    assert err.field_violations == [
        ("temperature", "must be between 0 and 2"),
        ("max_tokens", "must be at least 1"),
    ]
    assert err.request_id is None


def test_gateway_error_without_details(client: Client, fake: FakeGateway, free_addr: str) -> None:
    fake.error = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="plain")
    with pytest.raises(GatewayError) as caught:
        client.count_tokens("x")
    assert (caught.value.code, caught.value.reason, caught.value.message) == (
        grpc.StatusCode.INTERNAL,
        "",
        "plain",
    )
    assert caught.value.metadata == {} and caught.value.field_violations == []
    assert str(caught.value) == "INTERNAL: plain"

    with Client(free_addr, timeout=5) as nobody, pytest.raises(GatewayError) as caught:
        nobody.count_tokens("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == ""


class _OddError(grpc.RpcError):  # type: ignore[misc]
    """An RpcError that is not a well-formed call (no code, broken trailers)."""

    def __init__(self, trailers: Any) -> None:
        self._trailers = trailers

    def trailing_metadata(self) -> Any:
        return self._trailers


def test_from_rpc_error_tolerates_odd_errors() -> None:
    err = GatewayError.from_rpc_error(_OddError((("grpc-status-details-bin", b"\xff\xff not a proto"),)))
    assert err.code == grpc.StatusCode.UNKNOWN and err.reason == "" and err.status is None
    err = GatewayError.from_rpc_error(_OddError(None))
    assert err.code == grpc.StatusCode.UNKNOWN
    status = RATE_LIMITED.SerializeToString()
    err = GatewayError.from_rpc_error(_OddError([("x-request-id", "rid"), ("grpc-status-details-bin", status)]))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED  # from the Status proto
    assert err.message == "the upstream kept rate limiting"
    assert err.reason == "UPSTREAM_RATE_LIMITED" and err.request_id == "req-42"
    assert err.retry_delay == pytest.approx(2.5)


def test_exports() -> None:
    for name in gpt_grpc_client.__all__:
        assert hasattr(gpt_grpc_client, name), name
    assert gpt_grpc_client.GatewayError is GatewayError
    assert gpt_grpc_client.gateway_pb2 is gateway_pb2


# --------------------------------------------------------------------------- TLS


def test_tls_and_mutual_tls(pki: Path, grpc_servicer: FakeGateway) -> None:
    grpc_servicer.reset()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gateway_pb2_grpc.add_GPTServiceServicer_to_server(grpc_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        # Paths (str and Path) and bytes are all accepted.
        with Client(
            target,
            tls=True,
            root_certificates=str(pki / "ca.pem"),
            private_key=pki / "client.key",
            certificate_chain=(pki / "client.pem").read_bytes(),
            timeout=10,
        ) as secure:
            assert secure.tls
            assert secure.count_tokens("over tls") == 2
        # Without a client certificate the server refuses the handshake.
        with Client(target, root_certificates=pki / "ca.pem", timeout=5) as no_cert:
            assert no_cert.tls  # implied by the certificate
            with pytest.raises(GatewayError) as caught:
                no_cert.count_tokens("x")
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ValueError, match="go together"):
            Client(target, tls=True, private_key=pki / "client.key")
        assert cli.main(
            ["--target", target, "--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
             "--key", str(pki / "client.key"), "count-tokens", "a", "b", "c"]
        ) == 0  # fmt: skip
    finally:
        server.stop(None)
        grpc_servicer.reset()


# --------------------------------------------------------------------------- async client


async def test_async_client_methods(fake: FakeGateway, grpc_addr: str) -> None:
    async with AsyncClient(grpc_addr, admin_token=ADMIN_TOKEN, timeout=10) as client:
        assert await client.chat_completion(system_message="s", user_message="hi", seed=1) == "echo: hi"
        response = await client.chat(messages=[{"role": "user", "content": "m"}])
        assert response.usage.total_tokens == 8
        assert await client.count_tokens("a b c") == 3
        assert (await client.count_tokens_detailed("a", model="gpt-4o")).encoding == "o200k_base"
        config = await client.configure(api_key=API_KEY, initial_backoff=0.25)
        assert config.generation == 7
        assert (await client.get_configuration()).default_model == "gpt-4o-mini"
        assert len((await client.list_models()).models) == 2
        assert (await client.get_usage()).total.requests == 3
    assert [c.method for c in fake.calls] == [
        "ChatCompletion",
        "ChatCompletion",
        "CountTokens",
        "CountTokens",
        "Configure",
        "GetConfiguration",
        "ListModels",
        "GetUsage",
    ]
    first = fake.calls[0].request
    assert isinstance(first, gateway_pb2.ChatCompletionRequest)
    assert (first.system_message, first.user_message, first.seed) == ("s", "hi", 1)
    configure = fake.last("Configure")
    assert isinstance(configure.request, gateway_pb2.ConfigureRequest)
    assert configure.request.retry_policy.initial_backoff == duration_pb2.Duration(nanos=250_000_000)
    for call in fake.calls:
        assert ("authorization" in call.metadata) == (call.method == "Configure"), call.method
    assert ADMIN_TOKEN not in repr(client)
    with pytest.raises(RuntimeError, match="closed"):
        await client.count_tokens("x")


async def test_async_stream_yields_deltas_then_summary(fake: FakeGateway, grpc_addr: str) -> None:
    async with AsyncClient(grpc_addr, timeout=10) as client:
        stream = client.stream_chat(user_message="hi", max_tokens=5)
        deltas = [delta async for delta in stream]
        assert deltas == ["Hel", "lo", "!"]
        assert stream.text == "Hello!" and stream.done and not stream.cancelled
        assert stream.summary is not None and stream.summary.usage.total_tokens == 11
        request = fake.last("StreamChatCompletion").request
        assert isinstance(request, gateway_pb2.StreamChatCompletionRequest)
        assert request.max_tokens == 5

        async with client.stream_chat(user_message="again") as second:
            assert await second.collect() == "Hello!"


async def _wait_for(event: threading.Event) -> bool:
    """Wait (at most 10 s) for a threading.Event set by the servicer, without blocking the loop."""
    return await asyncio.to_thread(event.wait, 10.0)


async def test_async_stream_break_cancels_the_call(fake: FakeGateway, grpc_addr: str) -> None:
    fake.block = True
    async with AsyncClient(grpc_addr, timeout=20) as client:
        stream = client.stream_chat(user_message="long")  # stays referenced after the break
        async for delta in stream:
            assert delta == "Hel"
            break
        assert await _wait_for(fake.cancelled), "the server never saw the call cancelled"
        assert stream.cancelled

        fake.reset()
        fake.block = True
        stream = client.stream_chat(user_message="long")
        assert await stream.__anext__() == "Hel"
        await stream.aclose()
        assert await _wait_for(fake.cancelled)
        assert [d async for d in stream] == []

        fake.reset()
        fake.block = True
        async with client.stream_chat(user_message="long") as stream:
            async for _ in stream:
                break
        assert await _wait_for(fake.cancelled)


async def test_async_stream_error(fake: FakeGateway, grpc_addr: str) -> None:
    fake.stream_error = RATE_LIMITED
    async with AsyncClient(grpc_addr, timeout=10) as client:
        stream = client.stream_chat(user_message="x")
        with pytest.raises(GatewayError) as caught:
            async for _ in stream:
                pass
    assert caught.value.reason == "UPSTREAM_RATE_LIMITED"
    assert caught.value.retry_delay == pytest.approx(2.5)
    assert stream.text == "Hello!"


async def test_async_client_tokens_and_client_registry(fake: FakeGateway, grpc_addr: str) -> None:
    async with AsyncClient(grpc_addr, token=CLIENT_TOKEN, admin_token=ADMIN_TOKEN, timeout=10) as both:
        await both.chat_completion(user_message="x")
        assert await both.stream_chat(user_message="x").collect() == "Hello!"
        await both.count_tokens("x")
        await both.get_configuration()
        await both.list_models()
        assert [u.name for u in (await both.list_upstreams()).upstreams] == ["openai", "azure-east"]
        assert (await both.get_usage("billing")).client == "billing"
        await both.configure(default_model="gpt-4o")
        created = await both.create_client("billing", tokens_per_minute=500, budget_usd=2, budget_period="month")
        assert created.token == CLIENT_TOKEN_ISSUED
        assert created.client.limits.tokens_per_minute == 500
        assert [c.name for c in await both.list_clients(include_revoked=True)][-1] == "zz-old"
        assert (await both.update_client("billing", requests_per_minute=3)).limits.requests_per_minute == 3
        assert (await both.revoke_client("billing")).HasField("revoke_time")
        conversation = await both.create_conversation(ttl=60)
        assert (await both.converse(conversation.id, "hi")).content == "echo: hi"
        assert await both.stream_converse(conversation.id, "hi").collect() == "Hello!"
        await both.get_conversation(conversation.id)
        await both.list_conversations()
        await both.delete_conversation(conversation.id)
        assert CLIENT_TOKEN not in repr(both) and ADMIN_TOKEN not in repr(both)
    check_token_routing(fake.calls, CLIENT_TOKEN, ADMIN_TOKEN)
    request = fake.last("CreateClient").request
    assert isinstance(request, gateway_pb2.CreateClientRequest)
    assert request.limits.budget_period == gateway_pb2.BUDGET_PERIOD_MONTH
    assert fake.last("ListClients").request == gateway_pb2.ListClientsRequest(include_revoked=True)


async def test_async_errors_are_decoded(fake: FakeGateway, grpc_addr: str) -> None:
    fake.error = BAD_REQUEST
    async with AsyncClient(grpc_addr, timeout=10) as client:
        with pytest.raises(GatewayError) as caught:
            await client.chat_completion(user_message="x", temperature=9)
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "INVALID_REQUEST"
    assert ("temperature", "must be between 0 and 2") in err.field_violations
    assert isinstance(err.__cause__, grpc.aio.AioRpcError)


async def test_async_task_cancellation_propagates_and_cancels_the_call(fake: FakeGateway, grpc_addr: str) -> None:
    fake.block = True
    async with AsyncClient(grpc_addr, timeout=20) as client:
        task = asyncio.ensure_future(client.chat_completion(user_message="slow"))
        assert await _wait_for(fake.started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _wait_for(fake.cancelled)

        fake.reset()
        fake.block = True
        stream = client.stream_chat(user_message="slow")

        async def consume() -> list[str]:
            return [d async for d in stream]

        consumer = asyncio.ensure_future(consume())
        assert await _wait_for(fake.started)
        await asyncio.sleep(0.05)  # let the consumer reach its read
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert stream.cancelled
        assert await _wait_for(fake.cancelled)


# --------------------------------------------------------------------------- CLI


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_cli_chat_streams_to_stdout(fake: FakeGateway, grpc_addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["--target", grpc_addr, "chat", "--model", "gpt-4o", "--system", "Be brief.", "--max-tokens", "9",
         "--temperature", "0.2", "Tell", "me"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert out == "Hello!\n"
    assert "tokens 7 prompt + 4 completion = 11" in err and "$0.000420" in err and "attempts 2" in err
    request = fake.last("StreamChatCompletion").request
    assert isinstance(request, gateway_pb2.StreamChatCompletionRequest)
    assert (request.model, request.system_message, request.user_message) == ("gpt-4o", "Be brief.", "Tell me")
    assert request.max_tokens == 9 and request.temperature == pytest.approx(0.2)


def test_cli_chat_reads_stdin_and_uses_the_target_env(
    fake: FakeGateway, grpc_addr: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT_GRPC_TARGET", grpc_addr)
    monkeypatch.setattr(sys, "stdin", _Stdin("from stdin\n"))
    code, out, _ = run_cli(["chat", "-q"], capsys)
    assert code == 0 and out == "Hello!\n"
    request = fake.last("StreamChatCompletion").request
    assert isinstance(request, gateway_pb2.StreamChatCompletionRequest)
    assert request.user_message == "from stdin\n" and request.model == "gpt-4o-mini"


def test_cli_count_tokens(fake: FakeGateway, grpc_addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--target", grpc_addr, "count-tokens", "--model", "gpt-4o", "a", "b"], capsys)
    assert code == 0
    assert out == "2 tokens (o200k_base)\n"
    assert fake.last("CountTokens").request == gateway_pb2.CountTokensRequest(text="a b", model="gpt-4o")


def test_cli_configure_never_shows_the_api_key(
    fake: FakeGateway, grpc_addr: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text(API_KEY + "\n")
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    code, out, err = run_cli(
        ["--target", grpc_addr, "--admin-token-file", str(token_file), "configure", "--api-key-file",
         str(key_file), "--endpoint", "https://example.invalid/v1", "--request-timeout", "20",
         "--max-attempts", "5", "--initial-backoff", "0.5", "--max-backoff", "4"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert API_KEY not in out + err and ADMIN_TOKEN not in out + err
    assert "sk-...1234" in out and "generation" in out
    call = fake.last("Configure")
    request = call.request
    assert isinstance(request, gateway_pb2.ConfigureRequest)
    assert request.api_key == API_KEY  # stripped of the newline
    assert request.endpoint == "https://example.invalid/v1"
    assert request.request_timeout.seconds == 20
    assert request.retry_policy.max_attempts == 5
    assert request.retry_policy.initial_backoff.nanos == 500_000_000
    assert request.retry_policy.max_backoff.seconds == 4
    assert not request.HasField("organization")
    assert call.metadata["authorization"] == f"Bearer {ADMIN_TOKEN}"

    # The key given on the command line is refused: it would show in `ps`.
    assert cli.main(["--target", grpc_addr, "configure", "--api-key", API_KEY]) == 2
    capsys.readouterr()


def test_cli_configure_key_from_stdin_token_from_env(
    fake: FakeGateway,
    grpc_addr: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPT_GRPC_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(sys, "stdin", _Stdin(API_KEY + "\n"))
    code, out, err = run_cli(["--target", grpc_addr, "configure", "--api-key-stdin"], capsys)
    assert code == 0, err
    assert API_KEY not in out + err
    call = fake.last("Configure")
    assert isinstance(call.request, gateway_pb2.ConfigureRequest)
    assert call.request.api_key == API_KEY
    assert call.metadata["authorization"] == f"Bearer {ADMIN_TOKEN}"

    code, out, err = run_cli(["--target", grpc_addr, "config"], capsys)
    assert code == 0 and "https://api.openai.com/v1" in out
    assert "authorization" not in fake.last("GetConfiguration").metadata


def test_cli_models_and_usage_tables(fake: FakeGateway, grpc_addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--target", grpc_addr, "models"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "ENCODING", "CONTEXT"]
    assert lines[1].split() == [
        "gpt-4o-mini", "o200k_base", "128000", "16384", "no", "0.15", "0.075", "0.6", "genai-prices", "0.0.1",
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["o3-mini", "o200k_base", "0", "0", "yes"]
    assert lines[2].split()[5:] == ["-", "-", "-"]

    code, out, _ = run_cli(["--target", grpc_addr, "upstreams"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "KIND", "BASE", "URL"]
    assert lines[1].split() == [
        "openai", "openai", "https://api.openai.com/v1", "gpt-4o*", "1", "1", "open", "2", "50%", "of", "40", "7s",
    ]  # fmt: skip
    assert lines[2].split()[:2] == ["azure-east", "azure"] and lines[2].split()[6] == "closed"
    assert lines[3] == "fallbacks of gpt-4o: gpt-4o-mini"

    code, out, _ = run_cli(["--target", grpc_addr, "usage"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "REQUESTS", "FAILED"]
    assert lines[1].split() == ["gpt-4o-mini", "3", "1", "30", "12", "0", "0", "0.012500", "0"]
    assert lines[2].split()[0] == "TOTAL"
    assert lines[3] == "since 2023-11-14 22:13:20 UTC"


def test_cli_errors(
    fake: FakeGateway,
    grpc_addr: str,
    free_addr: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake.error = RATE_LIMITED
    code, _, err = run_cli(["--target", grpc_addr, "chat", "hi"], capsys)
    assert code == 1
    assert err.splitlines()[0] == "error: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: the upstream kept rate limiting"
    assert "retry after 2.5s" in err and "req-42" in err

    fake.error = BAD_REQUEST
    code, _, err = run_cli(["--target", grpc_addr, "count-tokens", "x"], capsys)
    assert code == 1
    assert "error: INVALID_ARGUMENT INVALID_REQUEST: invalid request" in err
    assert "temperature: must be between 0 and 2" in err

    code, _, err = run_cli(["--target", free_addr, "--timeout", "5", "models"], capsys)
    assert code == 1 and err.startswith("error: UNAVAILABLE: ")

    code, _, err = run_cli(["--target", grpc_addr, "configure", "--api-key-file", str(tmp_path / "nope")], capsys)
    assert code == 1 and "cannot read API key file" in err

    code, _, err = run_cli(["--target", grpc_addr, "no-such-command"], capsys)
    assert code == 2 and "invalid choice" in err

    class Interrupted(_Stdin):
        def read(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    code, _, _ = run_cli(["--target", grpc_addr, "chat"], capsys)
    assert code == 130


class _InterruptingStdout(io.StringIO):
    """stdout on which the second write is "interrupted" by Ctrl-C."""

    def write(self, text: str) -> int:
        if self.getvalue():
            raise KeyboardInterrupt
        return super().write(text)


def test_cli_ctrl_c_during_a_stream_cancels_it(
    fake: FakeGateway, grpc_addr: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.block = True
    stdout = _InterruptingStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["--target", grpc_addr, "chat", "hi"]) == 130
    assert stdout.getvalue() == "Hel"
    assert fake.cancelled.wait(10), "the server never saw the call cancelled"
    capsys.readouterr()


class _InterruptedCall:
    """A sync streaming call whose wait for the next message is interrupted by Ctrl-C."""

    def __init__(self) -> None:
        self.cancelled = False

    def __next__(self) -> gateway_pb2.StreamChatCompletionResponse:
        raise KeyboardInterrupt

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_ctrl_c_while_waiting_for_a_delta_cancels_the_call() -> None:
    call = _InterruptedCall()
    stream = gpt_grpc_client.ChatStream(call)
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert call.cancelled and stream.cancelled


def test_cli_client_token_from_file_or_env(
    fake: FakeGateway,
    grpc_addr: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "client.token"
    token_file.write_text(CLIENT_TOKEN + "\n")
    monkeypatch.setenv("GPT_GRPC_ADMIN_TOKEN", ADMIN_TOKEN)  # never sent on data-plane calls
    code, out, err = run_cli(["--target", grpc_addr, "--token-file", str(token_file), "chat", "-q", "hi"], capsys)
    assert code == 0 and out == "Hello!\n", err
    assert fake.last("StreamChatCompletion").authorizations == [f"Bearer {CLIENT_TOKEN}"]

    monkeypatch.setenv("GPT_GRPC_TOKEN", CLIENT_TOKEN)
    for argv in (["count-tokens", "x"], ["models"], ["config"], ["usage"]):
        code, _, err = run_cli(["--target", grpc_addr, *argv], capsys)
        assert code == 0, err
    assert [c.authorizations for c in fake.calls[1:]] == [[f"Bearer {CLIENT_TOKEN}"]] * 4

    code, _, _ = run_cli(["--target", grpc_addr, "configure", "--default-model", "m"], capsys)
    assert code == 0 and fake.last("Configure").authorizations == [f"Bearer {ADMIN_TOKEN}"]

    code, _, err = run_cli(["--target", grpc_addr, "--token-file", str(tmp_path / "nope"), "models"], capsys)
    assert code == 1 and "cannot read token file" in err


def test_cli_clients(
    fake: FakeGateway,
    grpc_addr: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN_TOKEN + "\n")
    monkeypatch.setenv("GPT_GRPC_TOKEN", CLIENT_TOKEN)  # never sent on admin calls
    base = ["--target", grpc_addr, "--admin-token-file", str(admin_file), "clients"]

    code, out, err = run_cli(
        [*base, "create", "billing", "--requests-per-minute", "60", "--budget-usd", "5", "--budget-period", "day"],
        capsys,
    )
    assert code == 0, err
    assert out == CLIENT_TOKEN_ISSUED + "\n"  # the token alone on stdout: `> billing.token` stores it
    assert "created client billing" in err and "gptk_ab12" in err and "$5/day" in err and "shown this once" in err
    assert CLIENT_TOKEN_ISSUED not in err and ADMIN_TOKEN not in out + err
    call = fake.last("CreateClient")
    assert call.request == gateway_pb2.CreateClientRequest(
        name="billing",
        limits=gateway_pb2.ClientLimits(
            requests_per_minute=60, budget_usd=5, budget_period=gateway_pb2.BUDGET_PERIOD_DAY
        ),
    )
    assert call.authorizations == [f"Bearer {ADMIN_TOKEN}"]

    code, out, _ = run_cli([*base, "list", "--all"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "TOKEN"]
    assert lines[1].split()[:7] == ["billing", "gptk_ab12", "60", "-", "$5/day", "-", "0.250000"]
    assert lines[2].split()[:5] == ["search", "gptk_ab12", "-", "-", "-"]
    assert lines[3].split()[0] == "zz-old" and lines[3].split()[-2:] == ["2023-11-14", "22:23:20"]
    assert fake.last("ListClients").request == gateway_pb2.ListClientsRequest(include_revoked=True)

    code, out, _ = run_cli([*base, "update", "billing", "--tokens-per-minute", "1000", "--max-in-flight", "8"], capsys)
    assert code == 0 and out.splitlines()[1].split()[:6] == ["billing", "gptk_ab12", "-", "1000", "-", "8"]
    assert fake.last("UpdateClient").request == gateway_pb2.UpdateClientRequest(
        name="billing", limits=gateway_pb2.ClientLimits(tokens_per_minute=1000, max_in_flight=8)
    )

    code, out, err = run_cli([*base, "revoke", "billing"], capsys)
    assert (code, out) == (0, "") and "revoked client billing" in err
    assert fake.last("RevokeClient").request == gateway_pb2.RevokeClientRequest(name="billing")

    # A client's usage: GetUsage (a data-plane RPC) with the admin token.
    code, out, _ = run_cli([*base, "usage", "billing"], capsys)
    assert code == 0 and out.splitlines()[-1] == "client billing"
    call = fake.last("GetUsage")
    assert call.request == gateway_pb2.GetUsageRequest(client="billing")
    assert call.authorizations == [f"Bearer {ADMIN_TOKEN}"]

    for call in fake.calls:
        assert not any(CLIENT_TOKEN in str(v) for _, v in call.pairs), call.method

    calls = len(fake.calls)
    code, _, err = run_cli([*base, "create", "x", "--budget-usd", "5"], capsys)
    assert code == 1 and "--budget-usd and --budget-period go together" in err
    code, _, err = run_cli([*base, "create", "x", "--budget-period", "week"], capsys)
    assert code == 2 and "invalid choice" in err
    code, _, err = run_cli([*base, "frobnicate"], capsys)
    assert code == 2
    assert len(fake.calls) == calls


async def test_client_tokens_against_the_gateway(
    standin: Standin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The package end to end against the real gateway with a clients database."""
    config = ServerConfig(
        port=0,
        admin_token=GATEWAY_ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        db_path=str(tmp_path / "clients.db"),
    )
    gw = await start_gateway(config)
    try:
        async with AsyncClient(gw.target, admin_token=GATEWAY_ADMIN_TOKEN, timeout=10) as admin:
            assert await admin.chat_completion(user_message="open") == "Echo: open"  # no client yet: open
            created = await admin.create_client("billing", requests_per_minute=2)
            assert created.token.startswith(created.client.token_prefix)
            # The admin token is not sent on data-plane calls: the data plane is now closed to this client.
            with pytest.raises(GatewayError) as missing:
                await admin.chat_completion(user_message="x")
            assert (missing.value.code, missing.value.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CLIENT_TOKEN_MISSING",
            )
            assert [c.name for c in await admin.list_clients()] == ["billing"]

        async with AsyncClient(gw.target, token=created.token, timeout=10) as billing:
            assert await billing.chat_completion(user_message="one") == "Echo: one"
            assert await billing.stream_chat(user_message="two").collect() == "Echo: two"
            with pytest.raises(GatewayError) as limited:
                await billing.chat_completion(user_message="three")
            assert (limited.value.code, limited.value.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "CLIENT_RATE_LIMITED",
            )
            assert limited.value.retry_delay is not None and limited.value.retry_delay > 0
            with pytest.raises(GatewayError) as forbidden:
                await billing.get_usage("someone-else")
            assert forbidden.value.reason == "CLIENT_FORBIDDEN"

        # The CLI, from a thread (the gateway serves on this event loop).
        admin_file, token_file = tmp_path / "admin.token", tmp_path / "search.token"
        admin_file.write_text(GATEWAY_ADMIN_TOKEN)
        base = ["--target", gw.target, "--timeout", "10"]

        async def cli_run(*argv: str) -> tuple[int, str, str]:
            code = await asyncio.to_thread(cli.main, [*base, *argv])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = await cli_run("--admin-token-file", str(admin_file), "clients", "create", "search")
        assert code == 0, err
        token_file.write_text(out)
        code, out, err = await cli_run("--token-file", str(token_file), "chat", "-q", "via the cli")
        assert (code, out) == (0, "Echo: via the cli\n"), err
        code, out, err = await cli_run("--token-file", str(token_file), "usage")
        assert code == 0 and out.splitlines()[-1] == "client search", err
        code, out, _ = await cli_run("--admin-token-file", str(admin_file), "clients", "list")
        assert [line.split()[0] for line in out.splitlines()] == ["NAME", "billing", "search"]
        code, out, _ = await cli_run("--admin-token-file", str(admin_file), "clients", "usage", "billing")
        assert code == 0 and out.splitlines()[-1] == "client billing"
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line[:1].strip()}
        assert rows["gpt-4o-mini"][0] == "2" and rows["TOTAL"][0] == "2"  # two answered calls
        code, _, _ = await cli_run("--admin-token-file", str(admin_file), "clients", "revoke", "search")
        assert code == 0
        code, _, err = await cli_run("--token-file", str(token_file), "count-tokens", "x")
        assert code == 1 and "UNAUTHENTICATED CLIENT_TOKEN_INVALID" in err
    finally:
        await stop_gateway(gw)


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gpt-grpc"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "count-tokens" in result.stdout and "configure" in result.stdout


# --------------------------------------------------------------------------- packaging


def test_wheel_contains_the_stubs_and_no_server_dependencies(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    out = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("gpt_grpc_client-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        for expected in (
            "gptgrpc/__init__.py",
            "gptgrpc/py.typed",
            "gptgrpc/v1/__init__.py",
            "gptgrpc/v1/gateway_pb2.py",
            "gptgrpc/v1/gateway_pb2.pyi",
            "gptgrpc/v1/gateway_pb2_grpc.py",
            "gptgrpc/v1/gateway_pb2_grpc.pyi",
            "gpt_grpc_client/__init__.py",
            "gpt_grpc_client/py.typed",
            "gpt_grpc_client/client.py",
            "gpt_grpc_client/errors.py",
            "gpt_grpc_client/cli.py",
        ):
            assert expected in names, f"{expected} missing from the wheel: {sorted(names)}"
        assert not any(n.startswith("gpt_grpc/") for n in names), "the server package leaked into the wheel"
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    declared = metadata.get_all("Requires-Dist") or []
    # Required ones alone: opentelemetry-api is the optional `otel` extra (trace context propagation).
    requires = [r.split(";")[0].strip() for r in declared if "extra ==" not in r]
    extras = {r.split(";")[0].strip().split(">")[0] for r in declared if 'extra == "otel"' in r}
    assert extras == {"opentelemetry-api"}, declared
    names_only = {r.replace(" ", "").split(">")[0].split("=")[0].split("<")[0].lower() for r in requires}
    assert names_only == {"grpcio", "protobuf", "googleapis-common-protos"}, requires
    assert not names_only & {"openai", "tiktoken", "grpcio-status"}, requires
    assert metadata["Name"] == "gpt-grpc-client"
    assert "gpt-grpc = gpt_grpc_client.cli:main" in entry_points


def test_client_imports_without_grpc_status() -> None:
    """The client decodes status details itself: importing and decoding needs no grpcio-status."""
    code = (
        "import sys; sys.modules['grpc_status'] = None\n"
        "import gpt_grpc_client, gpt_grpc_client.cli\n"
        "assert 'grpc_status' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
