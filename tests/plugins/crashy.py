"""Engine ``crashy``: the echo service, with failures on request.

``Echo`` with payload ``b"crash"`` raises ``RuntimeError("boom: ...")`` (a bug: the caller
gets INTERNAL and the actor is restarted); with ``b"invalid"`` it raises
:class:`~mesh.errors.InvalidArgument` (an expected error: the code is kept, no restart);
anything else is echoed, after ``delay_ms``. ``Stats`` answers how many responses this
actor (this engine instance) has produced, so a test can tell a restarted actor from the
old one. ``Count`` streams indexes, waiting ``interval_ms`` between them.
"""

from __future__ import annotations

from mesh.engine import Context, EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from revo_engine_echo import EchoEngine, EchoSettings
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2

CRASH = b"crash"
INVALID = b"invalid"


class CrashyEngine(EchoEngine):
    """The echo engine, failing on request; ``Count`` and ``Stats`` are echo's own."""

    def __init__(self, settings: object = None) -> None:
        super().__init__(EchoSettings())

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        if request.payload == CRASH:
            raise RuntimeError(f"boom: crashy was asked to crash (request {ctx.request_id})")
        if request.payload == INVALID:
            raise InvalidArgument("crashy refuses the payload b'invalid'; send anything else")
        return super().echo(request, ctx)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="crashy", engine=CrashyEngine, pool_size=1)
