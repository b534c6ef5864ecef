"""Engine ``creative``: ``revo.creative.v1.CreativeService``.

An :class:`~mesh.engine.AsyncEngine`: a set is mostly waiting on model calls, all made at
once, so one instance per node serves every set from the node's event loop. The only
computing it does is on a handful of 384-dimension vectors per set (cosines, one 8 x 8
eigendecomposition), microseconds that do not hold the loop up.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

from google.protobuf import struct_pb2

from mesh.engine import AsyncEngine, Context
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mesh.models.budget import Budgets
from mesh.v1 import models_pb2, models_pb2_grpc
from revo_engine_creative.ask import read_ask
from revo_engine_creative.judge import judge_solutions
from revo_engine_creative.metrics import CreativeMeters
from revo_engine_creative.run import CHOICE_KIND, SetRun
from revo_engine_creative.sets import SetStore
from revo_engine_creative.settings import CreativeSettings
from revo_engine_creative.v1 import creative_pb2 as pb
from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc

__all__ = ["CreativeEngine"]

CATALOG_TTL_S = 2.0
"""How long the model catalog (``ListModels``: which models generate, their prices and
health) is reused between sets. The router still decides per call."""
_SET_ID = re.compile(r"^[0-9a-f]{32}$")
_MEMORY_TEXT_CHARS = 12_000
_SOLUTION_CHARS = 3_000  # in the memory's metadata: what history embeds (256 tokens' worth+)


class CreativeEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["CreativeService"],)
    settings: CreativeSettings

    async def start(self) -> None:
        runtime = self.runtime
        models = runtime.config.models
        # Paid models: sets reserve their estimate in the same budgets the router uses.
        self.budgets = (Budgets(runtime.nc, models)
                        if any(m.paid for m in models.catalog) else None)
        if self.budgets is not None:
            await self.budgets.start()
        self.sets = SetStore(runtime.nc, self.settings.set_ttl_s)
        await self.sets.start()
        self.meters = CreativeMeters(runtime.metrics)
        self._catalog: tuple[float, list[models_pb2.Model]] | None = None

    async def catalog(self, models: models_pb2_grpc.ModelServiceAsyncStub
                      ) -> list[models_pb2.Model]:
        """The model catalog, asked of ``ModelService`` at most every ``CATALOG_TTL_S``."""
        now = time.monotonic()
        if self._catalog is None or now - self._catalog[0] >= CATALOG_TTL_S:
            listed = await models.ListModels(models_pb2.ListModelsRequest(), timeout=10.0)
            self._catalog = (now, list(listed.models))
        return self._catalog[1]

    async def generate(self, request: pb.GenerateRequest,
                       ctx: Context) -> AsyncIterator[pb.GenerateResponse]:
        run = SetRun(self, read_ask(request, self.settings), ctx)
        async for event in run.stream():
            yield event

    async def generate_set(self, request: pb.GenerateSetRequest,
                           ctx: Context) -> pb.GenerateSetResponse:
        same = pb.GenerateRequest.FromString(request.SerializeToString())
        run = SetRun(self, read_ask(same, self.settings), ctx)
        out = pb.GenerateSetResponse()
        async for event in run.stream():
            if event.HasField("candidate"):
                out.candidates.append(event.candidate)
            else:
                out.summary.CopyFrom(event.summary)
        out.candidates.sort(key=lambda c: c.index)
        return out

    async def choose(self, request: pb.ChooseRequest, ctx: Context) -> pb.ChooseResponse:
        if not _SET_ID.match(request.set_id):
            raise InvalidArgument(violations=[("set_id", "must be a Summary.set_id (32 hex "
                                                         "digits)")])
        record = await self.sets.get(request.set_id)
        if record is None:
            raise NotFound(f"set {request.set_id} does not exist or has expired (sets are "
                           f"kept {self.settings.set_ttl_s:g} s)")
        if record["owner"] != ctx.caller:
            raise PermissionDenied("only the caller who generated a set may choose from it")
        candidates = {c["index"]: c for c in record["candidates"]}
        chosen = candidates.get(request.index)
        if chosen is None:
            raise InvalidArgument(violations=[("index", f"must be one of the set's candidate "
                                                        f"indexes {sorted(candidates)}, got "
                                                        f"{request.index}")])
        channel = self.runtime.channel(ctx)
        recall = recall_pb2_grpc.RecallServiceStub(channel)
        if not channel.serves(recall.Remember):
            raise FailedPrecondition("Choose remembers the solution in Perfect Recall, which "
                                     "no node serves: enable the recall engine")
        metadata = struct_pb2.Struct()
        metadata.update({
            "kind": CHOICE_KIND, "set_id": request.set_id, "index": chosen["index"],
            "perspective": chosen["perspective"], "model": chosen["model"],
            "quality": round(chosen["quality"], 4), "novelty": round(chosen["novelty"], 4),
            "innovation": round(chosen["innovation"], 4),
            "solution": chosen["text"][:_SOLUTION_CHARS]})
        text = (f"Problem: {record['problem']}\n\nChosen solution "
                f"({chosen['perspective']}): {chosen['text']}")[:_MEMORY_TEXT_CHARS]
        scope = (request.scope if request.HasField("scope")
                 else recall_pb2.Scope(kind=recall_pb2.SCOPE_KIND_USER))
        stored = await recall.Remember(recall_pb2.RememberRequest(memories=[
            recall_pb2.MemoryInput(scope=scope, text=text, metadata=metadata,
                                   client_id=f"creative-{request.set_id}-{request.index}")]),
            timeout=30.0)
        result = stored.results[0]
        return pb.ChooseResponse(memory_id=result.id, outcome=result.outcome)

    async def judge(self, request: pb.JudgeRequest, ctx: Context) -> pb.JudgeResponse:
        return await judge_solutions(self, request, ctx)

    async def list_strategies(self, request: pb.ListStrategiesRequest,
                              ctx: Context) -> pb.ListStrategiesResponse:
        return pb.ListStrategiesResponse(
            perspectives=[pb.Perspective(name=p.name, description=p.description)
                          for p in self.settings.perspectives],
            temperature_min=self.settings.temperature_min,
            temperature_max=self.settings.temperature_max)
