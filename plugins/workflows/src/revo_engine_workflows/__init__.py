"""The Coordinator: durable workflows that combine the mesh's engines (docs/workflows.md).

Engine ``workflows`` serves ``revo.workflows.v1.WorkflowService``.
"""

from __future__ import annotations

from mesh.engine import EngineSpec, hookimpl
from revo_engine_workflows.cli import revo_commands
from revo_engine_workflows.engine import WorkflowEngine, WorkflowSettings

__all__ = ["WorkflowEngine", "WorkflowSettings", "revo_commands"]


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="workflows", engine=WorkflowEngine, settings=WorkflowSettings,
                      max_pending=4096)
