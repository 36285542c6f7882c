"""Synchronous and asyncio clients of the gpt-grpc gateway (``gptgrpc.v1.GPTService``)."""

# ``timeout`` is the gRPC deadline, sent to the gateway (which bounds its upstream retries by
# it), so it is a parameter of the async methods rather than an asyncio.timeout around them.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, Self, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2
from gptgrpc.v1 import gateway_pb2, gateway_pb2_grpc
from grpc import aio

from . import tracing
from .balancing import balancing_options
from .errors import GatewayError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "AsyncChatStream",
    "AsyncClient",
    "AsyncConverseStream",
    "BudgetPeriodLike",
    "CertificateSource",
    "ChatStream",
    "Client",
    "ConverseStream",
    "MessageLike",
    "MetadataPairs",
    "Seconds",
    "TrimmingPolicyLike",
    "to_chat_message",
]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "gpt-4o-mini"

#: A chat message: a ``ChatMessage`` proto or a mapping such as ``{"role": "user", "content": "hi"}``.
MessageLike: TypeAlias = gateway_pb2.ChatMessage | Mapping[str, Any]
#: PEM data as bytes, or the path of a PEM file.
CertificateSource: TypeAlias = bytes | str | os.PathLike[str]
#: A duration in seconds, or a ``datetime.timedelta``.
Seconds: TypeAlias = float | int | timedelta
#: gRPC call metadata: ``(key, value)`` pairs; keys lower case, ``-bin`` keys take bytes.
MetadataPairs: TypeAlias = Sequence[tuple[str, str | bytes]]
#: A client's budget period: ``"day"`` or ``"month"`` (UTC), or a ``BudgetPeriod`` value.
BudgetPeriodLike: TypeAlias = str | int
#: A conversation's trimming policy: ``"trim_oldest"`` or ``"summarize"``, or a ``TrimmingPolicy`` value.
TrimmingPolicyLike: TypeAlias = str | int

_ROLES: dict[str, gateway_pb2.Role.ValueType] = {
    "system": gateway_pb2.ROLE_SYSTEM,
    "developer": gateway_pb2.ROLE_DEVELOPER,
    "user": gateway_pb2.ROLE_USER,
    "assistant": gateway_pb2.ROLE_ASSISTANT,
    "tool": gateway_pb2.ROLE_TOOL,
}
_MESSAGE_KEYS = frozenset({"role", "content", "parts", "name", "tool_call_id", "tool_calls"})
_CHAT_FIELDS = frozenset(gateway_pb2.ChatCompletionRequest.DESCRIPTOR.fields_by_name)
_NOT_FOUND = "CONVERSATION_NOT_FOUND"
_TURN_FIELDS = frozenset(gateway_pb2.ConverseRequest.DESCRIPTOR.fields_by_name)
_POLICIES: dict[str, gateway_pb2.TrimmingPolicy.ValueType] = {
    "trim_oldest": gateway_pb2.TRIM_OLDEST,
    "summarize": gateway_pb2.SUMMARIZE,
}


# --------------------------------------------------------------------------- request building


def _role(value: Any) -> gateway_pb2.Role.ValueType:
    if isinstance(value, int) and not isinstance(value, bool):
        for role in _ROLES.values():
            if role == value:
                return role
    elif isinstance(value, str):
        key = value.strip().lower()
        key = key.removeprefix("role_")
        if key in _ROLES:
            return _ROLES[key]
    raise ValueError(f"unknown chat message role {value!r}; use one of {', '.join(_ROLES)}")


def _tool_call(value: Any) -> gateway_pb2.ToolCall:
    if isinstance(value, gateway_pb2.ToolCall):
        return value
    if isinstance(value, Mapping):
        function = value.get("function")
        if isinstance(function, Mapping):  # OpenAI's shape: {"id", "type", "function": {...}}
            return gateway_pb2.ToolCall(
                id=str(value.get("id") or ""),
                name=str(function.get("name") or ""),
                arguments_json=str(function.get("arguments") or ""),
            )
        unknown = set(value) - {"id", "name", "arguments_json"}
        if unknown:
            raise ValueError(f"unknown tool call keys: {', '.join(sorted(unknown))}")
        return gateway_pb2.ToolCall(
            id=str(value.get("id") or ""),
            name=str(value.get("name") or ""),
            arguments_json=str(value.get("arguments_json") or ""),
        )
    raise TypeError(f"a tool call must be a ToolCall or a mapping, not {type(value).__name__}")


def to_chat_message(message: MessageLike) -> gateway_pb2.ChatMessage:
    """Convert ``{"role": "user", "content": "..."}`` (or a ``ChatMessage``) to a ``ChatMessage``.

    Roles are ``"system"``, ``"developer"``, ``"user"``, ``"assistant"`` and ``"tool"``
    (``Role`` values and names such as ``"ROLE_USER"`` work too). Optional keys: ``name``,
    ``tool_call_id``, ``tool_calls`` (``ToolCall`` protos or mappings) and ``parts``
    (instead of ``content``: ``ContentPart`` protos, such as :func:`image_part` makes, or
    ``str`` for text).
    """
    if isinstance(message, gateway_pb2.ChatMessage):
        return message
    if not isinstance(message, Mapping):
        raise TypeError(f"a chat message must be a ChatMessage or a mapping, not {type(message).__name__}")
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
        raise ValueError(f"unknown chat message keys: {', '.join(sorted(map(str, unknown)))}")
    if "role" not in message:
        raise ValueError("a chat message needs a role")
    result = gateway_pb2.ChatMessage(role=_role(message["role"]), content=str(message.get("content") or ""))
    if message.get("name") is not None:
        result.name = str(message["name"])
    if message.get("tool_call_id") is not None:
        result.tool_call_id = str(message["tool_call_id"])
    for call in message.get("tool_calls") or ():
        result.tool_calls.append(_tool_call(call))
    for part in message.get("parts") or ():
        if isinstance(part, str):
            result.parts.add(text=part)
        elif isinstance(part, gateway_pb2.ContentPart):
            result.parts.append(part)
        else:
            raise TypeError(f"a part must be a ContentPart or a str, not {type(part).__name__}")
    return result


