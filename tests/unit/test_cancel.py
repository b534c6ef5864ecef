"""``mesh.runtime.cancel.cancel_and_wait`` stops a task that swallowed a cancellation."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mesh.runtime.cancel import cancel_and_wait


async def _follower(ready: asyncio.Future[None], inner: asyncio.Future[int],
                    rounds: list[int]) -> None:
    """A loop like a run's follower of outside events: it waits with asyncio.wait_for,
    and goes round again after each wait."""
    ready.set_result(None)
    rounds.append(await asyncio.wait_for(inner, 10))
    while True:
        await asyncio.sleep(0.01)
        rounds.append(0)


async def _swallowing_follower() -> tuple[asyncio.Task[None], list[int]]:
    """A follower task that got a cancel at the instant its wait_for's future completed:
    on Python 3.11 (CPython gh-86296) it takes the result and carries on."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    inner: asyncio.Future[int] = loop.create_future()
    rounds: list[int] = []
    task = loop.create_task(_follower(ready, inner, rounds))
    await ready
    inner.set_result(1)
    task.cancel()  # in the same loop iteration as the result
    return task, rounds


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for no longer swallows")
async def test_the_fault_is_real_wait_for_swallows_a_cancel_on_python_3_11() -> None:
    task, rounds = await _swallowing_follower()
    await asyncio.sleep(0.1)
    try:
        assert not task.done(), "the cancel was swallowed: the task carries on"
        assert rounds[0] == 1  # it got the result...
        assert len(rounds) > 1  # ...and went round again
    finally:
        await cancel_and_wait(task)


async def test_cancel_and_wait_stops_a_task_that_swallowed_a_cancel() -> None:
    task, _ = await _swallowing_follower()
    await asyncio.wait_for(cancel_and_wait(task, retry_s=0.05), 5)
    assert task.cancelled()


async def test_cancel_and_wait_leaves_done_tasks_and_retrieves_their_errors() -> None:
    async def fails() -> None:
        raise ValueError("kept on the task")

    failed = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait([failed])
    sleeper = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    await cancel_and_wait(failed, sleeper)
    assert sleeper.cancelled()
    assert isinstance(failed.exception(), ValueError)
