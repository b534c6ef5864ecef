"""The hooks a revo engine plugin implements: the plugin author's reference.

A plugin is a module (or object) registered under the entry point group ``revo.engines``;
the entry point's name must equal the engine's name. Hooks are called once per plugin, in
this order, by the node that loads it. Mark implementations with :data:`mesh.engine.hookimpl`.
An implementation may take fewer arguments than its spec; hooks only ever gain arguments.

Lifecycle:

1. **extend** -- :func:`revo_hookspecs` adds the hooks a plugin offers to other plugins
   (Parallel Mind's ``revo_task_types``), before any plugin's implementations are checked.
2. **declare** -- :func:`revo_engine` says what the engine is, including its settings model.
3. **configure** -- the mesh validates ``[engines.<name>]`` with that model (no hook).
4. **start** -- the node builds one :class:`~mesh.engine.Engine` per actor with the
   validated settings and calls its ``start()`` in the actor's thread.

Apart from nodes, the ``revo`` command line asks every installed plugin for commands of
its own (:func:`revo_commands`) when it is given a command it does not know itself.

A plugin whose import, declaration, configuration or start fails is reported with a status
(``load error``, ``config error``, ``start error``) and the node runs on without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from mesh.engine import EngineSpec, hookspec

PROJECT = "revo"


# -- extend ------------------------------------------------------------------------------

@hookspec
def revo_hookspecs() -> Sequence[ModuleType | type] | None:
    """Declare hooks that this plugin calls on other plugins.

    Called on every plugin before any implementation is checked, so a plugin may implement
    a hook declared by a plugin that loads after it. The plugin calls its hooks with
    ``runtime.plugins.each(spec, **kwargs)`` (typed by the spec), which asks each enabled
    plugin in turn. Plugins that implement such a hook mark it
    ``@hookimpl(optionalhook=True)``, so that they load where the declaring plugin is not
    installed.

    :returns: modules or classes holding ``@mesh.engine.hookspec`` functions named
        ``revo_*``, or None. Declaring a hook that another plugin or the mesh already
        declares is a *load error*.

    .. versionadded:: 0.3
    """


# -- declare -----------------------------------------------------------------------------

@hookspec(firstresult=True)
def revo_engine() -> EngineSpec | None:
    """Declare the engine this plugin provides.

    Stops at the first non-None result.

    :returns: an :class:`~mesh.engine.EngineSpec` naming the engine (equal to the entry
        point name), its :class:`~mesh.engine.Engine` class, its settings model, the proto
        services it serves and its default pool size. Raising here is a *load error*.

    .. versionadded:: 0.1
    """


# -- the command line --------------------------------------------------------------------

@hookspec
def revo_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this plugin's commands to ``revo``.

    Add one parser per command with ``mesh.cli_support.add_command(commands, "workflows",
    help=..., description=..., examples=[...])`` (every ``revo`` command's ``--help`` has
    a description and examples) and give it ``set_defaults(func=run)``, where
    ``run(args) -> int`` is the exit status (``mesh.cli_support``: 0 OK, 1 failed, 2
    usage, 3 unreachable, 4 refused; raise ``CommandFailed`` to print a message and exit
    with its code). A command that talks to the mesh opens a signed-in client with
    ``mesh.cli.operator_client(args)`` (the gateway of ``--address``, ``REVO_URL`` or the
    ``revo up`` running here; signed in with ``REVO_API_KEY``, ``REVO_TOKEN`` or
    ``REVO_USERNAME``/``REVO_PASSWORD``, else as the local operator) and raises
    ``mesh.cli.gateway_failure(args, error)`` for a call that failed. Called only when
    ``revo`` is given a command that is not its own, so that plugins are not imported for
    the built-in ones.

    :returns: None; the commands are added to ``commands``. Raising here is reported by
        ``revo`` naming the plugin.

    .. versionadded:: 0.4
    """
