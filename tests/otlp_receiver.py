"""A test OTLP receiver on loopback: what a collector would get from the gateway.

It serves OpenTelemetry's TraceService over gRPC (the `opentelemetry-proto`
package's generated classes) and `POST /v1/traces` over HTTP (protobuf), and
keeps every span it receives, flattened into `ReceivedSpan` records (ids as W3C
hex, attributes as Python values, the resource's attributes beside them).

    async with OtlpReceiver() as receiver:
        ...  # OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint (or .http_endpoint)
        spans = await receiver.wait_for(lambda spans: len(spans) >= 2)

`python -m tests.otlp_receiver --port-file F` runs the gRPC receiver alone as a
process (the benchmark's collector), counting spans instead of keeping them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SPAN_KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUS_CODES = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # SERVER, CLIENT, ...
    start_unix_nano: int
    end_unix_nano: int
    attributes: dict[str, Any]
    events: tuple[ReceivedEvent, ...]
    status_code: str  # UNSET, OK, ERROR
    status_message: str
    resource: dict[str, Any]
    transport: str  # "grpc" or "http"


def value(any_value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a Python value (arrays as tuples)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in pairs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        start_unix_nano=span.start_time_unix_nano,
                        end_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            ReceivedEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events
                        ),
                        status_code=STATUS_CODES.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        resource=resource,
                        transport=transport,
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    """TraceService over gRPC and /v1/traces over HTTP on loopback ports; `keep=False` only counts."""

    host: str = "127.0.0.1"
    grpc_port: int = 0
    keep: bool = True
    spans: list[ReceivedSpan] = field(default_factory=list)
    span_count: int = 0
    requests: int = 0
    _server: Any = None
    _http: web.AppRunner | None = None
    http_port: int = 0

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The base URL: the exporter appends /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self.host}:{self.http_port}"

    def _take(self, request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> None:
        self.requests += 1
        if self.keep:
            received = flatten(request, transport)
            self.spans.extend(received)
            self.span_count += len(received)
        else:
            self.span_count += sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)

    async def start(self, http: bool = True) -> None:
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                receiver._take(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)  # type: ignore[no-untyped-call]
        self.grpc_port = self._server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        await self._server.start()
        if http:
            app = web.Application()
            app.router.add_post("/v1/traces", self._http_export)
            self._http = web.AppRunner(app, access_log=None)
            await self._http.setup()
            sock = socket.socket()
            sock.bind((self.host, 0))
            self.http_port = sock.getsockname()[1]
            await web.SockSite(self._http, sock).start()

    async def _http_export(self, request: web.Request) -> web.Response:
        body = trace_service_pb2.ExportTraceServiceRequest()
        body.ParseFromString(await request.read())
        self._take(body, "http")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self._http is not None:
            await self._http.cleanup()

    async def __aenter__(self) -> OtlpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Poll (bounded) until `predicate(spans)`; the spans, or TimeoutError with what arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.spans):
            if loop.time() > deadline:
                names = [s.name for s in self.spans]
                raise TimeoutError(f"spans not received within {timeout} s; got {names}")
            await asyncio.sleep(0.02)
        return self.spans


async def _serve(port_file: Path, port: int) -> None:
    receiver = OtlpReceiver(grpc_port=port, keep=False)
    await receiver.start(http=False)
    await asyncio.to_thread(port_file.write_text, str(receiver.grpc_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"otlp receiver: {receiver.span_count} spans in {receiver.requests} exports", flush=True)
    with contextlib.suppress(Exception):
        await receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="OTLP/gRPC trace receiver that counts spans (tests, bench)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port_file, args.port))


if __name__ == "__main__":
    main()
