"""Parallel Mind: durable priority tasks on JetStream with auto-scaling actor workers.

Engine ``parallel`` serves ``revo.tasks.v1.TaskService``. A task is a call to any unary
mesh method (made as its owner) or work of a type that a plugin offers through the
``revo_task_types`` hook, which this plugin declares (:mod:`revo_engine_parallel.hookspecs`);
see ``docs/tasks.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from mesh.engine import EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from revo_engine_parallel import hookspecs
from revo_engine_parallel.context import TaskContext
from revo_engine_parallel.engine import TaskEngine
from revo_engine_parallel.settings import ParallelSettings

__all__ = ["ParallelSettings", "TaskContext", "TaskEngine", "builtin_types"]


def _noop(payload: bytes, ctx: TaskContext) -> bytes:
    return payload


def _sleep(payload: bytes, ctx: TaskContext) -> bytes:
    """Wait ``payload`` milliseconds (ASCII digits), or until cancelled."""
    try:
        ms = int(payload.decode() or "0")
    except ValueError:
        raise InvalidArgument(f"sleep takes milliseconds as ASCII digits, got "
                              f"{payload[:20]!r}") from None
    interrupted = ctx.cancelled.wait(max(0, ms) / 1000)
    return b"interrupted" if interrupted else b""


def builtin_types() -> Mapping[str, Any]:
    """``noop`` (answers its payload) and ``sleep`` (waits its payload's milliseconds)."""
    return {"noop": _noop, "sleep": _sleep}


@hookimpl
def revo_hookspecs() -> Sequence[ModuleType]:
    return [hookspecs]


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="parallel", engine=TaskEngine, settings=ParallelSettings,
                      max_pending=4096)

