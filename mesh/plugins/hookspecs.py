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

from collections.abc import Callable, Mapping
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


# -- offer work to other engines ---------------------------------------------------------

@hookspec
def revo_task_types() -> Mapping[str, Callable[[bytes, Any], bytes]] | None:
    """Task types this plugin offers to the task engine (Parallel Mind, engine ``parallel``).

    Called on every enabled plugin when the task engine starts; a task submitted with
    ``TypedWork(type=NAME, payload=...)`` runs ``handler(payload, ctx)`` in a worker actor's
    thread and its return value (bytes) is the task's result. ``ctx`` is a
    ``revo_engine_parallel.TaskContext``: ``task_id``, ``owner``, ``attempt``,
    ``cancelled`` (a ``threading.Event`` set on Cancel or timeout; long work should check
    it), ``time_remaining()`` and ``progress(fraction, message)``. Raise
    :class:`~mesh.errors.RpcError` for a failure with its status (``INVALID_ARGUMENT`` and
    other non-retryable codes fail the task; ``UNAVAILABLE`` and the like are retried);
    any other exception counts as a crash and is retried until the task's attempts run
    out, then dead-lettered.

    :returns: a mapping of type name to handler, or None. Two plugins offering one name is
        a start error of the task engine.

    .. versionadded:: 0.2
    """
