"""The hooks a revo engine plugin implements: the plugin author's reference.

A plugin is a module (or object) registered under the entry point group ``revo.engines``;
the entry point's name must equal the engine's name. Hooks are called once per plugin, in
this order, by the node that loads it. Mark implementations with :data:`mesh.engine.hookimpl`.
An implementation may take fewer arguments than its spec; hooks only ever gain arguments.

Lifecycle:

1. **declare** -- :func:`revo_engine` says what the engine is.
2. **configure** -- :func:`revo_configure` validates the engine's settings.
3. **start** -- the node builds one :class:`~mesh.engine.Engine` per actor with the
   configured settings and calls its ``start()`` in the actor's thread.

A plugin whose import, declaration, configuration or start fails is reported with a status
(``load error``, ``config error``, ``start error``) and the node runs on without it.
"""

from __future__ import annotations

from typing import Any

import pluggy

from mesh.engine import EngineSpec, SettingsMap

hookspec = pluggy.HookspecMarker("revo")

PROJECT = "revo"


# -- declare -----------------------------------------------------------------------------

@hookspec(firstresult=True)
def revo_engine() -> EngineSpec | None:
    """Declare the engine this plugin provides.

    Stops at the first non-None result.

    :returns: an :class:`~mesh.engine.EngineSpec` naming the engine (equal to the entry
        point name), its :class:`~mesh.engine.Engine` class, the proto services it serves
        and its default pool size. Raising here is a *load error*.

    .. versionadded:: 0.1
    """


# -- configure ---------------------------------------------------------------------------

@hookspec(firstresult=True)
def revo_configure(settings: SettingsMap) -> Any:
    """Validate the engine's own settings and turn them into what its engines receive.

    Stops at the first non-None result.

    :param settings: the keys of ``[engines.<name>]`` in ``revo.toml`` (and
        ``REVO_ENGINES__<NAME>__<KEY>`` variables) other than the mesh's own
        (``pool_size``, ``max_pending``).
    :returns: any object; every engine instance receives it as ``Engine.settings``. Return
        None to pass ``settings`` through unchanged. Raise
        :class:`~mesh.errors.ConfigError` (or any exception) with a message naming the key
        to fix: the plugin gets *config error* and is not started.

    .. versionadded:: 0.1
    """
