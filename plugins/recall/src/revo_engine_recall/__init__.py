"""Perfect Recall: long-term memory on Milvus, searched through an in-process index.

Engine ``recall`` serves ``revo.recall.v1.RecallService`` (docs/recall.md).
"""

from __future__ import annotations

from mesh.engine import EngineSpec, hookimpl
from revo_engine_recall.engine import RecallEngine
from revo_engine_recall.settings import RecallSettings

__all__ = ["RecallEngine", "RecallSettings"]


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="recall", engine=RecallEngine, settings=RecallSettings,
                      max_pending=4096)
