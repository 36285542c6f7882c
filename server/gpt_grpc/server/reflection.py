"""Server reflection as current tools expect it: v1 and v1alpha, every symbol resolved.

grpcio-reflection serves only `grpc.reflection.v1alpha` (grpc/grpc#38576), while
grpcurl, ghz and the Node reflection client ask for `grpc.reflection.v1` first.
The two versions' messages are the same on the wire (v1 is v1alpha under a new
package), so grpcio-reflection's own servicer answers both; the v1 file
descriptor, which tools fetch to describe the v1 service, is v1alpha's with the
package renamed.

It also answers NOT_FOUND for a method (`gptgrpc.v1.GPTService.CountTokens`) or an
enum value qualified by its enum (`gptgrpc.v1.Role.ROLE_USER`): the Python
descriptor pool does not resolve them (grpc/grpc#34743), and without them
`grpcurl describe` of a method and ghz fail. `ReflectionPool` is handed to
grpcio-reflection through its public `pool` argument and resolves those too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from . import registration

V1ALPHA_SERVICE = v1alpha.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
SERVICE_NAMES = (V1_SERVICE, V1ALPHA_SERVICE)

T = TypeVar("T")


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 package (same messages and numbers)."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{reflection_pb2.DESCRIPTOR.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")  # v1alpha is deprecated in favour of v1, not v1 itself

    def rename(name: str) -> str:
        return new + name[len(old) :] if name.startswith(old) else name

    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # set only on message and enum fields
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    return proto


class ReflectionPool:
    """The default descriptor pool plus the v1 reflection file, resolving method and `Enum.VALUE` symbols.

    Has the methods grpcio-reflection's servicer calls on its `pool`.
    """

    def __init__(self, base: descriptor_pool.DescriptorPool | None = None) -> None:
        extra = descriptor_pool.DescriptorPool()
        extra.Add(v1_file())
        self._pools = (base or descriptor_pool.Default(), extra)

    def _first(self, find: Callable[[descriptor_pool.DescriptorPool], T], name: str) -> T:
        for pool in self._pools:
            try:
                return find(pool)
            except KeyError:
                continue
        raise KeyError(name)

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        return self._first(lambda pool: pool.FindFileByName(name), name)

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        return self._first(lambda pool: pool.FindMessageTypeByName(name), name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._first(lambda pool: pool.FindFileContainingSymbol(symbol), symbol)
        except KeyError:
            pass
        parent, _, last = symbol.rpartition(".")
        if parent and last:
            try:
                return self._first(lambda pool: pool.FindMethodByName(symbol), symbol).containing_service.file
            except KeyError:
                pass
            try:
                enum = self._first(lambda pool: pool.FindEnumTypeByName(parent), parent)
            except KeyError:
                pass
            else:
                if last in enum.values_by_name:
                    return enum.file
        raise KeyError(symbol)

    def FindExtensionByNumber(self, message: descriptor.Descriptor, number: int) -> descriptor.FieldDescriptor:
        return self._pool_of(message).FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        return self._pool_of(message).FindAllExtensions(message)

    def _pool_of(self, message: descriptor.Descriptor) -> descriptor_pool.DescriptorPool:
        for pool in self._pools:
            try:
                if pool.FindMessageTypeByName(message.full_name) is message:
                    return pool
            except KeyError:
                continue
        raise KeyError(message.full_name)


def enable(server: Any, service_names: Iterable[str]) -> None:
    """Serve reflection, v1 and v1alpha, listing `service_names` and both reflection services.

    Requests that are not reflection messages are answered INVALID_ARGUMENT (see registration.py).
    """
    names = sorted({*service_names, *SERVICE_NAMES})
    servicer = v1alpha.aio.ReflectionServicer(names, pool=ReflectionPool())
    handlers = registration.generated_handlers(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer)
    input_types = {name: reflection_pb2.ServerReflectionRequest.DESCRIPTOR.full_name for name in handlers}
    for service in SERVICE_NAMES:
        registration.register(
            server, service, registration.guarded(service, registration.lenient(handlers, input_types))
        )
