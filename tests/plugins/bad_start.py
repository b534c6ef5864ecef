"""Engine ``bad_start``: loads and configures, but every engine's ``start()`` fails."""

from __future__ import annotations

from collections.abc import Iterator

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from revo_engine_echo.v1 import echo_pb2

START_ERROR = "bad_start cannot open its model file /nonexistent/model.bin"


class BadStartEngine(Engine):
    services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)

    def start(self) -> None:
        raise RuntimeError(START_ERROR)

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(payload=request.payload)

    def count(self, request: echo_pb2.CountRequest,
              ctx: Context) -> Iterator[echo_pb2.CountResponse]:
        yield echo_pb2.CountResponse(index=0)

    def stats(self, request: echo_pb2.StatsRequest, ctx: Context) -> echo_pb2.StatsResponse:
        return echo_pb2.StatsResponse()


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="bad_start", engine=BadStartEngine, pool_size=1)
