"""Stopping asyncio tasks for certain, on Python 3.11.

On 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives as the future it waits
on completes (CPython gh-86296, fixed in 3.12): the task gets the result instead of
``CancelledError`` and carries on. nats-py waits on every request that way, so a task
cancelled at that instant may keep running, and ``await task`` after ``task.cancel()``
may wait for ever (seen in CI: a workflow run that had recorded its end waited on its
follower of outside events, kept its lease, and stayed RUNNING in the index).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CANCEL_RETRY_S", "cancel_and_wait"]

CANCEL_RETRY_S = 0.1
"""How long :func:`cancel_and_wait` gives a cancelled task before cancelling it again."""


async def cancel_and_wait(*tasks: asyncio.Future[Any], retry_s: float = CANCEL_RETRY_S
                          ) -> None:
    """Cancel ``tasks`` and return once every one is done, cancelling again any that
    swallowed the cancellation. Their outcomes are retrieved (so asyncio does not log an
    exception as never retrieved) and dropped. A task that catches every cancellation is
    stopped by nothing; this waits for it."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()
