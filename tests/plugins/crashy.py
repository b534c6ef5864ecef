"""Engine ``crashy``: the echo service, with failures on request.

``Echo`` with payload ``b"crash"`` raises ``RuntimeError("boom: ...")`` (a bug: the caller
gets INTERNAL and the actor is restarted); with ``b"invalid"`` it raises
:class:`~mesh.errors.InvalidArgument` (an expected error: the code is kept, no restart);
anything else is echoed, after ``delay_ms``. ``Stats`` answers how many responses this
actor (this engine instance) has produced, so a test can tell a restarted actor from the
old one. ``Count`` streams indexes, waiting ``interval_ms`` between them, and counts the
streams that ended because their caller cancelled them (not at their deadline); ``Echo``
with payload ``b"streams-cancelled?"`` answers that number, in decimal. ``Echo`` counts
the calls whose wait (``delay_ms``) their caller's cancel cut short; ``b"calls-cancelled?"``
answers that number.
"""

from __future__ import annotations

from collections.abc import Iterator

from mesh.engine import Context, EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from revo_engine_echo import EchoEngine, EchoSettings
from revo_engine_echo.v1 import echo_pb2

CRASH = b"crash"
INVALID = b"invalid"
STREAMS_CANCELLED = b"streams-cancelled?"
CALLS_CANCELLED = b"calls-cancelled?"


class CrashyEngine(EchoEngine):
    """The echo engine, failing on request; ``Count`` and ``Stats`` are echo's own."""

    def __init__(self, settings: object = None) -> None:
        super().__init__(EchoSettings())
        self.streams_cancelled = 0
        self.calls_cancelled = 0

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        if request.payload == STREAMS_CANCELLED:
            return echo_pb2.EchoResponse(payload=str(self.streams_cancelled).encode(),
                                         node_id=ctx.node_id)
        if request.payload == CRASH:
            raise RuntimeError(f"boom: crashy was asked to crash (request {ctx.request_id})")
        if request.payload == INVALID:
            raise InvalidArgument("crashy refuses the payload b'invalid'; send anything else")
        if request.payload == CALLS_CANCELLED:
            return echo_pb2.EchoResponse(payload=str(self.calls_cancelled).encode(),
                                         node_id=ctx.node_id)
        try:
            return super().echo(request, ctx)
        finally:
            if ctx.cancelled.is_set() and not ctx.expired:
                self.calls_cancelled += 1

    def count(self, request: echo_pb2.CountRequest,
              ctx: Context) -> Iterator[echo_pb2.CountResponse]:
        try:
            yield from super().count(request, ctx)
        finally:  # a stream stopped early is closed here (GeneratorExit) once it is dropped
            if ctx.cancelled.is_set() and not ctx.expired:
                self.streams_cancelled += 1


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="crashy", engine=CrashyEngine, pool_size=1)
