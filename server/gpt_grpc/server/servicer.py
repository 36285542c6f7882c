"""GPTService: a thin layer translating protobuf <-> the GPT core.

Every handler is wrapped by `rpc`/`stream_rpc`, which admits the call, turns
a GatewayError into its status with details, turns anything unexpected into
INTERNAL (logged with its traceback, never sent), and lets cancellation
through untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from .. import tokens
from ..errors import FieldViolation, GatewayError, Reason, invalid
from ..gpt import GPT
from ..settings import Settings, SettingsUpdate
from ..state import StateFile
from . import convert
from .admission import Admission
from .auth import AdminAuth
from .status import to_status

log = logging.getLogger("gpt_grpc.server")

# Texts above this are counted on a worker thread (tokenizing is ~10 ms per 64K).
LARGE_TEXT_CHARS = 64_000

Req = TypeVar("Req")
Resp = TypeVar("Resp")
# grpc ships no type information: the context is typed loosely.
Context: TypeAlias = Any


async def _abort(context: Context, err: GatewayError) -> None:
    status = to_status(err)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _internal(method: str) -> GatewayError:
    log.exception("unexpected error in %s", method)
    return GatewayError(Reason.INTERNAL_ERROR, "internal error in the gateway")


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def rpc(
    fn: Callable[[Any, Req, Context], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """Wrap a unary handler: admission, error mapping, explicit status."""

    @functools.wraps(fn)
    async def handler(self: GPTServicer, request: Req, context: Context) -> Resp:
        try:
            self.admission.enter()
        except GatewayError as err:
            await _abort(context, err)
            raise  # unreachable: abort raises
        try:
            return await fn(self, request, context)
        except GatewayError as err:
            await _abort(context, err)
            raise
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            await _abort(context, _internal(fn.__name__))
            raise
        finally:
            self.admission.leave()

    handler.__gpt_grpc_wrapped__ = True  # type: ignore[attr-defined]
    return handler


def stream_rpc(
    fn: Callable[[Any, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Context], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler the same way."""

    @functools.wraps(fn)
    async def handler(self: GPTServicer, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            self.admission.enter()
        except GatewayError as err:
            await _abort(context, err)
            raise
        events = fn(self, request, context)
        try:
            async for event in events:
                yield event
        except GatewayError as err:
            await _abort(context, err)
            raise
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            await _abort(context, _internal(fn.__name__))
            raise
        finally:
            # Closing the inner generator closes the upstream request now,
            # not when the garbage collector gets to it.
            await events.aclose()  # type: ignore[attr-defined]
            self.admission.leave()

    handler.__gpt_grpc_wrapped__ = True  # type: ignore[attr-defined]
    return handler


class GPTServicer(pb_grpc.GPTServiceServicer):
    """The gptgrpc.v1.GPTService implementation."""

    def __init__(self, gpt: GPT, admin: AdminAuth, admission: Admission, state: StateFile | None = None) -> None:
        self.gpt = gpt
        self.admin = admin
        self.admission = admission
        self.state = state
        # One Configure at a time: validate, persist and swap as one step.
        self._configure_lock = asyncio.Lock()

    async def _apply(self, update: SettingsUpdate) -> Settings:
        async with self._configure_lock:
            settings = self.gpt.preview(update)
            if self.state is not None:
                try:
                    await asyncio.to_thread(self.state.save, settings)
                except OSError as exc:
                    log.error("could not write the state file: %s", exc.strerror)
                    raise GatewayError(
                        Reason.INTERNAL_ERROR, "could not persist the settings; nothing was changed"
                    ) from None
            self.gpt.install(settings)
            return settings

    @rpc
    async def ChatCompletion(
        self, request: pb.ChatCompletionRequest, context: Context
    ) -> pb.ChatCompletionResponse:
        result = await self.gpt.acomplete(convert.chat_request(request), deadline=_deadline(context))
        return convert.chat_response(result)

    @stream_rpc
    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: Context
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        events = self.gpt.astream(convert.chat_request(request), deadline=_deadline(context))
        try:
            async for event in events:
                yield convert.stream_event(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    @rpc
    async def CountTokens(self, request: pb.CountTokensRequest, context: Context) -> pb.CountTokensResponse:
        model = request.model or self.gpt.settings.default_model
        if request.messages and request.text:
            raise invalid([FieldViolation("text", "give either text or messages, not both")])
        if request.messages:
            count = tokens.count_messages(convert.count_messages(request.messages), model)
        elif len(request.text) > LARGE_TEXT_CHARS:
            # Megabytes take a while: keep the event loop serving other calls meanwhile.
            count = await asyncio.to_thread(tokens.count_text, request.text, model)
        else:
            count = tokens.count_text(request.text, model)
        return convert.token_count(count)

    @rpc
    async def Configure(self, request: pb.ConfigureRequest, context: Context) -> pb.ConfigureResponse:
        self.admin.check(context.invocation_metadata())
        # Shielded: once the file is written, the swap happens even if the caller left.
        settings = await asyncio.shield(self._apply(convert.settings_update(request)))
        log.info("configuration changed: %r", settings)
        return pb.ConfigureResponse(configuration=convert.configuration(settings))

    @rpc
    async def GetConfiguration(
        self, request: pb.GetConfigurationRequest, context: Context
    ) -> pb.GetConfigurationResponse:
        return pb.GetConfigurationResponse(configuration=convert.configuration(self.gpt.settings))

    @rpc
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        models = []
        for spec in self.gpt.catalog.models():
            price = self.gpt.pricing.price_for(spec.id)
            info = pb.ModelInfo(
                id=spec.id,
                encoding=spec.encoding,
                context_window=spec.context_window,
                max_output_tokens=spec.max_output_tokens,
                reasoning=spec.reasoning,
            )
            if price is not None:
                info.input_usd_per_million = float(price.input_usd_per_million)
                if price.cached_input_usd_per_million is not None:
                    info.cached_input_usd_per_million = float(price.cached_input_usd_per_million)
                info.output_usd_per_million = float(price.output_usd_per_million)
                info.price_source = price.source
            models.append(info)
        return pb.ListModelsResponse(models=models)

    @rpc
    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        models, total = self.gpt.usage.snapshot()
        since = timestamp_pb2.Timestamp()
        since.FromNanoseconds(int(self.gpt.usage.since * 1e9))
        return pb.GetUsageResponse(
            models=[convert.model_usage(m) for m in models], total=convert.model_usage(total), since=since
        )
