"""Engine ``bad_task_types``: implements Parallel Mind's ``revo_task_types`` with an argument
the hook does not have; pluggy refuses it once the hook is declared."""

from __future__ import annotations

from typing import Any

from mesh.engine import EngineSpec, hookimpl
from revo_engine_echo import EchoEngine, EchoSettings


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="bad_task_types", engine=EchoEngine, settings=EchoSettings)


@hookimpl(optionalhook=True)
def revo_task_types(queue: str) -> dict[str, Any]:
    return {}
