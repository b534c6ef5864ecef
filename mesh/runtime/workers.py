"""A resizable pool of worker actors for engines that run jobs (not RPCs) on threads.

An :class:`~mesh.runtime.pool.EnginePool` serves an engine's RPCs, one engine instance per
actor. A :class:`WorkerPool` is the other shape an engine needs: jobs that the engine
decides to run (Parallel Mind's tasks, a workflow's steps), each a callable run in a pykka
actor's thread, with the outcome reported back on the loop. The pool grows towards the
waiting work up to ``maximum`` and stops actors idle longer than ``idle_s`` down to
``minimum``. An exception that is not an :class:`~mesh.errors.RpcError` is a crash: the
actor that ran it is replaced, and the job's ``done`` says so, so the engine decides whether
to retry. A poison job never takes the pool down.

All methods run on the loop. A job's work runs in the actor's thread: it may block (on I/O
through ``asyncio.run_coroutine_threadsafe`` on the loop, never by awaiting there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pykka

from mesh.errors import Internal, RpcError

__all__ = ["Job", "WorkerPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Job(Generic[T]):
    """One unit of work on its way to a worker."""

    work: Callable[[], T]
    """Runs in the worker's thread; its return value is the job's result."""
    done: Callable[[T | None, RpcError | None, bool], None]
    """``done(result, error, crashed)``, called on the loop once the work ended."""
    label: str = "a job"
    """Names the job in the log when it crashes its worker (``task 42``)."""


@dataclass(frozen=True)
class _Run:
    job: Job[Any]


class _Worker(pykka.ThreadingActor):
    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self._pool = pool

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Run):
            self._run(message.job)
        return None

    def _run(self, job: Job[Any]) -> None:
        result: Any = None
        error: RpcError | None = None
        crashed = False
        try:
            result = job.work()
        except RpcError as exc:
            error = exc
        except Exception as exc:
            crashed = True
            log.exception("%s crashed its worker", job.label)
            error = Internal(f"{job.label} crashed its worker: {type(exc).__name__}: {exc}")
        self._pool.loop.call_soon_threadsafe(self._pool.finished, self.actor_ref, job, result,
                                             error, crashed)


class WorkerPool:
    """Worker actors of one engine on one node; every method runs on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, minimum: int, maximum: int,
                 idle_s: float, on_change: Callable[[], None] = lambda: None) -> None:
        if not 0 <= minimum <= maximum or maximum < 1:
            raise ValueError(f"worker pool bounds must satisfy 0 <= minimum <= maximum, "
                             f"maximum >= 1; got minimum={minimum} maximum={maximum}")
        self.loop = loop
        self.minimum = minimum
        self.maximum = maximum
        self.idle_s = idle_s
        self._idle: dict[pykka.ActorRef[_Worker], float] = {}  # ref -> idle since
        self._busy: set[pykka.ActorRef[_Worker]] = set()
        self._on_change = on_change
        self._stopping = False
        self.crashes = 0
        """Jobs that crashed their worker (each worker was replaced)."""

    @property
    def size(self) -> int:
        """Worker actors alive."""
        return len(self._idle) + len(self._busy)

    @property
    def busy(self) -> int:
        """Workers running a job."""
        return len(self._busy)

    @property
    def free(self) -> int:
        """Workers waiting for a job."""
        return len(self._idle)

    def start(self) -> None:
        self._grow(self.minimum)

    def _grow(self, count: int) -> None:
        now = time.monotonic()
        for _ in range(max(0, min(count, self.maximum - self.size))):
            self._idle[_Worker.start(self)] = now
        self._on_change()

    def resize(self, waiting: int) -> None:
        """Add workers for ``waiting`` jobs (when all are busy), or stop those idle for
        ``idle_s`` (down to ``minimum``)."""
        if self._stopping:
            return
        if waiting > 0 and not self._idle and self.size < self.maximum:
            self._grow(min(waiting, max(1, self.size)))  # at most doubling per step
            return
        cutoff = time.monotonic() - self.idle_s
        stale = [ref for ref, since in self._idle.items() if since < cutoff]
        for ref in stale[:max(0, self.size - self.minimum)]:
            del self._idle[ref]
            ref.stop(block=False)
        if stale:
            self._on_change()

    def submit(self, job: Job[Any]) -> bool:
        """Give ``job`` to an idle worker; False when none is idle (or the pool stops)."""
        if self._stopping or not self._idle:
            return False
        ref = max(self._idle, key=self._idle.__getitem__)  # the most recently used
        del self._idle[ref]
        self._busy.add(ref)
        ref.tell(_Run(job))
        return True

    def finished(self, ref: pykka.ActorRef[_Worker], job: Job[Any], result: Any,
                 error: RpcError | None, crashed: bool) -> None:
        self._busy.discard(ref)
        if crashed:
            self.crashes += 1
            ref.stop(block=False)
            if not self._stopping:
                self._grow(1)  # a fresh worker in its place
        elif not self._stopping:
            self._idle[ref] = time.monotonic()
        else:
            ref.stop(block=False)
        job.done(result, error, crashed)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; stop idle workers now and busy ones when their job ends."""
        self._stopping = True
        refs = list(self._idle) + list(self._busy)
        self._idle.clear()

        def stop_all() -> None:
            for ref in refs:
                try:
                    ref.stop(block=True, timeout=timeout)
                except pykka.Timeout:
                    log.error("a worker did not stop within %.1f s", timeout)
                except pykka.ActorDeadError:
                    pass

        await self.loop.run_in_executor(None, stop_all)
        self._busy.clear()
        self._on_change()
