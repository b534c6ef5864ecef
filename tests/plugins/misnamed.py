"""A plugin loaded as ``misnamed`` whose engine calls itself ``other``: a load error."""

from __future__ import annotations

from mesh.engine import EngineSpec, hookimpl
from revo_engine_echo import EchoEngine


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="other", engine=EchoEngine)
