"""The echo engine: the smallest complete revo engine, the template in docs/plugins.md."""

from collections.abc import Iterator

from pydantic import BaseModel

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from revo_engine_echo.v1 import echo_pb2 as pb


class EchoSettings(BaseModel):
    prefix: bytes = b""  # [engines.echo] prefix: put before every echoed payload


class EchoEngine(Engine):  # answers with what it is sent
    services = (pb.DESCRIPTOR.services_by_name["EchoService"],)
    settings: EchoSettings
    answered = 0  # this actor's own count: each actor has its own instance

    def echo(self, request: pb.EchoRequest, ctx: Context) -> pb.EchoResponse:
        if request.delay_ms > 60_000:
            raise InvalidArgument(violations=[("delay_ms", "must be at most 60000")])
        ctx.cancelled.wait(request.delay_ms / 1000)  # wakes early on cancel or deadline
        self.answered += 1
        return pb.EchoResponse(payload=self.settings.prefix + request.payload,
                               caller=ctx.caller, role=ctx.role, node_id=ctx.node_id,
                               idempotency_key=ctx.idempotency_key)

    def count(self, request: pb.CountRequest, ctx: Context) -> Iterator[pb.CountResponse]:
        if not 1 <= request.count <= 100_000 or request.interval_ms > 60_000:
            raise InvalidArgument("count must be between 1 and 100000, interval_ms at most 60000")
        for index in range(request.count):
            if index and ctx.cancelled.wait(request.interval_ms / 1000):
                return
            self.answered += 1
            yield pb.CountResponse(index=index)

    def stats(self, request: pb.StatsRequest, ctx: Context) -> pb.StatsResponse:
        return pb.StatsResponse(answered=self.answered, node_id=ctx.node_id)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="echo", engine=EchoEngine, settings=EchoSettings, version="0.1.0")
