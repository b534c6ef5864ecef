"""Creative: several genuinely different solutions to one problem, scored for quality and
novelty.

Engine ``creative`` serves ``revo.creative.v1.CreativeService`` (docs/creative.md). It calls
``ModelService`` (generation, judging, embeddings) and, where a node serves it,
``RecallService`` (solutions chosen before) through the mesh, as the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.engine import EngineSpec, hookimpl, lazy_exports

if TYPE_CHECKING:
    from revo_engine_creative.engine import CreativeEngine
    from revo_engine_creative.settings import CreativeSettings

__all__ = ["CreativeEngine", "CreativeSettings"]
__getattr__ = lazy_exports(__name__, {"CreativeEngine": ".engine",
                                      "CreativeSettings": ".settings"})


@hookimpl
def revo_engine() -> EngineSpec:
    from revo_engine_creative.engine import CreativeEngine
    from revo_engine_creative.settings import CreativeSettings

    return EngineSpec(name="creative", engine=CreativeEngine, settings=CreativeSettings,
                      max_pending=256)
