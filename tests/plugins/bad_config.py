"""Engine ``bad_config``: its ``revo_configure`` always refuses the settings."""

from __future__ import annotations

from typing import Any

from mesh.engine import EngineSpec, hookimpl
from mesh.errors import ConfigError
from revo_engine_echo import EchoEngine


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="bad_config", engine=EchoEngine, pool_size=1)


@hookimpl
def revo_configure(settings: dict[str, Any]) -> Any:
    raise ConfigError("[engines.bad_config] needs 'model': the path of the model file to load")
