"""The echo engine: the smallest complete revo engine, and the template for plugin authors.

Copy this distribution to start an engine of your own: a proto service under ``proto/``,
its generated code under ``_gen/`` (``python -m mesh.codegen``), an :class:`Engine`
subclass, and the two hooks below, registered under the ``revo.engines`` entry point.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from mesh.errors import ConfigError, InvalidArgument
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2

__version__ = "0.1.0"

MAX_DELAY_MS = 60_000
MAX_COUNT = 100_000


class EchoSettings(BaseModel):
    """``[engines.echo]`` keys of this plugin (besides the mesh's pool_size, max_pending)."""

    model_config = ConfigDict(extra="forbid")

    prefix: bytes = Field(b"", description="bytes put before every echoed payload")


class EchoEngine(Engine):
    """Answers with what it is sent. One instance per actor."""

    services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)
    settings: EchoSettings

    def __init__(self, settings: EchoSettings) -> None:
        super().__init__(settings)
        self.answered = 0

    def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        if request.delay_ms > MAX_DELAY_MS:
            raise InvalidArgument(f"delay_ms must be at most {MAX_DELAY_MS}, "
                                  f"got {request.delay_ms}")
        if request.delay_ms:
            # Wakes early when the call is cancelled or its deadline passes.
            ctx.cancelled.wait(request.delay_ms / 1000)
        self.answered += 1
        return echo_pb2.EchoResponse(payload=self.settings.prefix + request.payload,
                                     caller=ctx.caller, role=ctx.role,
                                     node_id=ctx.node_id)

    def count(self, request: echo_pb2.CountRequest,
              ctx: Context) -> Iterator[echo_pb2.CountResponse]:
        if not 1 <= request.count <= MAX_COUNT:
            raise InvalidArgument(f"count must be between 1 and {MAX_COUNT}, got {request.count}")
        if request.interval_ms > MAX_DELAY_MS:
            raise InvalidArgument(f"interval_ms must be at most {MAX_DELAY_MS}")
        for index in range(request.count):
            if index and request.interval_ms and ctx.cancelled.wait(request.interval_ms / 1000):
                return
            self.answered += 1
            yield echo_pb2.CountResponse(index=index)

    def stats(self, request: echo_pb2.StatsRequest, ctx: Context) -> echo_pb2.StatsResponse:
        return echo_pb2.StatsResponse(answered=self.answered, node_id=ctx.node_id)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="echo", engine=EchoEngine, version=__version__, pool_size=2)


@hookimpl
def revo_configure(settings: dict[str, Any]) -> EchoSettings:
    try:
        return EchoSettings.model_validate(settings)
    except ValueError as exc:
        raise ConfigError(f"[engines.echo]: {exc}") from exc
