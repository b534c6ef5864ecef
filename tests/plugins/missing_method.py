"""Engine ``missing_method``: serves EchoService but has no ``count``: a load error."""

from __future__ import annotations

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from revo_engine_echo.v1 import echo_pb2


class HalfEchoEngine(Engine):
    services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(payload=request.payload)

    def stats(self, request: echo_pb2.StatsRequest, ctx: Context) -> echo_pb2.StatsResponse:
        return echo_pb2.StatsResponse()


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="missing_method", engine=HalfEchoEngine)
