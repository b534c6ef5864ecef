"""Takes tasks from JetStream and runs them on the worker pool, on the node's loop.

Each (priority, owner) queue has a durable pull consumer shared by every node. The
dispatcher learns which queues wait from the stream's per-subject counts (refreshed on a
Submit's kick and every second), picks the next one with :class:`Scheduler`, and fetches
only as many tasks as it has free workers. While a task runs its message's claim is renewed
(``in_progress``) every third of ``ack_wait_s``; if the node dies, the claim lapses and
JetStream delivers the task again, to any node.

An attempt's outcome decides the message's fate: success, a non-retryable error or a
cancel acknowledge it (it leaves the queue); a retryable error gives it back with a delay;
the last attempt's failure, or a delivery beyond the task's attempts (its workers kept
dying), dead-letters it with the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyWrongLastSequenceError

from mesh.engine import Context, EngineRuntime
from mesh.errors import Cancelled, DeadlineExceeded, RpcError, Unavailable
from mesh.runtime.workers import Job, WorkerPool
from revo_engine_parallel.context import TaskContext
from revo_engine_parallel.hookspecs import Handler
from revo_engine_parallel.scheduling import Queue, Scheduler
from revo_engine_parallel.settings import ParallelSettings
from revo_engine_parallel.store import (
    CANCEL_PREFIX,
    FINISHED,
    KICK_SUBJECT,
    QUEUE_PREFIX,
    ROLE_HEADER,
    STREAM,
    TaskStore,
    now_timestamp,
    owner_token,
    parse_kick,
    task_key,
)
from revo_engine_parallel.v1 import tasks_pb2 as pb

__all__ = ["Dispatcher", "Handler", "NodeStats"]

log = logging.getLogger(__name__)

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL",
                       "ABORTED", "UNKNOWN", "DATA_LOSS"})
REFRESH_S = 1.0
_CLAIM_TRIES = 5
_REVISION_HINTS = 10_000
"""Revision hints kept from kicks (most are for tasks another node takes)."""



@dataclass
class NodeStats:
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def throughput(self, window_s: float = 60.0) -> float:
        cutoff = time.monotonic() - window_s
        recent = sum(1 for t in self.finished_at if t >= cutoff)
        return recent / window_s


@dataclass(eq=False)
class _Running:
    msg: Msg
    task: pb.Task
    revision: int
    context: TaskContext
    future: concurrent.futures.Future[bytes] | None = None
    timer: asyncio.TimerHandle | None = None
    cancel_requested: bool = False
    over: bool = False
    """Set once the attempt's outcome was handled (a late worker answer is ignored)."""


