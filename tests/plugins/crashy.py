"""Engine ``crashy``: the echo service, with failures on request.

``Echo`` with payload ``b"crash"`` raises ``RuntimeError("boom: ...")`` (a bug: the caller
gets INTERNAL and the actor is restarted); with ``b"invalid"`` it raises
:class:`~mesh.errors.InvalidArgument` (an expected error: the code is kept, no restart);
anything else is echoed, after ``delay_ms``. ``Stats`` answers how many responses this
actor (this engine instance) has produced, so a test can tell a restarted actor from the
old one. ``Count`` streams indexes, waiting ``interval_ms`` between them.
"""

from __future__ import annotations

from collections.abc import Iterator

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2

CRASH = b"crash"
INVALID = b"invalid"


class CrashyEngine(Engine):
    services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)

    def __init__(self, settings: object = None) -> None:
        super().__init__(settings)
        self.answered = 0

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        if request.payload == CRASH:
            raise RuntimeError(f"boom: crashy was asked to crash (request {ctx.request_id})")
        if request.payload == INVALID:
            raise InvalidArgument("crashy refuses the payload b'invalid'; send anything else")
        if request.delay_ms:
            ctx.cancelled.wait(request.delay_ms / 1000)
        self.answered += 1
        return echo_pb2.EchoResponse(payload=request.payload, node_id=ctx.node_id)

    def count(self, request: echo_pb2.CountRequest,
              ctx: Context) -> Iterator[echo_pb2.CountResponse]:
        for index in range(request.count):
            if index and request.interval_ms and ctx.cancelled.wait(request.interval_ms / 1000):
                return
            self.answered += 1
            yield echo_pb2.CountResponse(index=index)

    def stats(self, request: echo_pb2.StatsRequest, ctx: Context) -> echo_pb2.StatsResponse:
        return echo_pb2.StatsResponse(answered=self.answered, node_id=ctx.node_id)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="crashy", engine=CrashyEngine, pool_size=1)
