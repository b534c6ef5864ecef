"""A loopback OTLP trace receiver that counts what it receives, for benchmarks.

Run as ``python -m benchmarks.otlp_sink --address 127.0.0.1:PORT``: it serves
opentelemetry-proto's ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` over
gRPC (what ``tracing.protocol = "grpc"`` exports to), prints one line, ``otlp sink
listening on HOST:PORT loop=<loop>``, and serves until SIGTERM or SIGINT. It counts the
spans, export requests and request bytes it received and answers
``/revo.bench.OtlpSink/Stats`` (any request; the reply is those counts as JSON, no
protobuf), which :func:`read_stats` calls.

It keeps nothing but the counts: a benchmark runs it as its own process, on the same
machine as the servers it measures, and what it spends receiving competes with them for
the cores. :class:`mesh.testing.traces.OtlpReceiver` is the receiver for tests: it turns
every span into a Python record with its attributes, to check span trees, which costs
more CPU per span than an OTLP collector's receiver would and grows without bound.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from benchmarks.echo_server import serve_main, serve_until_signal

__all__ = ["STATS_METHOD", "CountingTraceService", "read_stats", "span_count"]

STATS_SERVICE = "revo.bench.OtlpSink"
STATS_METHOD = f"/{STATS_SERVICE}/Stats"


def span_count(request: trace_service_pb2.ExportTraceServiceRequest) -> int:
    """How many spans one export request carries."""
    return sum(len(scope.spans) for resource in request.resource_spans
               for scope in resource.scope_spans)


class CountingTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts every export and counts it: spans, requests and bytes."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self.bytes = 0

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += span_count(request)
        self.exports += 1
        self.bytes += request.ByteSize()
        return trace_service_pb2.ExportTraceServiceResponse()

    def stats(self) -> dict[str, int]:
        return {"spans": self.spans, "exports": self.exports, "bytes": self.bytes}


def read_stats(address: str, timeout: float = 5.0) -> dict[str, int]:
    """The counts of the sink at ``address`` (``host:port``); raises grpc.RpcError when it
    does not answer."""
    with grpc.insecure_channel(address) as channel:
        reply = channel.unary_unary(STATS_METHOD, None, None)(b"", timeout=timeout)
    stats: dict[str, int] = json.loads(reply)
    return stats


async def serve(address: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service = CountingTraceService()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        service, server)

    async def stats(request: bytes, context: Any) -> bytes:
        return json.dumps(service.stats()).encode()

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        STATS_SERVICE, {"Stats": grpc.unary_unary_rpc_method_handler(stats)})])
    try:
        await serve_until_signal(server, address, "otlp sink")
    finally:
        print(f"otlp sink stopped: {json.dumps(service.stats())}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return serve_main("benchmarks.otlp_sink", __doc__, serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
