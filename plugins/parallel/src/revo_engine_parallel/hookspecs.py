"""The hook Parallel Mind declares for other plugins: the reference for offering task types.

The ``parallel`` plugin adds this module to the mesh's hooks through ``revo_hookspecs``;
a plugin offering task types implements :func:`revo_task_types` with
``@mesh.engine.hookimpl(optionalhook=True)``, so that it still loads on a node without
Parallel Mind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mesh.engine import hookspec
from revo_engine_parallel.context import TaskContext

Handler = Callable[[bytes, TaskContext], bytes]
"""Runs one task: ``handler(payload, ctx)`` returns the task's result."""


@hookspec
def revo_task_types() -> Mapping[str, Handler] | None:
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

    :returns: a mapping of type name to handler, or None. Two plugins offering one name,
        or an implementation that raises, is a start error of the task engine.

    .. versionadded:: 0.2
    """