def _chat_fields(
    model: str,
    system_message: str,
    user_message: str,
    temperature: float | None,
    max_tokens: int | None,
    messages: Iterable[MessageLike] | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    if messages is not None and (system_message or user_message):
        raise ValueError("give either system_message/user_message or messages, not both")
    fields: dict[str, Any] = {"model": model, "system_message": system_message, "user_message": user_message}
    if temperature is not None:
        fields["temperature"] = float(temperature)
    if max_tokens is not None:
        fields["max_tokens"] = int(max_tokens)
    if messages is not None:
        fields["messages"] = [to_chat_message(m) for m in messages]
    for key, value in extra.items():
        if key not in _CHAT_FIELDS:
            raise TypeError(f"unexpected keyword argument {key!r}: not a ChatCompletionRequest field")
        if value is None:
            continue
        if key == "stop" and isinstance(value, str):
            value = [value]
        fields[key] = value
    return fields


def _build_chat_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``chat``/``stream_chat`` with ``chat_completion``'s defaults."""
    named = dict(fields)
    return _chat_fields(
        model=named.pop("model", DEFAULT_MODEL),
        system_message=named.pop("system_message", ""),
        user_message=named.pop("user_message", ""),
        temperature=named.pop("temperature", 0.7),
        max_tokens=named.pop("max_tokens", None),
        messages=named.pop("messages", None),
        extra=named,
    )


def _chat_request(
    request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None,
    fields: Mapping[str, Any],
) -> gateway_pb2.ChatCompletionRequest:
    if request is None:
        return gateway_pb2.ChatCompletionRequest(**_build_chat_fields(fields))
    if fields:
        raise TypeError("give either a request message or keyword fields, not both")
    if isinstance(request, gateway_pb2.ChatCompletionRequest):
        return request
    if isinstance(request, gateway_pb2.StreamChatCompletionRequest):  # same fields, same numbers
        return gateway_pb2.ChatCompletionRequest.FromString(request.SerializeToString())
    raise TypeError(f"expected a ChatCompletionRequest, not {type(request).__name__}")


def _stream_request(
    request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None,
    fields: Mapping[str, Any],
) -> gateway_pb2.StreamChatCompletionRequest:
    if request is None:
        return gateway_pb2.StreamChatCompletionRequest(**_build_chat_fields(fields))
    if fields:
        raise TypeError("give either a request message or keyword fields, not both")
    if isinstance(request, gateway_pb2.StreamChatCompletionRequest):
        return request
    if isinstance(request, gateway_pb2.ChatCompletionRequest):  # same fields, same numbers
        return gateway_pb2.StreamChatCompletionRequest.FromString(request.SerializeToString())
    raise TypeError(f"expected a StreamChatCompletionRequest, not {type(request).__name__}")


def _policy(value: TrimmingPolicyLike | None) -> gateway_pb2.TrimmingPolicy.ValueType:
    if value is None:
        return gateway_pb2.TRIMMING_POLICY_UNSPECIFIED
    if isinstance(value, int) and not isinstance(value, bool):
        for policy in (*_POLICIES.values(), gateway_pb2.TRIMMING_POLICY_UNSPECIFIED):
            if policy == value:
                return policy
    elif isinstance(value, str) and value.strip().lower() in _POLICIES:
        return _POLICIES[value.strip().lower()]
    raise ValueError(f"unknown trimming policy {value!r}; use one of {', '.join(_POLICIES)}")


def _create_conversation_request(
    model: str,
    system_message: str,
    max_context_tokens: int | None,
    trimming_policy: TrimmingPolicyLike | None,
    ttl: Seconds | None,
    labels: Mapping[str, str] | None,
) -> gateway_pb2.CreateConversationRequest:
    request = gateway_pb2.CreateConversationRequest(
        model=model, system_message=system_message, trimming_policy=_policy(trimming_policy), labels=labels or {}
    )
    if max_context_tokens is not None:
        request.max_context_tokens = int(max_context_tokens)
    if ttl is not None:
        request.ttl.CopyFrom(_duration(ttl, "ttl"))
    return request


def _turn_fields(
    conversation_id: str,
    user_message: str,
    temperature: float | None,
    max_tokens: int | None,
    messages: Iterable[MessageLike] | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The fields of a ConverseRequest (StreamConverseRequest has the same)."""
    if messages is not None and user_message:
        raise ValueError("give either user_message or messages (tool results), not both")
    fields: dict[str, Any] = {"conversation_id": conversation_id, "user_message": user_message}
    if temperature is not None:
        fields["temperature"] = float(temperature)
    if max_tokens is not None:
        fields["max_tokens"] = int(max_tokens)
    if messages is not None:
        fields["messages"] = [to_chat_message(m) for m in messages]
    for key, value in extra.items():
        if key not in _TURN_FIELDS or key in fields:
            raise TypeError(f"unexpected keyword argument {key!r}: not a ConverseRequest field")
        if value is None:
            continue
        if key == "stop" and isinstance(value, str):
            value = [value]
        fields[key] = value
    return fields


def _count_request(text: str, model: str, messages: Iterable[MessageLike] | None) -> gateway_pb2.CountTokensRequest:
    if messages is not None and text:
        raise ValueError("give either text or messages, not both")
    request = gateway_pb2.CountTokensRequest(text=text, model=model)
    if messages is not None:
        request.messages.extend(to_chat_message(m) for m in messages)
    return request


def _seconds(value: Seconds | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    return seconds


def _duration(value: Seconds, name: str) -> duration_pb2.Duration:
    seconds = _seconds(value, name)
    assert seconds is not None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _configure_request(
    *,
    api_key: str | None,
    endpoint: str | None,
    organization: str | None,
    project: str | None,
    default_model: str | None,
    request_timeout: Seconds | None,
    max_attempts: int | None,
    initial_backoff: Seconds | None,
    max_backoff: Seconds | None,
) -> gateway_pb2.ConfigureRequest:
    request = gateway_pb2.ConfigureRequest()
    if api_key is not None:
        request.api_key = api_key
    if endpoint is not None:
        request.endpoint = endpoint
    if organization is not None:
        request.organization = organization
    if project is not None:
        request.project = project
    if default_model is not None:
        request.default_model = default_model
    if request_timeout is not None:
        request.request_timeout.CopyFrom(_duration(request_timeout, "request_timeout"))
    if max_attempts is not None:
        request.retry_policy.max_attempts = int(max_attempts)
    if initial_backoff is not None:
        request.retry_policy.initial_backoff.CopyFrom(_duration(initial_backoff, "initial_backoff"))
    if max_backoff is not None:
        request.retry_policy.max_backoff.CopyFrom(_duration(max_backoff, "max_backoff"))
    return request


_BUDGET_PERIODS: dict[str, gateway_pb2.BudgetPeriod.ValueType] = {
    "day": gateway_pb2.BUDGET_PERIOD_DAY,
    "month": gateway_pb2.BUDGET_PERIOD_MONTH,
}


def _budget_period(value: Any) -> gateway_pb2.BudgetPeriod.ValueType:
    """``"day"``/``"month"`` (or a ``BudgetPeriod`` value or name) as a ``BudgetPeriod``."""
    if isinstance(value, int) and not isinstance(value, bool):
        for period in _BUDGET_PERIODS.values():
            if period == value:
                return period
    elif isinstance(value, str):
        key = value.strip().lower().removeprefix("budget_period_")
        if key in _BUDGET_PERIODS:
            return _BUDGET_PERIODS[key]
    raise ValueError(f"unknown budget period {value!r}; use 'day' or 'month'")


def _client_limits(
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    budget_usd: float | None,
    budget_period: BudgetPeriodLike | None,
    max_in_flight: int | None = None,
) -> gateway_pb2.ClientLimits:
    """The ``ClientLimits`` with only the given limits set (an unset limit means no limit)."""
    limits = gateway_pb2.ClientLimits()
    if requests_per_minute is not None:
        limits.requests_per_minute = int(requests_per_minute)
    if tokens_per_minute is not None:
        limits.tokens_per_minute = int(tokens_per_minute)
    if budget_usd is not None:
        limits.budget_usd = float(budget_usd)
    if budget_period is not None:
        limits.budget_period = _budget_period(budget_period)
    if max_in_flight is not None:
        limits.max_in_flight = int(max_in_flight)
    return limits


def _pem(value: CertificateSource | None, name: str) -> bytes | None:
    """PEM bytes as given, or read from a file path (a str holding PEM text is used as is)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    raise TypeError(f"{name} must be PEM bytes or a file path, not {type(value).__name__}")


def _with_bearer(
    metadata: tuple[tuple[str, str | bytes], ...], token: str | None, name: str
) -> tuple[tuple[str, str | bytes], ...]:
    if not token:
        return metadata
    if not isinstance(token, str):
        raise TypeError(f"{name} must be a str, not {type(token).__name__}")
    if token != token.strip() or any(not (" " < c <= "~") for c in token):
        raise ValueError(f"{name} must be printable ASCII without spaces (strip the newline of a token file)")
    return (*metadata, ("authorization", f"Bearer {token}"))


def _code(err: grpc.RpcError) -> Any:
    code = getattr(err, "code", None)
    try:
        return code() if callable(code) else None
    except Exception:
        return None


# --------------------------------------------------------------------------- streams


S = TypeVar("S", gateway_pb2.ChatCompletionSummary, gateway_pb2.ConverseSummary)


class _StreamBase(Generic[S]):
    """What every stream class records: the text so far, the summary, how it ended."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._parts: list[str] = []
        self._refusal: list[str] = []
        self._finished = False
        self._cancelled = False
        #: The final summary (``ChatCompletionSummary``, or ``ConverseSummary`` for a conversation's
        #: turn); ``None`` until the stream ended with one.
        self.summary: S | None = None

    @property
    def text(self) -> str:
        """The content received so far."""
        return "".join(self._parts)

    @property
    def refusal(self) -> str:
        """The refusal text received so far (when the model refused)."""
        return "".join(self._refusal)

    @property
    def done(self) -> bool:
        """Whether the stream ended (completed, failed or cancelled)."""
        return self._finished


class _SyncStream(_StreamBase[S]):
    """A server stream of deltas then one summary, read synchronously (see :class:`ChatStream`)."""

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` cancelled the call."""
        return self._cancelled

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        while not self._finished:
            try:
                response = next(self._call)
            except StopIteration:
                self._finished = True
                raise
            except grpc.RpcError as err:
                self._finished = True
                if self._cancelled and _code(err) == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                raise GatewayError.from_rpc_error(err) from err
            except BaseException:  # KeyboardInterrupt and the like: close the upstream request
                self.cancel()
                raise
            event = response.WhichOneof("event")
            if event == "delta":
                if response.delta.refusal:
                    self._refusal.append(response.delta.refusal)
                if response.delta.content:
                    self._parts.append(response.delta.content)
                    return str(response.delta.content)
            elif event == "summary":
                self.summary = response.summary
        raise StopIteration

    def collect(self) -> str:
        """Read the rest of the stream and return the whole content."""
        for _ in self:
            pass
        return self.text

    def cancel(self) -> bool:
        """Cancel the call if it is still running; returns whether it was cancelled."""
        if self._finished or self._cancelled:
            return False
        self._cancelled = True
        return bool(self._call.cancel())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "done" if self._finished else "open"
        return f"<{type(self).__name__} {state}, {len(self.text)} chars>"


class ChatStream(_SyncStream[gateway_pb2.ChatCompletionSummary]):
    """The text deltas of a ``StreamChatCompletion`` call (synchronous).

    Iterate over it to get each piece of the answer as a ``str`` as it arrives. After the
    iteration ends, :attr:`summary` holds the final ``ChatCompletionSummary`` (finish
    reason, usage, cost). :meth:`cancel` (or leaving a ``with`` block early) cancels the
    call, which closes the upstream request; the iteration then simply ends. Errors are
    raised as :class:`GatewayError`.
    """


class ConverseStream(_SyncStream[gateway_pb2.ConverseSummary]):
    """The text deltas of a ``StreamConverse`` call (synchronous), read like a :class:`ChatStream`.

    :attr:`summary` is the ``ConverseSummary``: besides usage and cost, the turn's
    ``context_tokens``, ``trimmed_messages`` and the conversation's ``message_count``. The
    turn is kept by the gateway only when the stream ends with it: cancelling appends nothing.
    """


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


class _AsyncStream(_StreamBase[S]):
    """A server stream of deltas then one summary, read with asyncio (see :class:`AsyncChatStream`)."""

    @property
    def cancelled(self) -> bool:
        """Whether the call was cancelled by this side."""
        return self._cancelled

    def __aiter__(self) -> AsyncGenerator[str, None]:
        # A generator per loop: when the loop stops early the generator is closed and its
        # ``finally`` cancels the call, even when the stream object itself stays referenced.
        return self._deltas()

    async def _deltas(self) -> AsyncGenerator[str, None]:
        try:
            while True:
                try:
                    delta = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield delta
        finally:
            self.cancel()

    async def __anext__(self) -> str:
        while not self._finished:
            try:
                response = await self._call.read()
            except asyncio.CancelledError:
                if self._cancelled and not _task_cancelling():
                    self._finished = True  # we cancelled the call: the stream just ends
                    raise StopAsyncIteration from None
                self.cancel()
                raise
            except grpc.RpcError as err:
                self._finished = True
                if self._cancelled and _code(err) == grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                raise GatewayError.from_rpc_error(err) from err
            except BaseException:
                self.cancel()
                raise
            if response is aio.EOF:
                self._finished = True
                break
            event = response.WhichOneof("event")
            if event == "delta":
                if response.delta.refusal:
                    self._refusal.append(response.delta.refusal)
                if response.delta.content:
                    self._parts.append(response.delta.content)
                    return str(response.delta.content)
            elif event == "summary":
                self.summary = response.summary
        raise StopAsyncIteration

    async def collect(self) -> str:
        """Read the rest of the stream and return the whole content."""
        async for _ in self:
            pass
        return self.text

    def cancel(self) -> bool:
        """Cancel the call if it is still running; returns whether it was cancelled."""
        if self._finished or self._cancelled:
            return False
        self._cancelled = True
        return bool(self._call.cancel())

    async def aclose(self) -> None:
        """Stop reading: cancel the call if it is still running."""
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "done" if self._finished else "open"
        return f"<{type(self).__name__} {state}, {len(self.text)} chars>"


class AsyncChatStream(_AsyncStream[gateway_pb2.ChatCompletionSummary]):
    """The text deltas of a ``StreamChatCompletion`` call (asyncio).

    ``async for delta in stream`` yields each piece of the answer as a ``str``. When the
    consumer stops early (``break``, an exception, ``aclose()``, leaving ``async with``),
    the call is cancelled, which closes the upstream request. After the iteration ends,
    :attr:`summary` holds the final ``ChatCompletionSummary``. Errors are raised as
    :class:`GatewayError`; cancelling the awaiting task propagates ``CancelledError``.
    """


class AsyncConverseStream(_AsyncStream[gateway_pb2.ConverseSummary]):
    """The text deltas of a ``StreamConverse`` call (asyncio), read like an :class:`AsyncChatStream`.

    :attr:`summary` is the ``ConverseSummary`` (see :class:`ConverseStream`); a stream that is
    cancelled or fails appends nothing to the conversation.
    """


# --------------------------------------------------------------------------- clients


class _BaseClient:
    """Constructor, credentials and metadata shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        tls: bool = False,
        root_certificates: CertificateSource | None = None,
        private_key: CertificateSource | None = None,
        certificate_chain: CertificateSource | None = None,
        metadata: MetadataPairs = (),
        timeout: Seconds | None = None,
        options: Sequence[tuple[str, Any]] = (),
        load_balancing: str | None = None,
        trace_context: bool | None = None,
    ) -> None:
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (mutual TLS)")
        self._target = target
        self._tls = bool(tls or root_certificates or private_key or certificate_chain)
        self._credentials: Any = None
        if self._tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates, "root_certificates"),
                private_key=_pem(private_key, "private_key"),
                certificate_chain=_pem(certificate_chain, "certificate_chain"),
            )
        pairs = tuple((str(key), value) for key, value in metadata)
        if any(key.lower() == "authorization" for key, _ in pairs):
            raise ValueError("pass the tokens as token (client) and admin_token, not as metadata")
        # Each call carries at most one bearer token: the client token on data-plane calls,
        # the admin token on admin calls. Neither is kept anywhere else (repr shows none).
        self._metadata: tuple[tuple[str, str | bytes], ...] = _with_bearer(pairs, token, "token")
        self._admin_md: tuple[tuple[str, str | bytes], ...] = _with_bearer(pairs, admin_token, "admin_token")
        self._timeout = _seconds(timeout, "timeout")
        self._options = balancing_options(load_balancing, options)
        # The application's OpenTelemetry context on every call (tracing.py): by default when
        # opentelemetry-api is installed; trace_context=True without it is an error, not a no-op.
        if trace_context and not tracing.AVAILABLE:
            raise ValueError("trace_context=True needs opentelemetry-api: pip install 'gpt-grpc-client[otel]'")
        self._trace_context = tracing.AVAILABLE if trace_context is None else trace_context

    @property
    def target(self) -> str:
        """The gateway address."""
        return self._target

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS."""
        return self._tls

    def _timeout_for(self, timeout: Seconds | None) -> float | None:
        return _seconds(timeout, "timeout") if timeout is not None else self._timeout

    def _admin_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._admin_md

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r}, tls={self._tls})"


