"""The worker pool: pykka actors that run one task at a time, resized on demand.

The dispatcher (on the node's loop) hands a :class:`Job` to an idle actor; the actor runs
it in its thread and reports the outcome back to the loop with ``call_soon_threadsafe``.
A job's work is a callable that takes a :class:`TaskContext`; a mesh method call blocks
the actor on a future of the loop (the call itself is I/O on the loop). An exception that
is not an :class:`~mesh.errors.RpcError` is a crash: the actor is replaced, the task is
retried (a poison task ends dead-lettered after its attempts, never taking the pool down).

:meth:`WorkerPool.resize` grows the pool towards the waiting work, up to ``workers_max``,
and stops actors idle longer than ``idle_s`` down to ``workers_min``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from mesh.errors import Internal, RpcError

__all__ = ["Job", "TaskContext", "WorkerPool"]

log = logging.getLogger(__name__)


@dataclass
class TaskContext:
    """What a task's work knows about its run (given to task-type handlers)."""

    task_id: str
    owner: str
    attempt: int
    deadline: float
    """``time.monotonic()`` after which the attempt has timed out."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    report: Callable[[float, str], None] = lambda fraction, message: None

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0 to 1); watchers see it."""
        self.report(max(0.0, min(1.0, fraction)), message)

    def time_remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(eq=False)
class Job:
    """One attempt of one task, on its way to a worker."""

    context: TaskContext
    work: Callable[[TaskContext], bytes]
    done: Callable[[bytes | None, RpcError | None, bool], None]
    """``done(result, error, crashed)``, called on the loop."""


@dataclass(frozen=True)
class _Run:
    job: Job


class _Worker(pykka.ThreadingActor):
    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self._pool = pool

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Run):
            self._run(message.job)
        return None

    def _run(self, job: Job) -> None:
        result: bytes | None = None
        error: RpcError | None = None
        crashed = False
        try:
            result = job.work(job.context)
        except RpcError as exc:
            error = exc
        except Exception as exc:
            crashed = True
            log.exception("task %s crashed its worker", job.context.task_id)
            error = Internal(f"the task crashed its worker: {type(exc).__name__}: {exc}")
        self._pool.loop.call_soon_threadsafe(self._pool.finished, self.actor_ref, job, result,
                                             error, crashed)


class WorkerPool:
    """Worker actors of one node; all methods run on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, minimum: int, maximum: int,
                 idle_s: float, on_change: Callable[[], None] = lambda: None) -> None:
        self.loop = loop
        self.minimum = minimum
        self.maximum = maximum
        self.idle_s = idle_s
        self._idle: dict[pykka.ActorRef[_Worker], float] = {}  # ref -> idle since
        self._busy: set[pykka.ActorRef[_Worker]] = set()
        self._on_change = on_change
        self._stopping = False
        self.crashes = 0

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._busy)

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def free(self) -> int:
        return len(self._idle)

    def start(self) -> None:
        self._grow(self.minimum)

    def _grow(self, count: int) -> None:
        now = time.monotonic()
        for _ in range(max(0, min(count, self.maximum - self.size))):
            self._idle[_Worker.start(self)] = now
        self._on_change()

    def resize(self, waiting: int) -> None:
        """Add actors for waiting work (all busy), or stop ones idle for ``idle_s``."""
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

    def submit(self, job: Job) -> bool:
        """Give ``job`` to an idle actor; False when none is idle."""
        if self._stopping or not self._idle:
            return False
        ref = max(self._idle, key=self._idle.__getitem__)  # the most recently used
        del self._idle[ref]
        self._busy.add(ref)
        ref.tell(_Run(job))
        return True

    def finished(self, ref: pykka.ActorRef[_Worker], job: Job, result: bytes | None,
                 error: RpcError | None, crashed: bool) -> None:
        self._busy.discard(ref)
        if crashed:
            self.crashes += 1
            ref.stop(block=False)
            if not self._stopping:
                self._grow(1)  # a fresh actor in its place
        elif not self._stopping:
            self._idle[ref] = time.monotonic()
        else:
            ref.stop(block=False)
        job.done(result, error, crashed)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; stop idle actors now and busy ones when their job ends."""
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
