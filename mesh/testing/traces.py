"""Traces for tests and benchmarks: a loopback OTLP receiver, and spans in one shape.

:class:`OtlpReceiver` is what an OpenTelemetry collector is to a process that exports
spans: it serves the OTLP trace service over gRPC (``grpc_endpoint``) and over HTTP with
protobuf bodies (``http_endpoint``, ``POST /v1/traces``) on 127.0.0.1 and keeps what it
receives. Point ``tracing.endpoint`` of a node process at it to read that process's spans.
:func:`from_sdk` turns the spans of the SDK's ``InMemorySpanExporter`` (the test's own
process) into the same :class:`SpanRecord`, so one trace can be checked across processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["OtlpReceiver", "SpanRecord", "from_sdk", "tree"]


@dataclass(frozen=True)
class SpanRecord:
    """One finished span: ids as lowercase hex (``parent_id`` empty for a root)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    """``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER`` or ``INTERNAL``."""
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    service: str = ""
    """The ``service.name`` of the process that made it."""
    trace_state: str = ""
    """The W3C ``tracestate`` the span carries."""


def from_sdk(spans: Iterable[ReadableSpan]) -> list[SpanRecord]:
    """Spans from the SDK (``InMemorySpanExporter.get_finished_spans()``) as records."""
    records = []
    for span in spans:
        context, parent = span.get_span_context(), span.parent
        assert context is not None
        records.append(SpanRecord(
            trace_id=f"{context.trace_id:032x}", span_id=f"{context.span_id:016x}",
            parent_id=f"{parent.span_id:016x}" if parent is not None else "",
            name=span.name, kind=span.kind.name, status=span.status.status_code.name,
            status_message=span.status.description or "",
            attributes=dict(span.attributes or {}),
            service=str(span.resource.attributes.get("service.name", "")),
            trace_state=context.trace_state.to_header()))
    return records


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, which) if which else None


def _records(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRecord]:
    records = []
    for resource_spans in request.resource_spans:
        service = next((_value(a.value) for a in resource_spans.resource.attributes
                        if a.key == "service.name"), "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(SpanRecord(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(), name=span.name,
                    kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    status=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix(
                        "STATUS_CODE_"),
                    status_message=span.status.message,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    service=str(service), trace_state=span.trace_state))
    return records


def tree(spans: Sequence[SpanRecord], trace_id: str) -> list[SpanRecord]:
    """The spans of one trace, each after its parent (roots first), siblings by name."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    ordered: list[SpanRecord] = []
    level = sorted((s for s in mine if s.parent_id not in ids), key=lambda s: s.name)
    while level:
        ordered.extend(level)
        parents = {s.span_id for s in level}
        level = sorted((s for s in mine if s.parent_id in parents), key=lambda s: s.name)
    return ordered


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver.add(_records(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Receives OTLP traces on loopback (gRPC and HTTP); :attr:`spans` holds them.

    Use ``async with OtlpReceiver() as receiver:`` (or :meth:`start` / :meth:`stop`)."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self._grpc: grpc.aio.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_endpoint = ""
        """``http://127.0.0.1:<port>``: ``tracing.endpoint`` with ``protocol = "grpc"``."""
        self.http_endpoint = ""
        """``http://127.0.0.1:<port>/v1/traces``: with ``protocol = "http/protobuf"``."""

    def add(self, records: Sequence[SpanRecord]) -> None:
        with self._lock:
            self.spans.extend(records)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """The spans received so far of one trace (see :func:`tree` for their order)."""
        with self._lock:
            return tree(list(self.spans), trace_id)

    async def start(self) -> OtlpReceiver:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._grpc, self.grpc_endpoint = server, f"http://127.0.0.1:{port}"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.add(_records(
                    trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, name="otlp-http",
                         daemon=True).start()
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_port}/v1/traces"
        return self

    async def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            await self._grpc.stop(0)

    async def __aenter__(self) -> OtlpReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
