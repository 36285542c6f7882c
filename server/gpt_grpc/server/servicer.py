"""GPTService: a thin layer translating protobuf <-> the engine.

Every handler is wrapped by `rpc`/`stream_rpc`, which gives the call a
request id, authorizes it (admin, client or open), admits it, turns a
GatewayError into its status with details, turns anything unexpected into
INTERNAL (logged with its traceback, never sent), lets cancellation through
(recorded as DEADLINE_EXCEEDED when it is the caller's deadline passing, as
CANCELLED otherwise), and finally writes one access-log line and the metrics.
With tracing on (tracing.py), each call is a server span, ended there too,
whose ids the access line carries.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from .. import tokens
from ..accounts import Accounts
from ..assistant import ContextAssistant
from ..chat import ChatRequest, ChatResult, Usage, check_model, validate_counted
from ..egress import EgressPolicy
from ..engine import Engine, PreparedCall
from ..errors import FieldViolation, GatewayError, Reason, invalid
from ..limits import NO_ESTIMATE, Pricer, Ticket
from ..settings import Settings, SettingsUpdate
from ..settings_sync import SettingsSync
from ..usage import ModelTotals
from . import conversation_rpcs, convert, logs, registration
from .admission import Admission
from .auth import OPEN, Authorizer, Caller
from .metrics import Metrics
from .registration import Undecodable
from .status import REASON_CODES, to_status

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is on (app.tracing_from_env)
    from opentelemetry.trace import Span

    from .tracing import Tracing

log = logging.getLogger("gpt_grpc.server")

# Texts above this are counted on a worker thread (tokenizing is ~10 ms per 64K).
LARGE_TEXT_CHARS = 64_000
# A CountTokens request may hold at most this much (serialized): 4 MiB is about a
# million tokens of English, the largest context window a catalogued model has,
# and bounds the CPU one call can take (~0.1 s) below the 16 MiB message limit.
MAX_COUNT_TOKENS_BYTES = 4 * 1024 * 1024
_MAX_UTF8_BYTES = 4  # per character
# A caller's x-request-id is used as given when it is this tame.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# When a call's deadline passes, grpc.aio cancels its handler just as it does when
# the caller cancels; what tells the two apart is how much of the deadline is left.
# The caller's own timer usually fires first and cancels the call on the wire (the
# same cancel as a real one), while the server's deadline lies later by the trip of
# the request's headers and by the rounding up of grpc-timeout (to 10 ms units from
# 1 s, 100 ms from 10 s: at most 1% of the timeout, gRPC's timeout encoding). On
# loopback that was up to 3 ms left (tests/test_deadlines.py); a cancellation with
# less than the slack below left (at most half of a short call's time) is the deadline.
DEADLINE_SLACK_SECONDS = 0.05
DEADLINE_SLACK_RATIO = 0.02

Req = TypeVar("Req")
Resp = TypeVar("Resp")
# grpc ships no type information: the context is typed loosely.
Context: TypeAlias = Any


class Access(enum.Enum):
    """Which credential a method needs."""

    OPEN = "open"  # data plane: a client token once clients exist
    CHARGED = "charged"  # data plane that costs money: also client limits and budget
    COUNTED = "counted"  # free, but a request against the client's request rate (CountTokens)
    ADMIN = "admin"  # the admin token


@dataclass(slots=True)
class Call:
    """What one call did, for its log line and metrics."""

    method: str
    request_id: str
    peer: str
    metadata: Sequence[tuple[str, str | bytes]] = ()  # the caller's, as the call began
    started: float = field(default_factory=time.perf_counter)
    caller: Caller = OPEN
    model: str = ""
    usage: Usage | None = None
    cost_usd: float | None = None
    attempts: int = 0
    first_chunk_at: float | None = None
    admitted: bool = False
    # Past the client's limits (or without a client): the call's usage is recorded at its end.
    metered: bool = False
    ticket: Ticket | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str | None = None
    # Further fields for the access-log line (a conversation's id, its context tokens...).
    fields: dict[str, Any] = field(default_factory=dict)
    upstream: str | None = None  # the configured upstream that answered (or failed last)
    extra_keys: tuple[str, ...] = ()  # extra_body_json's key names (never its values)
    span: Span | None = None  # the call's server span, when tracing is on
    # The caller's deadline (a time.monotonic() instant) and the time it gave the call; None without one.
    deadline: float | None = None
    budget: float | None = None

    def cancelled(self) -> None:
        """Record a cancellation: the deadline passing (DEADLINE_EXCEEDED) or the caller leaving (CANCELLED)."""
        if self.deadline is not None and self.budget is not None:
            left = self.deadline - time.monotonic()
            if left <= min(DEADLINE_SLACK_SECONDS, self.budget / 2) + DEADLINE_SLACK_RATIO * self.budget:
                self.code, self.reason = grpc.StatusCode.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED.value
                return
        self.code, self.reason = grpc.StatusCode.CANCELLED, None

    def took(self, result: ChatResult) -> None:
        self.model, self.usage, self.cost_usd, self.attempts, self.upstream = (
            result.model,
            result.usage,
            result.cost_usd,
            result.attempts,
            result.upstream,
        )


# Generated request ids: a random per-process prefix and a counter (unique, and no
# random-number syscall per call as uuid4 would make).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def _request_id(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


Handler = Callable[[Any, Req, Context, Call], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, Context, Call], AsyncIterator[Resp]]


def rpc(access: Access) -> Callable[[Handler[Req, Resp]], Callable[[Any, Req, Context], Awaitable[Resp]]]:
    """Wrap a unary handler: request id, authorization, admission, explicit status, log line."""

    def wrap(fn: Handler[Req, Resp]) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
        @functools.wraps(fn)
        async def handler(self: GPTServicer, request: Req, context: Context) -> Resp:
            call = self._begin(fn.__name__, context)
            try:
                await self._open(call, access, request, context)
                return await fn(self, request, context, call)
            except asyncio.CancelledError:
                call.cancelled()
                raise
            except Exception as exc:
                await self._fail(context, call, exc)
                raise  # unreachable: abort raises
            finally:
                self._finish(call, access)

        handler.__gpt_grpc_wrapped__ = True  # type: ignore[attr-defined]
        return handler

    return wrap


def stream_rpc(
    access: Access,
) -> Callable[[StreamHandler[Req, Resp]], Callable[[Any, Req, Context], AsyncIterator[Resp]]]:
    """Wrap a server-streaming handler the same way."""

    def wrap(fn: StreamHandler[Req, Resp]) -> Callable[[Any, Req, Context], AsyncIterator[Resp]]:
        @functools.wraps(fn)
        async def handler(self: GPTServicer, request: Req, context: Context) -> AsyncIterator[Resp]:
            call = self._begin(fn.__name__, context)
            events: AsyncIterator[Resp] | None = None
            try:
                await self._open(call, access, request, context)
                events = fn(self, request, context, call)
                async for event in events:
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                call.cancelled()
                raise
            except Exception as exc:
                await self._fail(context, call, exc)
                raise
            finally:
                # Closing the inner generator closes the upstream request now,
                # not when the garbage collector gets to it.
                if events is not None:
                    await events.aclose()  # type: ignore[attr-defined]
                self._finish(call, access)

        handler.__gpt_grpc_wrapped__ = True  # type: ignore[attr-defined]
        return handler

    return wrap


def add_to_server(servicer: GPTServicer, server: Any) -> None:
    """Register GPTService as the generated code does, with lenient request deserializers."""
    service = pb.DESCRIPTOR.services_by_name["GPTService"]
    handlers = registration.generated_handlers(pb_grpc.add_GPTServiceServicer_to_server, servicer)
    input_types = {method.name: method.input_type.full_name for method in service.methods}
    registration.register(server, service.full_name, registration.lenient(handlers, input_types))


def _counted_bytes(request: pb.CountTokensRequest) -> int:
    """The size of what CountTokens would count: the text in UTF-8, or the messages serialized.

    Inline media do not count toward it: an image costs a look at its header,
    not a tokenizer's time; media have their own bounds (media.py).
    """
    if request.messages:
        return sum(message.ByteSize() - _media_bytes(message) for message in request.messages)
    text = request.text
    if len(text) * _MAX_UTF8_BYTES <= MAX_COUNT_TOKENS_BYTES:
        return len(text)  # small enough whatever its characters: no need to encode it
    return len(text.encode("utf-8", "surrogatepass"))


def _media_bytes(message: pb.ChatMessage) -> int:
    total = 0
    for part in message.parts:
        which = part.WhichOneof("part")
        if which == "image":
            total += len(part.image.data) + len(part.image.url)
        elif which == "audio":
            total += len(part.audio.data)
        elif which == "file":
            total += len(part.file.data)
    return total


def _internal(method: str) -> GatewayError:
    log.exception("unexpected error in %s", method)
    return GatewayError(Reason.INTERNAL_ERROR, "internal error in the gateway")


class GPTServicer(pb_grpc.GPTServiceServicer):
    """The gptgrpc.v1.GPTService implementation."""

    def __init__(
        self,
        engine: Engine,
        authorizer: Authorizer,
        admission: Admission,
        *,
        accounts: Accounts,
        metrics: Metrics,
        settings_sync: SettingsSync,
        pricer: Pricer,
        assistant: ContextAssistant,
        egress: EgressPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.assistant = assistant
        self.tracing = tracing
        self.egress = egress or EgressPolicy()
        self.authorizer = authorizer
        self.admission = admission
        self.accounts = accounts
        self.metrics = metrics
        self.settings_sync = settings_sync
        self.pricer = pricer

    # -- the call envelope ---------------------------------------------------------

    def _begin(self, method: str, context: Context) -> Call:
        metadata = context.invocation_metadata() or ()  # read once: each read builds the tuple anew
        call = Call(method=method, request_id=_request_id(metadata), peer=context.peer() or "", metadata=metadata)
        remaining = context.time_remaining()
        if remaining is not None:
            call.deadline, call.budget = time.monotonic() + remaining, remaining
        if self.tracing is not None:
            call.span = self.tracing.server_span(method, metadata, call.request_id)
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        return call

    async def _authorize(self, call: Call, access: Access, context: Context) -> None:
        metadata = call.metadata
        if access is Access.ADMIN:
            call.caller = self.authorizer.admin_call(metadata, call.peer)
        else:
            call.caller = await self.authorizer.data_call(metadata, call.peer)
        self.admission.enter()
        self.metrics.call_began()
        call.started = time.perf_counter()
        if access is Access.COUNTED and call.caller.client is not None:
            try:  # free upstream: held to the client's request rate alone (CHARGED calls: _meter)
                await self.accounts.admit(call.caller.client, NO_ESTIMATE, requests_only=True)
            except GatewayError:
                self._leave()
                raise
        call.admitted = True

    async def _open(self, call: Call, access: Access, request: object, context: Context) -> None:
        await self._authorize(call, access, context)
        if isinstance(request, Undecodable):
            raise request.error()

    async def _meter(self, call: Call, prepared: PreparedCall) -> None:
        """The client's limits: reserve the call's estimate (one store round trip), or raise why not."""
        client = call.caller.client
        if client is not None:
            estimate = self.pricer.estimate(client.name, client.limits, prepared.model, prepared.body)
            call.ticket = await self.accounts.admit(client, estimate)
        call.metered = True

    async def _fail(self, context: Context, call: Call, exc: Exception) -> None:
        """End the call with the status of `exc`: its own, or INTERNAL for a bug."""
        err = exc if isinstance(exc, GatewayError) else _internal(call.method)
        call.code, call.reason = REASON_CODES[err.reason], err.reason.value
        call.attempts = call.attempts or err.attempts
        call.upstream = call.upstream or err.upstream
        await self._abort(context, call, err)

    def _leave(self) -> None:
        self.admission.leave()
        self.metrics.call_ended()

    async def _abort(self, context: Context, call: Call, err: GatewayError) -> None:
        status = to_status(err)
        metadata = (*status.trailing_metadata, ("x-request-id", call.request_id))
        await context.abort(status.code, status.details, metadata)

    def _finish(self, call: Call, access: Access) -> None:
        code, reason = call.code, call.reason
        elapsed = time.perf_counter() - call.started
        if call.admitted:
            self._leave()
        m = self.metrics
        m.observe_call(call.method, code.name, elapsed)
        client = call.caller.name
        if access is Access.CHARGED:
            if call.usage is not None:
                m.observe_usage(call.model, client, call.usage, call.cost_usd)
            # A call refused before it ran (token, limits, budget) used nothing upstream.
            if call.metered:
                self.accounts.record(
                    client, call.model, call.usage, self._cost(call), code == grpc.StatusCode.OK, call.ticket
                )
        if call.first_chunk_at is not None:
            m.first_chunk_seconds.observe(call.first_chunk_at - call.started)
        fields: dict[str, Any] = {
            "method": call.method,
            "status": code.name,
            "latency_ms": round(elapsed * 1000, 3),
            "request_id": call.request_id,
            "client": client or ("admin" if call.caller.admin else None),
            "peer": call.peer,
        }
        if reason:
            fields["reason"] = reason
        if call.model:
            fields["model"] = logs.clip(call.model)
        if call.usage is not None:
            fields["prompt_tokens"] = call.usage.prompt_tokens
            fields["completion_tokens"] = call.usage.completion_tokens
        if call.cost_usd is not None:
            fields["cost_usd"] = call.cost_usd
        if call.attempts:
            fields["attempts"] = call.attempts
        if call.upstream:
            fields["upstream"] = call.upstream
        if call.extra_keys:
            fields["extra_body_keys"] = logs.key_names(call.extra_keys)
        fields.update(call.fields)
        if call.span is not None and self.tracing is not None:
            fields.update(self.tracing.log_fields(call.span))
            self.tracing.end_server_span(call.span, code, reason)
        logs.access(fields)

    def _cost(self, call: Call) -> float | None:
        """The call's cost; for a model without a price, the operator's fallback price if set."""
        if call.cost_usd is not None or call.usage is None:
            return call.cost_usd
        return self.pricer.fallback_cost(call.usage)

    async def _prepare(self, request: Any, call: Call) -> PreparedCall:
        return await self._prepare_chat(convert.chat_request(request, call.request_id), call)

    async def _prepare_chat(self, chat: ChatRequest, call: Call) -> PreparedCall:
        """Validate and resolve a chat call, then hold it to the client's limits (`_meter`)."""
        call.model = chat.model  # as asked, until the engine has resolved it
        if chat.extra:
            call.extra_keys = tuple(chat.extra)
        prepared = self.engine.prepare(chat, trace=call.span)
        call.model = prepared.model.name
        await self._meter(call, prepared)
        return prepared

    # -- data plane -----------------------------------------------------------------

    @rpc(Access.CHARGED)
    async def ChatCompletion(
        self, request: pb.ChatCompletionRequest, context: Context, call: Call
    ) -> pb.ChatCompletionResponse:
        result = await self.engine.acomplete(await self._prepare(request, call), deadline=call.deadline)
        call.took(result)
        return convert.chat_response(result)

    @stream_rpc(Access.CHARGED)
    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: Context, call: Call
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        events = self.engine.astream(await self._prepare(request, call), deadline=call.deadline)
        try:
            async for event in events:
                if isinstance(event, ChatResult):
                    call.took(event)
                elif call.first_chunk_at is None:
                    call.first_chunk_at = time.perf_counter()
                yield convert.stream_event(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    @rpc(Access.COUNTED)
    async def CountTokens(self, request: pb.CountTokensRequest, context: Context, call: Call) -> pb.CountTokensResponse:
        name = self.engine.model_name(request.model)
        violations = []
        bad_model = check_model(name)
        if bad_model:
            violations.append(FieldViolation("model", bad_model))
        else:
            call.model = name
        too_large = False
        if request.messages and request.text:
            violations.append(FieldViolation("text", "give either text or messages, not both"))
        elif _counted_bytes(request) > MAX_COUNT_TOKENS_BYTES:
            too_large = True
            where = "messages" if request.messages else "text"
            violations.append(FieldViolation(where, f"must be at most {MAX_COUNT_TOKENS_BYTES // 1024 // 1024} MiB"))
        # Every violation at once: the messages' own too (unless there are too many bytes of them to read).
        messages: list[dict[str, Any]] = []
        if request.messages and not too_large:
            messages, problems = convert.count_messages(request.messages)
            violations.extend(problems)
        violations.extend(validate_counted(messages))
        if violations:
            raise invalid(violations)
        model = self.engine.models.resolve(name, priced=False)
        if request.messages:
            count = tokens.count_messages(
                messages, model.name, encoding=model.encoding, image_billing=model.image_tokens
            )
        elif len(request.text) > LARGE_TEXT_CHARS:
            # Megabytes take a while: keep the event loop serving other calls meanwhile.
            count = await tokens.count_text_off_loop(request.text, model.name, encoding=model.encoding)
        else:
            count = tokens.count_text(request.text, model.name, encoding=model.encoding)
        return convert.token_count(count)

    @rpc(Access.OPEN)
    async def GetConfiguration(
        self, request: pb.GetConfigurationRequest, context: Context, call: Call
    ) -> pb.GetConfigurationResponse:
        return pb.GetConfigurationResponse(configuration=convert.configuration(self.engine.settings))

    @rpc(Access.OPEN)
    async def ListModels(self, request: pb.ListModelsRequest, context: Context, call: Call) -> pb.ListModelsResponse:
        models = []
        for spec in self.engine.models.catalog.models():
            price = self.engine.models.pricing.price_for(spec.id)
            info = pb.ModelInfo(
                id=spec.id,
                encoding=spec.encoding,
                context_window=spec.context_window,
                max_output_tokens=spec.max_output_tokens,
                reasoning=spec.reasoning,
                verbosity=spec.verbosity,
            )
            billing = spec.image_tokens
            if billing is not None and billing.patch_multiplier is not None:
                info.image_patch_multiplier = billing.patch_multiplier
            elif billing is not None:
                info.image_base_tokens = billing.base
                info.image_tile_tokens = billing.tile
            if price is not None:
                info.input_usd_per_million = float(price.input_usd_per_million)
                if price.cached_input_usd_per_million is not None:
                    info.cached_input_usd_per_million = float(price.cached_input_usd_per_million)
                info.output_usd_per_million = float(price.output_usd_per_million)
                info.price_source = price.source
            models.append(info)
        return pb.ListModelsResponse(models=models)

    @rpc(Access.OPEN)
    async def ListUpstreams(
        self, request: pb.ListUpstreamsRequest, context: Context, call: Call
    ) -> pb.ListUpstreamsResponse:
        return convert.upstreams(*self.engine.upstreams())

    @rpc(Access.OPEN)
    async def GetUsage(self, request: pb.GetUsageRequest, context: Context, call: Call) -> pb.GetUsageResponse:
        own = call.caller.name
        name = request.client or own
        if own is not None and name != own:
            raise GatewayError(Reason.CLIENT_FORBIDDEN, "a client token may only read its own usage")
        models: list[ModelTotals]
        if name:
            models, total, since_seconds = await self.accounts.usage(name)
        else:
            models, total, since_seconds = await self.accounts.all_usage()
        since = timestamp_pb2.Timestamp()
        since.FromNanoseconds(int(since_seconds * 1e9))
        return pb.GetUsageResponse(
            models=[convert.model_usage(m) for m in models],
            total=convert.model_usage(total),
            since=since,
            client=name or "",
        )

    # -- conversations (conversation_rpcs.py) ------------------------------------------

    @rpc(Access.COUNTED)
    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: Context, call: Call
    ) -> pb.CreateConversationResponse:
        return await conversation_rpcs.create(self, request, call)

    @rpc(Access.CHARGED)
    async def Converse(self, request: pb.ConverseRequest, context: Context, call: Call) -> pb.ConverseResponse:
        return await conversation_rpcs.converse(self, request, call)

    @stream_rpc(Access.CHARGED)
    async def StreamConverse(
        self, request: pb.StreamConverseRequest, context: Context, call: Call
    ) -> AsyncIterator[pb.StreamConverseResponse]:
        events = conversation_rpcs.stream_converse(self, request, call)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    @rpc(Access.COUNTED)
    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context, call: Call
    ) -> pb.GetConversationResponse:
        return await conversation_rpcs.get(self, request, call)

    @rpc(Access.COUNTED)
    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context, call: Call
    ) -> pb.ListConversationsResponse:
        return await conversation_rpcs.list_page(self, request, call)

    @rpc(Access.COUNTED)
    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: Context, call: Call
    ) -> pb.DeleteConversationResponse:
        return await conversation_rpcs.delete(self, request, call)

    # -- admin ----------------------------------------------------------------------

    async def _apply(self, update: SettingsUpdate) -> Settings:
        return await self.settings_sync.apply(update)

    @rpc(Access.ADMIN)
    async def Configure(self, request: pb.ConfigureRequest, context: Context, call: Call) -> pb.ConfigureResponse:
        # Shielded: once the record is stored, the swap happens even if the caller left.
        settings = await asyncio.shield(self._apply(convert.settings_update(request)))
        log.info("configuration changed: %r", settings)
        return pb.ConfigureResponse(configuration=convert.configuration(settings))

    @rpc(Access.ADMIN)
    async def CreateClient(
        self, request: pb.CreateClientRequest, context: Context, call: Call
    ) -> pb.CreateClientResponse:
        record, token = await self.accounts.create(request.name, convert.limits(request.limits))
        log.info("client created: %s", record.name)
        return pb.CreateClientResponse(client=convert.client(record), token=token)

    @rpc(Access.ADMIN)
    async def ListClients(self, request: pb.ListClientsRequest, context: Context, call: Call) -> pb.ListClientsResponse:
        records = await self.accounts.list(include_revoked=request.include_revoked)
        return pb.ListClientsResponse(clients=[convert.client(r) for r in records])

    @rpc(Access.ADMIN)
    async def UpdateClient(
        self, request: pb.UpdateClientRequest, context: Context, call: Call
    ) -> pb.UpdateClientResponse:
        record = await self.accounts.update(request.name, convert.limits(request.limits))
        log.info("client limits changed: %s", record.name)
        return pb.UpdateClientResponse(client=convert.client(record))

    @rpc(Access.ADMIN)
    async def RevokeClient(
        self, request: pb.RevokeClientRequest, context: Context, call: Call
    ) -> pb.RevokeClientResponse:
        record = await self.accounts.revoke(request.name)
        log.info("client revoked: %s", record.name)
        return pb.RevokeClientResponse(client=convert.client(record))
