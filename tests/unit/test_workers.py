"""mesh.runtime.workers.WorkerPool: jobs run on worker threads, crashes replace the worker,
the pool grows towards waiting work and shrinks back when idle."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mesh.errors import Internal, InvalidArgument, RpcError
from mesh.runtime.workers import Job, WorkerPool

Outcome = tuple[object, RpcError | None, bool]


def _job(work, outcomes: asyncio.Queue[Outcome], label: str = "a job") -> Job[object]:
    def done(result: object, error: RpcError | None, crashed: bool) -> None:
        outcomes.put_nowait((result, error, crashed))

    return Job(work, done, label=label)


async def test_a_job_runs_on_a_worker_thread_and_reports_on_the_loop():
    pool = WorkerPool(asyncio.get_running_loop(), 1, 2, idle_s=60)
    pool.start()
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    loop_thread = threading.get_ident()
    try:
        assert pool.submit(_job(threading.get_ident, outcomes))
        result, error, crashed = await asyncio.wait_for(outcomes.get(), 10)
        assert error is None
        assert not crashed
        assert result != loop_thread
        assert (pool.size, pool.busy, pool.free) == (1, 0, 1)
    finally:
        await pool.stop()


async def test_an_rpc_error_is_the_job_s_outcome_and_keeps_the_worker():
    pool = WorkerPool(asyncio.get_running_loop(), 1, 1, idle_s=60)
    pool.start()
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()

    def refuse() -> bytes:
        raise InvalidArgument("no")

    try:
        assert pool.submit(_job(refuse, outcomes))
        _, error, crashed = await asyncio.wait_for(outcomes.get(), 10)
        assert isinstance(error, InvalidArgument)
        assert not crashed
        assert pool.crashes == 0
        assert pool.size == 1
    finally:
        await pool.stop()


async def test_a_crash_replaces_the_worker_and_the_pool_runs_on():
    pool = WorkerPool(asyncio.get_running_loop(), 1, 1, idle_s=60)
    pool.start()
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    threads: list[threading.Thread] = []  # the objects: a dead thread's ident is reused

    def crash() -> bytes:
        threads.append(threading.current_thread())
        raise ZeroDivisionError("poison")

    def work() -> bytes:
        threads.append(threading.current_thread())
        return b"ok"

    try:
        assert pool.submit(_job(crash, outcomes, label="task 7"))
        _, error, crashed = await asyncio.wait_for(outcomes.get(), 10)
        assert crashed
        assert isinstance(error, Internal)
        assert "task 7 crashed its worker: ZeroDivisionError: poison" in error.message
        assert pool.crashes == 1
        assert pool.size == 1
        assert pool.submit(_job(work, outcomes))
        result, error, crashed = await asyncio.wait_for(outcomes.get(), 10)
        assert (result, error, crashed) == (b"ok", None, False)
        assert threads[0] is not threads[1]  # the second job ran on the replacement
    finally:
        await pool.stop()


async def test_the_pool_grows_for_waiting_work_and_shrinks_when_idle():
    pool = WorkerPool(asyncio.get_running_loop(), 1, 4, idle_s=3600)
    pool.start()
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    gate = threading.Event()
    try:
        assert pool.submit(_job(gate.wait, outcomes))
        assert not pool.submit(_job(gate.wait, outcomes))  # none idle
        pool.resize(waiting=8)
        assert pool.size == 2  # at most doubling per step
        pool.resize(waiting=8)  # one is still idle: no growth
        assert pool.size == 2
        assert pool.submit(_job(gate.wait, outcomes))
        pool.resize(waiting=8)
        assert pool.size == 4
        pool.resize(waiting=8)
        assert pool.size == 4  # never past maximum
        gate.set()
        for _ in range(2):
            await asyncio.wait_for(outcomes.get(), 10)
        pool.resize(waiting=0)
        assert pool.size == 4  # idle for less than idle_s
        pool.idle_s = 0  # now every idle worker is stale: down to minimum
        pool.resize(waiting=0)
        assert pool.size == 1
    finally:
        gate.set()
        await pool.stop()


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="minimum <= maximum"):
        WorkerPool(asyncio.new_event_loop(), 3, 2, idle_s=1)
