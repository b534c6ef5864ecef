"""Creative: several genuinely different solutions to one problem, scored for quality and
novelty.

Engine ``creative`` serves ``revo.creative.v1.CreativeService`` (docs/creative.md). It calls
``ModelService`` (generation, judging, embeddings) and, where a node serves it,
``RecallService`` (solutions chosen before) through the mesh, as the caller.
"""

from __future__ import annotations

from mesh.engine import EngineSpec, hookimpl
from revo_engine_creative.engine import CreativeEngine
from revo_engine_creative.settings import CreativeSettings

__all__ = ["CreativeEngine", "CreativeSettings"]


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="creative", engine=CreativeEngine, settings=CreativeSettings,
                      max_pending=256)
