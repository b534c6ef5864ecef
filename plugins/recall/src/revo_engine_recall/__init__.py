"""Perfect Recall: long-term memory on Milvus, searched through an in-process index.

Engine ``recall`` serves ``revo.recall.v1.RecallService`` (docs/recall.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.engine import EngineSpec, hookimpl, lazy_exports

if TYPE_CHECKING:
    from revo_engine_recall.engine import RecallEngine
    from revo_engine_recall.settings import RecallSettings

__all__ = ["RecallEngine", "RecallSettings"]
__getattr__ = lazy_exports(__name__, {"RecallEngine": ".engine", "RecallSettings": ".settings"})


@hookimpl
def revo_engine() -> EngineSpec:
    from revo_engine_recall.engine import RecallEngine
    from revo_engine_recall.settings import RecallSettings

    return EngineSpec(name="recall", engine=RecallEngine, settings=RecallSettings,
                      max_pending=4096)
