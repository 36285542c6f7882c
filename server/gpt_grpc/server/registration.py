"""Putting services on the server with lenient request decoding.

gRPC decodes each request with the deserializer the generated code registered;
bytes that are not the method's message make it raise inside gRPC, which
answers UNKNOWN ("Unexpected DecodeError ...": a Python exception name) and
logs a traceback, on every such call. Registered through here, such a request
reaches the service as an `Undecodable` instead:

- GPTService (ours) answers it INVALID_ARGUMENT inside its call envelope, with
  the call's access-log line;
- services written by others (health, reflection) are wrapped by `guarded`, which
  answers INVALID_ARGUMENT with the same details and logs one line per method,
  the first time only: garbage sent in a loop cannot fill the log.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

import grpc

from ..errors import FieldViolation, GatewayError, invalid
from .status import to_status

log = logging.getLogger("gpt_grpc.server")

Handlers = dict[str, grpc.RpcMethodHandler]


class Undecodable:
    """A request whose bytes are not the method's message."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> GatewayError:
        return invalid([FieldViolation("request", f"is not a valid {self.type_name} message")])


def _lenient(decode: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception:  # DecodeError, or whatever else the parser makes of garbage
            return Undecodable(type_name)

    return deserialize


def generated_handlers(add_to_server: Callable[[Any, Any], None], servicer: Any) -> Handlers:
    """The method handlers a generated `add_XServicer_to_server` would register, by method name."""
    captured: Handlers = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
            captured.update(handlers)

    add_to_server(servicer, _Capture())
    return captured


def lenient(handlers: Handlers, input_types: Mapping[str, str]) -> Handlers:
    """`handlers` whose request deserializers give an Undecodable instead of raising.

    `input_types`: the full name of each method's request message, for the error.
    """
    return {
        name: handler._replace(request_deserializer=_lenient(handler.request_deserializer, input_types[name]))
        for name, handler in handlers.items()
    }


def register(server: Any, service: str, handlers: Handlers) -> None:
    """Add the handlers of `service` as the generated code does (generic and registered)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def guarded(service: str, handlers: Handlers) -> Handlers:
    """Wrap the behaviours of a service written elsewhere to answer an Undecodable INVALID_ARGUMENT."""
    noted: set[str] = set()

    async def refuse(context: Any, request: Undecodable, path: str) -> NoReturn:
        if path not in noted:
            noted.add(path)
            log.warning(
                "%s: a request that is not a %s message, answered INVALID_ARGUMENT (further ones are not logged)",
                path,
                request.type_name,
            )
        status = to_status(request.error())
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: abort raises")

    def wrap(name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        path = f"/{service}/{name}"
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary_unary(handler.unary_unary, refuse, path))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_unary_stream(handler.unary_stream, refuse, path))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_stream_request(handler.stream_unary, refuse, path))
        return handler._replace(stream_stream=_stream_request(handler.stream_stream, refuse, path))

    return {name: wrap(name, handler) for name, handler in handlers.items()}


Refuse = Callable[[Any, Undecodable, str], Any]


def _unary_unary(behaviour: Callable[..., Any], refuse: Refuse, path: str) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await refuse(context, request, path)
        return await behaviour(request, context)

    return handle


def _unary_stream(behaviour: Callable[..., Any], refuse: Refuse, path: str) -> Callable[..., Any]:
    # A grpc.aio streaming behaviour either yields its responses or writes them with
    # context.write and returns; the wrapper keeps the behaviour's own style.
    if inspect.isasyncgenfunction(behaviour):

        async def yielding(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refuse(context, request, path)
            async for response in behaviour(request, context):
                yield response

        return yielding

    async def writing(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await refuse(context, request, path)
        return await behaviour(request, context)

    return writing


def _stream_request(behaviour: Callable[..., Any], refuse: Refuse, path: str) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await refuse(context, request, path)
            yield request

    if inspect.isasyncgenfunction(behaviour):

        async def yielding(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for response in behaviour(checked(requests, context), context):
                yield response

        return yielding

    async def returning(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behaviour(checked(requests, context), context)

    return returning
