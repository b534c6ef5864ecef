"""Engine ``loading``: an async engine that reports a load at start and finishes it only
when a test opens its gate, for tests of ``ENGINE_STATUS_LOADING``.

It serves ``revo.echo.v1.EchoService`` (load it alone: ``plugins.only = ["loading"]``).
``start`` reports 0 of :data:`TOTAL` items, then a task reports :data:`BEFORE_GATE` of them,
waits for :attr:`LoadingEngine.gate`, and reports the load over. Echo answers
``UNAVAILABLE`` until then, as an engine that cannot serve yet does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mesh.engine import AsyncEngine, Context, EngineSpec, hookimpl
from mesh.errors import Unavailable
from revo_engine_echo.v1 import echo_pb2 as pb

TOTAL = 5
BEFORE_GATE = 2
UNIT = "items"


class LoadingEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["EchoService"],)

    async def start(self) -> None:
        self.gate = asyncio.Event()
        """Set by the test: the load goes on to the end."""
        self.loaded = False
        self.runtime.report_loading(0, TOTAL, UNIT)
        self._task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        self.runtime.report_loading(BEFORE_GATE, TOTAL, UNIT)
        await self.gate.wait()
        self.runtime.report_loading(TOTAL, TOTAL, UNIT)
        self.loaded = True
        self.runtime.report_loaded()

    async def stop(self) -> None:
        self._task.cancel()

    async def echo(self, request: pb.EchoRequest, ctx: Context) -> pb.EchoResponse:
        if not self.loaded:
            raise Unavailable("still loading; retry shortly")
        return pb.EchoResponse(payload=request.payload, node_id=ctx.node_id)

    async def count(self, request: pb.CountRequest,
                    ctx: Context) -> AsyncIterator[pb.CountResponse]:
        for i in range(request.count):
            yield pb.CountResponse(index=i)

    async def stats(self, request: pb.StatsRequest, ctx: Context) -> Any:
        return pb.StatsResponse()


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="loading", engine=LoadingEngine)