class Dispatcher:
    def __init__(self, store: TaskStore, pool: WorkerPool, settings: ParallelSettings, *,
                 node_id: str, handlers: Mapping[str, Handler], runtime: EngineRuntime) -> None:
        self.store = store
        self.pool = pool
        self.settings = settings
        self.node_id = node_id
        self.handlers = handlers
        self.runtime = runtime
        self.stats = NodeStats()
        self.depth: dict[Queue, int] = {}
        """Tasks queued or running per queue, mesh-wide (from the stream, ~1 s old)."""
        self._scheduler = Scheduler()
        self._subs: dict[Queue, Any] = {}
        self._empty: set[Queue] = set()
        self._running: dict[str, _Running] = {}
        self._claims: set[asyncio.Task[None]] = set()
        """Tasks fetched and being claimed: each holds one idle worker for its task."""
        self._wake = asyncio.Event()
        self._revisions: dict[str, int] = {}
        """Record revisions that Submits wrote, from their kicks (task id -> revision)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._nc_subs: list[Any] = []
        self._stopping = False
        self._loop = asyncio.get_running_loop()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        nc = self.store.nc
        self._nc_subs.append(await nc.subscribe(KICK_SUBJECT, cb=self._on_kick))
        self._nc_subs.append(await nc.subscribe(f"{CANCEL_PREFIX}.*", cb=self._on_cancel))
        await self.refresh()
        for work in (self._dispatch_forever(), self._renew_forever(), self._refresh_forever()):
            self._tasks.append(self._loop.create_task(work))

    async def stop(self) -> None:
        """Take no more tasks; running ones are given back to the queue for another node."""
        self._stopping = True
        stopping = [*self._tasks, *self._claims]
        for task in stopping:
            task.cancel()
        for task in stopping:  # a claim cut short leaves its message to be delivered again
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in [*self._nc_subs, *self._subs.values()]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for running in list(self._running.values()):
            running.over = True
            running.context.cancelled.set()
            if running.future is not None:  # a method call: its worker stops waiting
                running.future.cancel()
            with contextlib.suppress(Exception):
                await running.msg.nak()

    # -- what waits -------------------------------------------------------------------

    def waiting(self) -> int:
        return sum(count for queue, count in self.depth.items() if queue not in self._empty)

    def depth_by_priority(self) -> dict[int, int]:
        """Tasks queued or running, mesh-wide, summed over owners."""
        totals: dict[int, int] = {}
        for (priority, _), count in list(self.depth.items()):
            totals[priority] = totals.get(priority, 0) + count
        return totals

    async def refresh(self) -> None:
        try:
            info = await self.store.js.stream_info(STREAM, subjects_filter=f"{QUEUE_PREFIX}.>")
        except Exception as exc:
            log.warning("task queue depth unavailable: %s", exc)
            return
        depth: dict[Queue, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            parts = subject.split(".")
            if len(parts) == 5 and parts[3].isdigit():
                depth[(int(parts[3]), parts[4])] = int(count)
        self.depth = depth
        self._empty.clear()  # counts include running tasks: ask each queue again
        self._wake.set()

    def _again(self, queue: Queue) -> None:
        """A task given back with a delay is due: its queue has work again."""
        self.depth[queue] = max(1, self.depth.get(queue, 0))
        self._empty.discard(queue)
        self._wake.set()

    async def _on_kick(self, msg: Msg) -> None:
        queues, hints = parse_kick(msg.data)
        for queue in queues:
            self.depth[queue] = self.depth.get(queue, 0) + 1
            self._empty.discard(queue)
        revisions = self._revisions
        for task_id, revision in hints:
            revisions[task_id] = revision
        while len(revisions) > _REVISION_HINTS:  # the oldest first: tasks other nodes took
            del revisions[next(iter(revisions))]
        self._wake.set()

    # Each loop also ends on ``_stopping``: on Python 3.11 a cancel can be lost inside
    # ``asyncio.wait_for`` (nats-py's fetch and requests use it) when what it waits for
    # completes at the same moment, and the dispatch loop would then spin without awaiting.

    async def _refresh_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()
            self.pool.resize(self.waiting())

    # -- taking tasks -----------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                log.exception("task dispatch failed; retrying")
                await asyncio.sleep(0.5)
            if self._free() > 0 and self.waiting():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REFRESH_S)

    def _free(self) -> int:
        """Idle workers not yet promised to a task being claimed."""
        return self.pool.free - len(self._claims)

    async def _dispatch(self) -> None:
        while not self._stopping:
            if self._free() <= 0:
                self.pool.resize(self.waiting())
                if self._free() <= 0:
                    return
            queue = self._scheduler.next(
                q for q, count in self.depth.items() if count > 0 and q not in self._empty)
            if queue is None:
                return
            msgs = await self._fetch(queue, self._free())
            if not msgs:
                self._empty.add(queue)
                continue
            # claims go out together, and the next fetch does not wait for them: a claim is
            # two JetStream round trips (read the record, then compare-and-set it)
            for msg in msgs:
                claim = self._loop.create_task(self._begin(msg))
                self._claims.add(claim)
                claim.add_done_callback(self._claimed)

    def _claimed(self, claim: asyncio.Task[None]) -> None:
        self._claims.discard(claim)
        if not claim.cancelled() and (exc := claim.exception()) is not None:
            log.error("claiming a task failed (JetStream will deliver it again): %s", exc)
        self._wake.set()

    async def _fetch(self, queue: Queue, count: int) -> list[Msg]:
        sub = self._subs.get(queue)
        if sub is None:
            sub = self._subs[queue] = await self._consumer(queue)
        try:
            return list(await sub.fetch(max(1, min(count, 64)), timeout=0.05))
        except TimeoutError:  # nats-py raises its own, or asyncio's when its deadline passed
            return []

    async def _consumer(self, queue: Queue) -> Any:
        priority, owner = queue
        durable = f"q{priority}-{owner}"
        js = self.store.js
        await js.add_consumer(STREAM, ConsumerConfig(
            durable_name=durable, filter_subject=f"{QUEUE_PREFIX}.{priority}.{owner}",
            ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait_s, max_deliver=-1,
            max_ack_pending=-1, inactive_threshold=self.settings.keep_s))
        return await js.pull_subscribe_bind(durable=durable, stream=STREAM)

    async def _begin(self, msg: Msg) -> None:
        """Claim a delivered task and hand it to a worker."""
        try:
            task = pb.Task.FromString(msg.data)
        except Exception:
            log.error("dropping an unreadable task message on %s", msg.subject)
            await msg.term()
            return
        headers = msg.headers or {}
        attempt = int(msg.metadata.num_delivered or 1)
        limit = task.spec.max_attempts
        claimed = await self._claim(task, attempt)
        if claimed is None:
            await msg.ack()  # cancelled, or finished by an earlier delivery
            return
        task, revision = claimed
        if attempt > limit:
            reason = (f"{limit} attempts failed; last: {task.error.code}: {task.error.message}"
                      if task.error.code else
                      f"its worker or node stopped during each of {limit} attempts")
            await self._dead_letter(msg, task, revision, reason)
            return
        timeout = task.spec.timeout.ToTimedelta().total_seconds()
        task_id = task.id

        def report(fraction: float, message: str) -> None:
            self._report(task_id, fraction, message)

        context = TaskContext(task.id, task.owner, attempt, time.monotonic() + timeout,
                              report=report)
        running = _Running(msg, task, revision, context)
        self._running[task.id] = running
        running.timer = self._loop.call_later(timeout, self._expire, running)
        work = self._work(task, headers.get(ROLE_HEADER, ""), running)

        def done(result: bytes | None, error: RpcError | None, crashed: bool) -> None:
            self._done(running, result, error, crashed)

        job = Job(functools.partial(work, context), done, label=f"task {task_id}")
        if not self.pool.submit(job):  # cannot happen: fetched only for free workers
            self._running.pop(task.id, None)
            running.timer.cancel()
            await msg.nak()

    async def _claim(self, task: pb.Task, attempt: int) -> tuple[pb.Task, int] | None:
        """The record set RUNNING for this attempt, or None when it must not run.

        ``task`` is the queue message's copy. With no record yet (the Submit that queued it
        stopped before writing one, or has not written it yet) the message's copy becomes
        the record. A finished record (cancelled, or finished by an earlier delivery) means
        the message is stale. Compare-and-set: a cancel that lands meanwhile is seen. The
        first try takes the record's revision from the Submit's kick when it carried one
        (the record is then the message's copy), instead of reading it.
        """
        hint = self._revisions.pop(task.id, None)
        found: tuple[pb.Task, int] | None
        for _ in range(_CLAIM_TRIES):
            if hint is not None and attempt == 1:
                # the record as its Submit wrote it is the message's copy: a stale hint (a
                # cancel landed since) fails the compare-and-set below, and the record is read
                found, hint = (task, hint), None
            else:
                found = await self.store.get(task.owner, task.id)
            if found is not None:
                task, revision = found
                if task.state in FINISHED:
                    return None
            running = pb.Task()
            running.CopyFrom(task)
            running.state = pb.TASK_STATE_RUNNING
            running.attempts = attempt
            running.node = self.node_id
            running.started_at.CopyFrom(now_timestamp())
            try:
                if found is None:
                    return running, await self.store.create(running)
                new = await self.store.tasks.update(task_key(task.owner, task.id),
                                                    running.SerializeToString(), last=revision)
                return running, int(new)
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"task {task.id}: its record kept changing during "
                           f"{_CLAIM_TRIES} claims; JetStream will deliver it again")

    # -- the work ---------------------------------------------------------------------

    def _work(self, task: pb.Task, role: str, running: _Running) -> Callable[[TaskContext],
                                                                              bytes]:
        spec = task.spec
        if spec.WhichOneof("work") == "typed":
            handler = self.handlers.get(spec.typed.type)
            payload = spec.typed.payload
            if handler is None:
                def unknown(_: TaskContext) -> bytes:
                    raise Unavailable(f"no node has task type {spec.typed.type!r} now")
                return unknown
            return lambda ctx: handler(payload, ctx)

        def call(ctx: TaskContext) -> bytes:
            future = asyncio.run_coroutine_threadsafe(self._call(task, role, ctx), self._loop)
            running.future = future
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                raise Cancelled("the task was cancelled") from None

        return call

    async def _call(self, task: pb.Task, role: str, ctx: TaskContext) -> bytes:
        call = task.spec.call
        as_owner = Context(method=call.method, request_id=task.id,
                           deadline=time.monotonic() + ctx.time_remaining(),
                           node_id=self.node_id, caller=task.owner, role=role,
                           idempotency_key=task.spec.idempotency_key)
        # The method is the task's data (its owner chose it), so it is called by path,
        # with the request bytes as they were submitted.
        method = self.runtime.channel(as_owner).unary_unary(call.method)
        answer: bytes = await method(call.request)
        return answer

    def _report(self, task_id: str, fraction: float, message: str) -> None:
        """From a worker thread: record progress (best effort, latest wins)."""
        def record() -> None:
            running = self._running.get(task_id)
            if running is None or running.over:
                return
            running.task.progress.fraction, running.task.progress.message = fraction, message
            self._loop.create_task(self._save_progress(running))

        self._loop.call_soon_threadsafe(record)

    async def _save_progress(self, running: _Running) -> None:
        with contextlib.suppress(Exception):
            running.revision = await self.store.put(running.task)

    # -- outcomes ---------------------------------------------------------------------

    def _expire(self, running: _Running) -> None:
        if running.over:
            return
        running.context.cancelled.set()
        if running.future is not None:
            running.future.cancel()
        timeout = running.task.spec.timeout.ToTimedelta().total_seconds()
        self._done(running, None, DeadlineExceeded(
            f"the attempt did not finish within its timeout of {timeout:g} s"), False)

    def _done(self, running: _Running, result: bytes | None, error: RpcError | None,
              crashed: bool) -> None:
        if running.over:
            return
        running.over = True
        if running.timer is not None:
            running.timer.cancel()
        self._loop.create_task(self._finish(running, result, error))

    async def _finish(self, running: _Running, result: bytes | None,
                      error: RpcError | None) -> None:
        task, msg = running.task, running.msg
        try:
            if running.cancel_requested:
                await self._end(running, pb.TASK_STATE_CANCELLED)
                self.stats.cancelled += 1
            elif error is None:
                assert result is not None
                if len(result) > self.settings.result_limit_bytes:
                    task.error.code, task.error.message = "RESOURCE_EXHAUSTED", (
                        f"the result of {len(result)} bytes is over the limit of "
                        f"{self.settings.result_limit_bytes} bytes")
                    await self._end(running, pb.TASK_STATE_FAILED)
                    self.stats.failed += 1
                else:
                    await self.store.store_result(task, result)
                    await self._end(running, pb.TASK_STATE_SUCCEEDED)
                    self.stats.succeeded += 1
            else:
                code = error.code.name
                task.error.code, task.error.message = code, error.message[:2000]
                if code not in RETRYABLE:
                    await self._end(running, pb.TASK_STATE_FAILED)
                    self.stats.failed += 1
                elif task.attempts >= task.spec.max_attempts:
                    await self._dead_letter(
                        msg, task, running.revision,
                        f"{task.attempts} attempts failed; last: {code}: {error.message}")
                else:
                    task.state = pb.TASK_STATE_QUEUED
                    await self.store.put(task)
                    delay = min(60.0, self.settings.retry_delay_s * 2 ** (task.attempts - 1))
                    await msg.nak(delay=delay)
                    self._loop.call_later(delay, self._again, (task.spec.priority,
                                                                owner_token(task.owner)))
        except Exception:
            log.exception("task %s: recording its outcome failed; JetStream will deliver "
                          "it again", task.id)
        finally:
            self._running.pop(task.id, None)
            self.stats.finished_at.append(time.monotonic())
            self._wake.set()

    async def _end(self, running: _Running, state: pb.TaskState.ValueType) -> None:
        task = running.task
        task.state = state
        task.finished_at.CopyFrom(now_timestamp())
        await self.store.put(task)
        await running.msg.ack()

    async def _dead_letter(self, msg: Msg, task: pb.Task, revision: int, reason: str) -> None:
        task.state = pb.TASK_STATE_DEAD_LETTERED
        task.dead_letter_reason = reason
        task.finished_at.CopyFrom(now_timestamp())
        await self.store.put(task)
        await self.store.dead_letter(task)
        await msg.ack()
        self.stats.dead_lettered += 1
        log.warning("task %s of %s dead-lettered: %s", task.id, task.owner or "-", reason)

    # -- cancel and renew -------------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        running = self._running.get(msg.subject.rpartition(".")[2])
        if running is None or running.over:
            return
        running.cancel_requested = True
        running.context.cancelled.set()
        if running.future is not None:
            running.future.cancel()
        else:  # typed work: its handler sees ctx.cancelled; end the attempt now
            self._done(running, None, Cancelled("the task was cancelled"), False)

    async def _renew_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.ack_wait_s / 3)
            for running in list(self._running.values()):
                if not running.over:
                    with contextlib.suppress(Exception):
                        await running.msg.in_progress()
