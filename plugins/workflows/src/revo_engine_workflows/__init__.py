"""The Coordinator: durable workflows that combine the mesh's engines (docs/workflows.md).

Engine ``workflows`` serves ``revo.workflows.v1.WorkflowService``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.engine import EngineSpec, hookimpl, lazy_exports
from revo_engine_workflows.cli import revo_commands

if TYPE_CHECKING:
    from revo_engine_workflows.engine import WorkflowEngine, WorkflowSettings

__all__ = ["WorkflowEngine", "WorkflowSettings", "revo_commands"]
__getattr__ = lazy_exports(__name__, {"WorkflowEngine": ".engine",
                                      "WorkflowSettings": ".engine"})


@hookimpl
def revo_engine() -> EngineSpec:
    from revo_engine_workflows.engine import WorkflowEngine, WorkflowSettings

    return EngineSpec(name="workflows", engine=WorkflowEngine, settings=WorkflowSettings,
                      max_pending=4096)
