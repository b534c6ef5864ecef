"""Engine ``clock`` (benchmarks only): the echo service, answering with the time its body
ran.

The workflows benchmark's peers time their no-op step by having it return its
``time.time()``; the mesh's no-op is Echo, which returns no clock. This engine is Echo
with one change, made after echo's own work: the payload it answers is ``repr(time.time())``.
The benchmark's node loads it instead of ``echo`` (``REVO_PLUGINS__EXTRA__CLOCK``), so the
step calls and the direct baseline go to the same engine.
"""

from __future__ import annotations

import time

from mesh.engine import Context, EngineSpec, hookimpl
from revo_engine_echo import EchoEngine, EchoSettings
from revo_engine_echo.v1 import echo_pb2

__all__ = ["ClockEngine", "served_at"]


class ClockEngine(EchoEngine):
    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        response = super().echo(request, ctx)
        response.payload = repr(time.time()).encode()
        return response


def served_at(payload: bytes) -> float:
    """The ``time.time()`` an answer of this engine carries."""
    return float(payload.decode())


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="clock", engine=ClockEngine, settings=EchoSettings)
