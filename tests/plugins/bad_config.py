"""Engine ``bad_config``: its settings model needs a key that no test configures."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mesh.engine import EngineSpec, hookimpl
from revo_engine_echo import EchoEngine


class BadConfigSettings(BaseModel):
    model: str = Field(description="the path of the model file to load")


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="bad_config", engine=EchoEngine, settings=BadConfigSettings,
                      pool_size=1)
