"""Parallel Mind: durable priority tasks on JetStream with auto-scaling actor workers.

Engine ``parallel`` serves ``revo.tasks.v1.TaskService``. A task is a call to any unary
mesh method (made as its owner) or work of a type that a plugin offers through the
``revo_task_types`` hook, which this plugin declares (:mod:`revo_engine_parallel.hookspecs`);
see ``docs/tasks.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from mesh.engine import EngineSpec, hookimpl, lazy_exports
from revo_engine_parallel import hookspecs

if TYPE_CHECKING:
    from revo_engine_parallel.context import TaskContext
    from revo_engine_parallel.engine import TaskEngine
    from revo_engine_parallel.settings import ParallelSettings

__all__ = ["ParallelSettings", "TaskContext", "TaskEngine"]
__getattr__ = lazy_exports(__name__, {
    "ParallelSettings": ".settings", "TaskContext": ".context", "TaskEngine": ".engine"})


@hookimpl
def revo_hookspecs() -> Sequence[ModuleType]:
    return [hookspecs]


@hookimpl
def revo_engine() -> EngineSpec:
    from revo_engine_parallel.engine import TaskEngine
    from revo_engine_parallel.settings import ParallelSettings

    return EngineSpec(name="parallel", engine=TaskEngine, settings=ParallelSettings,
                      max_pending=4096)

