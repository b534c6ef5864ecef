"""Engine ``unknown_hook``: a valid engine that also implements a hook revo does not have."""

from __future__ import annotations

from mesh.engine import EngineSpec, hookimpl
from revo_engine_echo import EchoEngine


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="unknown_hook", engine=EchoEngine)


@hookimpl
def revo_not_a_hook() -> None:
    """Misspelt or from a newer revo: the host must refuse the plugin, naming the hook."""