class Client(_BaseClient):
    """Synchronous client of the gateway; a context manager that closes its channel.

    Every failed call raises :class:`GatewayError` (chained to the original
    ``grpc.RpcError``). ``timeout`` is the default deadline of each call in seconds
    (``None``: no deadline); each method also takes its own ``timeout``.

    Tokens: ``token`` (a client token from :meth:`create_client`) is sent as
    ``authorization: Bearer <token>`` on every data-plane call (chat, streams,
    ``count_tokens``, ``list_models``, ``list_upstreams``, ``get_configuration``, ``get_usage``), and
    ``admin_token`` on the admin calls only (``configure`` and the client registry:
    ``create_client``, ``list_clients``, ``update_client``, ``revoke_client``); a call
    never carries both. The gateway needs a client token once a client exists.

    Several replicas: give a target that resolves to all of them (``dns:///gateway:50051``,
    ``ipv4:10.0.0.1:50051,10.0.0.2:50051``) and ``load_balancing="round_robin"``, which
    spreads calls over every replica that is up and reports SERVING (see
    :mod:`gpt_grpc_client.balancing`).

    Tracing: when ``opentelemetry-api`` is installed (the ``otel`` extra), every call carries
    the application's current OpenTelemetry context (``traceparent``...), so the gateway's
    spans join the application's trace (see :mod:`gpt_grpc_client.tracing`);
    ``trace_context=False`` turns that off.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        tls: bool = False,
        root_certificates: CertificateSource | None = None,
        private_key: CertificateSource | None = None,
        certificate_chain: CertificateSource | None = None,
        metadata: MetadataPairs = (),
        timeout: Seconds | None = None,
        options: Sequence[tuple[str, Any]] = (),
        load_balancing: str | None = None,
        trace_context: bool | None = None,
    ) -> None:
        super().__init__(
            target,
            token=token,
            admin_token=admin_token,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            metadata=metadata,
            timeout=timeout,
            options=options,
            load_balancing=load_balancing,
            trace_context=trace_context,
        )
        if self._credentials is not None:
            self._channel: Any = grpc.secure_channel(target, self._credentials, options=self._options)
        else:
            self._channel = grpc.insecure_channel(target, options=self._options)
        if self._trace_context:
            self._channel = grpc.intercept_channel(self._channel, tracing.TraceContextInterceptor())
        self._stub: Any = gateway_pb2_grpc.GPTServiceStub(self._channel)
        self._assistant_id: str | None = None
        self._assistant_lock = threading.Lock()

    @property
    def channel(self) -> grpc.Channel:
        """The underlying ``grpc.Channel``."""
        return self._channel

    @property
    def stub(self) -> gateway_pb2_grpc.GPTServiceStub:
        """The generated stub, for calls this client does not wrap."""
        return self._stub  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(
        self,
        method: Any,
        request: Any,
        timeout: Seconds | None,
        metadata: tuple[tuple[str, str | bytes], ...] | None = None,
    ) -> Any:
        try:
            return method(
                request,
                timeout=self._timeout_for(timeout),
                metadata=self._metadata if metadata is None else metadata,
            )
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err

    def chat_completion(
        self,
        model: str = DEFAULT_MODEL,
        system_message: str = "",
        user_message: str = "",
        temperature: float | None = 0.7,
        max_tokens: int | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> str:
        """Generate one answer and return its text (the original module's interface).

        ``messages`` replaces the system/user pair with a whole conversation; ``extra``
        sets other ``ChatCompletionRequest`` fields (``top_p``, ``stop``, ``seed``,
        ``response_format``, ``tools``...). ``temperature=None`` leaves it to the
        upstream; ``model=""`` uses the gateway's default model.
        """
        fields = _chat_fields(model, system_message, user_message, temperature, max_tokens, messages, extra)
        return self.chat(gateway_pb2.ChatCompletionRequest(**fields), timeout=timeout).content

    def chat(
        self,
        request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None = None,
        /,
        *,
        timeout: Seconds | None = None,
        **fields: Any,
    ) -> gateway_pb2.ChatCompletionResponse:
        """Generate one answer and return the whole ``ChatCompletionResponse``.

        Pass a request message, or the keyword arguments of :meth:`chat_completion`.
        """
        response: gateway_pb2.ChatCompletionResponse = self._unary(
            self._stub.ChatCompletion, _chat_request(request, fields), timeout
        )
        return response

    def stream_chat(
        self,
        request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None = None,
        /,
        *,
        timeout: Seconds | None = None,
        **fields: Any,
    ) -> ChatStream:
        """Start a streamed answer; iterate the returned :class:`ChatStream` for text deltas.

        Pass a request message, or the keyword arguments of :meth:`chat_completion`.
        ``timeout`` bounds the whole stream.
        """
        req = _stream_request(request, fields)
        try:
            call = self._stub.StreamChatCompletion(req, timeout=self._timeout_for(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err
        return ChatStream(call)

    def count_tokens(
        self,
        text: str = "",
        model: str = DEFAULT_MODEL,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
    ) -> int:
        """Count the tokens of ``text``, or the prompt tokens of ``messages``."""
        return int(self.count_tokens_detailed(text, model, messages=messages, timeout=timeout).token_count)

    def count_tokens_detailed(
        self,
        text: str = "",
        model: str = DEFAULT_MODEL,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.CountTokensResponse:
        """Like :meth:`count_tokens`, returning the count with its encoding."""
        response: gateway_pb2.CountTokensResponse = self._unary(
            self._stub.CountTokens, _count_request(text, model, messages), timeout
        )
        return response

    def configure(
        self,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        default_model: str | None = None,
        request_timeout: Seconds | None = None,
        max_attempts: int | None = None,
        initial_backoff: Seconds | None = None,
        max_backoff: Seconds | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Configuration:
        """Change the gateway's upstream settings (admin: needs the client's ``admin_token``).

        Only the arguments that are not ``None`` are sent; durations are seconds or
        ``timedelta``. Returns the settings now in force (API key masked).
        """
        request = _configure_request(
            api_key=api_key,
            endpoint=endpoint,
            organization=organization,
            project=project,
            default_model=default_model,
            request_timeout=request_timeout,
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )
        response: gateway_pb2.ConfigureResponse = self._unary(
            self._stub.Configure, request, timeout, self._admin_metadata()
        )
        return response.configuration

    def get_configuration(self, *, timeout: Seconds | None = None) -> gateway_pb2.Configuration:
        """The gateway's current settings (API key masked)."""
        response: gateway_pb2.GetConfigurationResponse = self._unary(
            self._stub.GetConfiguration, gateway_pb2.GetConfigurationRequest(), timeout
        )
        return response.configuration

    def list_models(self, *, timeout: Seconds | None = None) -> gateway_pb2.ListModelsResponse:
        """The models the gateway knows, with encoding, context window and prices."""
        response: gateway_pb2.ListModelsResponse = self._unary(
            self._stub.ListModels, gateway_pb2.ListModelsRequest(), timeout
        )
        return response

    def list_upstreams(self, *, timeout: Seconds | None = None) -> gateway_pb2.ListUpstreamsResponse:
        """Each upstream as the replica answering sees it: breaker state, calls in flight, recent error rate."""
        response: gateway_pb2.ListUpstreamsResponse = self._unary(
            self._stub.ListUpstreams, gateway_pb2.ListUpstreamsRequest(), timeout
        )
        return response

    def get_usage(self, client: str | None = None, *, timeout: Seconds | None = None) -> gateway_pb2.GetUsageResponse:
        """Requests, tokens and cost per model.

        Without ``client``: all traffic since the gateway started, or, with a client
        ``token``, that client's own usage. With ``client``: that client's persisted usage
        (its own token, or the admin token given as ``token``).
        """
        response: gateway_pb2.GetUsageResponse = self._unary(
            self._stub.GetUsage, gateway_pb2.GetUsageRequest(client=client or ""), timeout
        )
        return response

    def create_client(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: BudgetPeriodLike | None = None,
        max_in_flight: int | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.CreateClientResponse:
        """Define a client with its own token and limits (admin).

        Limits left ``None`` are unlimited; ``budget_usd`` needs ``budget_period``
        (``"day"`` or ``"month"``, UTC); ``max_in_flight`` caps the client's calls in flight
        at once (fleet-wide with a shared store). The response's ``token`` is shown this once (the
        gateway keeps only a hash). Once a client exists, data-plane calls need a token.
        """
        request = gateway_pb2.CreateClientRequest(
            name=name,
            limits=_client_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period, max_in_flight),
        )
        response: gateway_pb2.CreateClientResponse = self._unary(
            self._stub.CreateClient, request, timeout, self._admin_metadata()
        )
        return response

    def list_clients(
        self, include_revoked: bool = False, *, timeout: Seconds | None = None
    ) -> list[gateway_pb2.Client]:
        """The clients sorted by name, with their limits and current spend, never their tokens (admin)."""
        response: gateway_pb2.ListClientsResponse = self._unary(
            self._stub.ListClients,
            gateway_pb2.ListClientsRequest(include_revoked=include_revoked),
            timeout,
            self._admin_metadata(),
        )
        return list(response.clients)

    def update_client(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: BudgetPeriodLike | None = None,
        max_in_flight: int | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Client:
        """Replace a client's limits (admin): the limits not given are removed. Returns the client."""
        request = gateway_pb2.UpdateClientRequest(
            name=name,
            limits=_client_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period, max_in_flight),
        )
        response: gateway_pb2.UpdateClientResponse = self._unary(
            self._stub.UpdateClient, request, timeout, self._admin_metadata()
        )
        return response.client

    def revoke_client(self, name: str, *, timeout: Seconds | None = None) -> gateway_pb2.Client:
        """Revoke a client's token at once (admin). Returns the revoked client."""
        response: gateway_pb2.RevokeClientResponse = self._unary(
            self._stub.RevokeClient, gateway_pb2.RevokeClientRequest(name=name), timeout, self._admin_metadata()
        )
        return response.client

    # -- conversations (the context assistant) --------------------------------------------

    def create_conversation(
        self,
        model: str = "",
        system_message: str = "",
        *,
        max_context_tokens: int | None = None,
        trimming_policy: TrimmingPolicyLike | None = None,
        ttl: Seconds | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Conversation:
        """Start a conversation the gateway keeps; its ``id`` names it in :meth:`converse`.

        ``model=""`` is the gateway's default model. ``max_context_tokens`` caps each turn's
        prompt plus the answer's reservation (default: the model's context window; required
        for a model the gateway does not know). ``trimming_policy``: ``"trim_oldest"`` (the
        default: the oldest turns are left out) or ``"summarize"`` (the model summarizes them,
        one extra billed call). ``ttl``: time to live after the last turn (default 7 days).
        """
        request = _create_conversation_request(model, system_message, max_context_tokens, trimming_policy, ttl, labels)
        response: gateway_pb2.CreateConversationResponse = self._unary(self._stub.CreateConversation, request, timeout)
        return response.conversation

    def converse(
        self,
        conversation_id: str,
        user_message: str = "",
        *,
        messages: Iterable[MessageLike] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> gateway_pb2.ConverseResponse:
        """One turn of a conversation: the answer, with ``context_tokens`` and ``trimmed_messages``.

        Give ``user_message``, or ``messages``: the ``{"role": "tool", ...}`` results of the tool
        calls the last answer made. ``extra`` sets other ``ConverseRequest`` fields (``tools``,
        ``top_p``, ``stop``...). A second turn on the same conversation while one runs fails with
        ``ABORTED`` (``CONVERSATION_BUSY``).
        """
        fields = _turn_fields(conversation_id, user_message, temperature, max_tokens, messages, extra)
        response: gateway_pb2.ConverseResponse = self._unary(
            self._stub.Converse, gateway_pb2.ConverseRequest(**fields), timeout
        )
        return response

    def stream_converse(
        self,
        conversation_id: str,
        user_message: str = "",
        *,
        messages: Iterable[MessageLike] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> ConverseStream:
        """One turn of a conversation, streamed: iterate the :class:`ConverseStream` for text deltas."""
        fields = _turn_fields(conversation_id, user_message, temperature, max_tokens, messages, extra)
        try:
            call = self._stub.StreamConverse(
                gateway_pb2.StreamConverseRequest(**fields),
                timeout=self._timeout_for(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err
        return ConverseStream(call)

    def get_conversation(
        self, conversation_id: str, *, timeout: Seconds | None = None
    ) -> gateway_pb2.GetConversationResponse:
        """A conversation of this client's token, with its messages and its summary (if any)."""
        response: gateway_pb2.GetConversationResponse = self._unary(
            self._stub.GetConversation, gateway_pb2.GetConversationRequest(conversation_id=conversation_id), timeout
        )
        return response

    def list_conversations(
        self, *, page_size: int = 0, page_token: str = "", admin: bool = False, timeout: Seconds | None = None
    ) -> gateway_pb2.ListConversationsResponse:
        """One page of this client's conversations, newest first (``admin=True``: everyone's, with
        the ``admin_token``). Pass the page's ``next_page_token`` for the next one."""
        response: gateway_pb2.ListConversationsResponse = self._unary(
            self._stub.ListConversations,
            gateway_pb2.ListConversationsRequest(page_size=page_size, page_token=page_token),
            timeout,
            self._admin_metadata() if admin else None,
        )
        return response

    def iter_conversations(
        self, *, page_size: int = 0, admin: bool = False, timeout: Seconds | None = None
    ) -> Iterator[gateway_pb2.Conversation]:
        """Every conversation of :meth:`list_conversations`, page after page."""
        token = ""
        while True:
            page = self.list_conversations(page_size=page_size, page_token=token, admin=admin, timeout=timeout)
            yield from page.conversations
            token = page.next_page_token
            if not token:
                return

    def delete_conversation(self, conversation_id: str, *, admin: bool = False, timeout: Seconds | None = None) -> None:
        """Delete a conversation (``admin=True``: anyone's, with the ``admin_token``)."""
        self._unary(
            self._stub.DeleteConversation,
            gateway_pb2.DeleteConversationRequest(conversation_id=conversation_id),
            timeout,
            self._admin_metadata() if admin else None,
        )

    def context_assistant(self, prompt: str, *, timeout: Seconds | None = None) -> str:
        """The original module's context-aware assistant: answer ``prompt`` in this object's conversation.

        The first call creates a conversation on the gateway (the default model and policy);
        later calls continue it, so the model sees the earlier prompts and answers (the oldest
        left out once they no longer fit its context window). When that conversation has
        expired or was deleted, a new one starts. Thread-safe: turns run one at a time.
        """
        with self._assistant_lock:
            if self._assistant_id is not None:
                try:
                    return self.converse(self._assistant_id, prompt, timeout=timeout).content
                except GatewayError as err:
                    if err.reason != _NOT_FOUND:
                        raise
            self._assistant_id = self.create_conversation(timeout=timeout).id
            return self.converse(self._assistant_id, prompt, timeout=timeout).content

    @property
    def context_conversation_id(self) -> str | None:
        """The id of the conversation :meth:`context_assistant` keeps (``None`` before its first call)."""
        return self._assistant_id

    def reset_context(self, *, timeout: Seconds | None = None) -> None:
        """Forget :meth:`context_assistant`'s conversation (deleted on the gateway); the next call starts anew."""
        with self._assistant_lock:
            conversation_id, self._assistant_id = self._assistant_id, None
            if conversation_id is not None:
                try:
                    self.delete_conversation(conversation_id, timeout=timeout)
                except GatewayError as err:
                    if err.reason != _NOT_FOUND:
                        raise


class AsyncClient(_BaseClient):
    """asyncio client of the gateway; an async context manager that closes its channel.

    The channel is created on first use, inside the running event loop, so the client
    may be constructed anywhere. Every failed call raises :class:`GatewayError`;
    cancelling the awaiting task cancels the call and propagates ``CancelledError``.
    ``token`` and ``admin_token`` go on data-plane and admin calls as in :class:`Client`, and
    ``load_balancing`` spreads calls over several replicas and ``trace_context`` propagates the
    application's trace as there.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        tls: bool = False,
        root_certificates: CertificateSource | None = None,
        private_key: CertificateSource | None = None,
        certificate_chain: CertificateSource | None = None,
        metadata: MetadataPairs = (),
        timeout: Seconds | None = None,
        options: Sequence[tuple[str, Any]] = (),
        load_balancing: str | None = None,
        trace_context: bool | None = None,
    ) -> None:
        super().__init__(
            target,
            token=token,
            admin_token=admin_token,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            metadata=metadata,
            timeout=timeout,
            options=options,
            load_balancing=load_balancing,
            trace_context=trace_context,
        )
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False
        self._assistant_id: str | None = None
        self._assistant_lock: asyncio.Lock | None = None  # made in the event loop, on first use

    @property
    def channel(self) -> aio.Channel:
        """The underlying ``grpc.aio.Channel`` (created on first access)."""
        self._ensure_stub()
        return self._channel

    @property
    def stub(self) -> gateway_pb2_grpc.GPTServiceAsyncStub:
        """The generated stub, for calls this client does not wrap."""
        return self._ensure_stub()  # type: ignore[no-any-return]

    def _ensure_stub(self) -> Any:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stub is None:
            interceptors = tracing.async_interceptors() if self._trace_context else None
            if self._credentials is not None:
                self._channel = aio.secure_channel(
                    self._target, self._credentials, options=self._options, interceptors=interceptors
                )
            else:
                self._channel = aio.insecure_channel(self._target, options=self._options, interceptors=interceptors)
            self._stub = gateway_pb2_grpc.GPTServiceStub(self._channel)
        return self._stub

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; calls in flight are cancelled (after ``grace`` seconds)."""
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(grace)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(
        self,
        name: str,
        request: Any,
        timeout: Seconds | None,
        metadata: tuple[tuple[str, str | bytes], ...] | None = None,
    ) -> Any:
        method = getattr(self._ensure_stub(), name)
        try:
            return await method(
                request,
                timeout=self._timeout_for(timeout),
                metadata=self._metadata if metadata is None else metadata,
            )
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err

    async def chat_completion(
        self,
        model: str = DEFAULT_MODEL,
        system_message: str = "",
        user_message: str = "",
        temperature: float | None = 0.7,
        max_tokens: int | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> str:
        """Generate one answer and return its text; see :meth:`Client.chat_completion`."""
        fields = _chat_fields(model, system_message, user_message, temperature, max_tokens, messages, extra)
        response = await self.chat(gateway_pb2.ChatCompletionRequest(**fields), timeout=timeout)
        return response.content

    async def chat(
        self,
        request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None = None,
        /,
        *,
        timeout: Seconds | None = None,
        **fields: Any,
    ) -> gateway_pb2.ChatCompletionResponse:
        """Generate one answer and return the whole ``ChatCompletionResponse``."""
        response: gateway_pb2.ChatCompletionResponse = await self._unary(
            "ChatCompletion", _chat_request(request, fields), timeout
        )
        return response

    def stream_chat(
        self,
        request: gateway_pb2.ChatCompletionRequest | gateway_pb2.StreamChatCompletionRequest | None = None,
        /,
        *,
        timeout: Seconds | None = None,
        **fields: Any,
    ) -> AsyncChatStream:
        """Start a streamed answer (call it inside the event loop; it is not awaited).

        ``async for delta in client.stream_chat(...)`` yields the text deltas; see
        :class:`AsyncChatStream`.
        """
        req = _stream_request(request, fields)
        stub = self._ensure_stub()
        try:
            call = stub.StreamChatCompletion(req, timeout=self._timeout_for(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err
        return AsyncChatStream(call)

    async def count_tokens(
        self,
        text: str = "",
        model: str = DEFAULT_MODEL,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
    ) -> int:
        """Count the tokens of ``text``, or the prompt tokens of ``messages``."""
        response = await self.count_tokens_detailed(text, model, messages=messages, timeout=timeout)
        return int(response.token_count)

    async def count_tokens_detailed(
        self,
        text: str = "",
        model: str = DEFAULT_MODEL,
        *,
        messages: Iterable[MessageLike] | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.CountTokensResponse:
        """Like :meth:`count_tokens`, returning the count with its encoding."""
        response: gateway_pb2.CountTokensResponse = await self._unary(
            "CountTokens", _count_request(text, model, messages), timeout
        )
        return response

    async def configure(
        self,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        default_model: str | None = None,
        request_timeout: Seconds | None = None,
        max_attempts: int | None = None,
        initial_backoff: Seconds | None = None,
        max_backoff: Seconds | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Configuration:
        """Change the gateway's upstream settings; see :meth:`Client.configure`."""
        request = _configure_request(
            api_key=api_key,
            endpoint=endpoint,
            organization=organization,
            project=project,
            default_model=default_model,
            request_timeout=request_timeout,
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )
        response: gateway_pb2.ConfigureResponse = await self._unary(
            "Configure", request, timeout, self._admin_metadata()
        )
        return response.configuration

    async def get_configuration(self, *, timeout: Seconds | None = None) -> gateway_pb2.Configuration:
        """The gateway's current settings (API key masked)."""
        response: gateway_pb2.GetConfigurationResponse = await self._unary(
            "GetConfiguration", gateway_pb2.GetConfigurationRequest(), timeout
        )
        return response.configuration

    async def list_models(self, *, timeout: Seconds | None = None) -> gateway_pb2.ListModelsResponse:
        """The models the gateway knows, with encoding, context window and prices."""
        response: gateway_pb2.ListModelsResponse = await self._unary(
            "ListModels", gateway_pb2.ListModelsRequest(), timeout
        )
        return response

    async def list_upstreams(self, *, timeout: Seconds | None = None) -> gateway_pb2.ListUpstreamsResponse:
        """Each upstream as the replica answering sees it: breaker state, calls in flight, recent error rate."""
        response: gateway_pb2.ListUpstreamsResponse = await self._unary(
            "ListUpstreams", gateway_pb2.ListUpstreamsRequest(), timeout
        )
        return response

    async def get_usage(
        self, client: str | None = None, *, timeout: Seconds | None = None
    ) -> gateway_pb2.GetUsageResponse:
        """Requests, tokens and cost per model; see :meth:`Client.get_usage`."""
        response: gateway_pb2.GetUsageResponse = await self._unary(
            "GetUsage", gateway_pb2.GetUsageRequest(client=client or ""), timeout
        )
        return response

    async def create_client(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: BudgetPeriodLike | None = None,
        max_in_flight: int | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.CreateClientResponse:
        """Define a client with its own token and limits (admin); see :meth:`Client.create_client`."""
        request = gateway_pb2.CreateClientRequest(
            name=name,
            limits=_client_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period, max_in_flight),
        )
        response: gateway_pb2.CreateClientResponse = await self._unary(
            "CreateClient", request, timeout, self._admin_metadata()
        )
        return response

    async def list_clients(
        self, include_revoked: bool = False, *, timeout: Seconds | None = None
    ) -> list[gateway_pb2.Client]:
        """The clients sorted by name (admin); see :meth:`Client.list_clients`."""
        response: gateway_pb2.ListClientsResponse = await self._unary(
            "ListClients",
            gateway_pb2.ListClientsRequest(include_revoked=include_revoked),
            timeout,
            self._admin_metadata(),
        )
        return list(response.clients)

    async def update_client(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_usd: float | None = None,
        budget_period: BudgetPeriodLike | None = None,
        max_in_flight: int | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Client:
        """Replace a client's limits (admin); see :meth:`Client.update_client`."""
        request = gateway_pb2.UpdateClientRequest(
            name=name,
            limits=_client_limits(requests_per_minute, tokens_per_minute, budget_usd, budget_period, max_in_flight),
        )
        response: gateway_pb2.UpdateClientResponse = await self._unary(
            "UpdateClient", request, timeout, self._admin_metadata()
        )
        return response.client

    async def revoke_client(self, name: str, *, timeout: Seconds | None = None) -> gateway_pb2.Client:
        """Revoke a client's token at once (admin)."""
        response: gateway_pb2.RevokeClientResponse = await self._unary(
            "RevokeClient", gateway_pb2.RevokeClientRequest(name=name), timeout, self._admin_metadata()
        )
        return response.client

    # -- conversations (the context assistant) --------------------------------------------

    async def create_conversation(
        self,
        model: str = "",
        system_message: str = "",
        *,
        max_context_tokens: int | None = None,
        trimming_policy: TrimmingPolicyLike | None = None,
        ttl: Seconds | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: Seconds | None = None,
    ) -> gateway_pb2.Conversation:
        """Start a conversation the gateway keeps; see :meth:`Client.create_conversation`."""
        request = _create_conversation_request(model, system_message, max_context_tokens, trimming_policy, ttl, labels)
        response: gateway_pb2.CreateConversationResponse = await self._unary("CreateConversation", request, timeout)
        return response.conversation

    async def converse(
        self,
        conversation_id: str,
        user_message: str = "",
        *,
        messages: Iterable[MessageLike] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> gateway_pb2.ConverseResponse:
        """One turn of a conversation; see :meth:`Client.converse`."""
        fields = _turn_fields(conversation_id, user_message, temperature, max_tokens, messages, extra)
        response: gateway_pb2.ConverseResponse = await self._unary(
            "Converse", gateway_pb2.ConverseRequest(**fields), timeout
        )
        return response

    def stream_converse(
        self,
        conversation_id: str,
        user_message: str = "",
        *,
        messages: Iterable[MessageLike] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: Seconds | None = None,
        **extra: Any,
    ) -> AsyncConverseStream:
        """One turn, streamed (call it inside the event loop; it is not awaited): ``async for`` the deltas."""
        fields = _turn_fields(conversation_id, user_message, temperature, max_tokens, messages, extra)
        stub = self._ensure_stub()
        try:
            call = stub.StreamConverse(
                gateway_pb2.StreamConverseRequest(**fields),
                timeout=self._timeout_for(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise GatewayError.from_rpc_error(err) from err
        return AsyncConverseStream(call)

    async def get_conversation(
        self, conversation_id: str, *, timeout: Seconds | None = None
    ) -> gateway_pb2.GetConversationResponse:
        """A conversation with its messages; see :meth:`Client.get_conversation`."""
        response: gateway_pb2.GetConversationResponse = await self._unary(
            "GetConversation", gateway_pb2.GetConversationRequest(conversation_id=conversation_id), timeout
        )
        return response

    async def list_conversations(
        self, *, page_size: int = 0, page_token: str = "", admin: bool = False, timeout: Seconds | None = None
    ) -> gateway_pb2.ListConversationsResponse:
        """One page of conversations, newest first; see :meth:`Client.list_conversations`."""
        response: gateway_pb2.ListConversationsResponse = await self._unary(
            "ListConversations",
            gateway_pb2.ListConversationsRequest(page_size=page_size, page_token=page_token),
            timeout,
            self._admin_metadata() if admin else None,
        )
        return response

    async def delete_conversation(
        self, conversation_id: str, *, admin: bool = False, timeout: Seconds | None = None
    ) -> None:
        """Delete a conversation (``admin=True``: anyone's, with the ``admin_token``)."""
        await self._unary(
            "DeleteConversation",
            gateway_pb2.DeleteConversationRequest(conversation_id=conversation_id),
            timeout,
            self._admin_metadata() if admin else None,
        )

    async def context_assistant(self, prompt: str, *, timeout: Seconds | None = None) -> str:
        """The context-aware assistant: one conversation per client object; see :meth:`Client.context_assistant`."""
        if self._assistant_lock is None:
            self._assistant_lock = asyncio.Lock()
        async with self._assistant_lock:
            if self._assistant_id is not None:
                try:
                    return (await self.converse(self._assistant_id, prompt, timeout=timeout)).content
                except GatewayError as err:
                    if err.reason != _NOT_FOUND:
                        raise
            self._assistant_id = (await self.create_conversation(timeout=timeout)).id
            return (await self.converse(self._assistant_id, prompt, timeout=timeout)).content

    @property
    def context_conversation_id(self) -> str | None:
        """The id of the conversation :meth:`context_assistant` keeps (``None`` before its first call)."""
        return self._assistant_id
