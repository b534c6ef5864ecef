"""Engine ``failing_task_types``: its ``revo_task_types`` raises when asked."""

from __future__ import annotations

from typing import Any

from mesh.engine import EngineSpec, hookimpl
from revo_engine_echo import EchoEngine, EchoSettings

FAILURE = "failing_task_types cannot reach its task registry"


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="failing_task_types", engine=EchoEngine, settings=EchoSettings)


@hookimpl(optionalhook=True)
def revo_task_types() -> dict[str, Any]:
    raise RuntimeError(FAILURE)
