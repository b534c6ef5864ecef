"""``revo.tasks.v1.TaskService``: submit, watch and manage durable tasks.

An :class:`~mesh.engine.AsyncEngine`: its calls wait on JetStream. The work itself runs on
the node's :class:`~mesh.runtime.workers.WorkerPool` of pykka actors, fed by the
:class:`~revo_engine_parallel.dispatch.Dispatcher`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta

from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from nats.js.api import Header
from nats.js.errors import APIError, KeyWrongLastSequenceError

from mesh.auth.roles import MANAGE, declared_permission, grants, permission_name
from mesh.engine import AsyncEngine, Context
from mesh.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from mesh.pagination import decode_page_token, encode_page_token, page_size, take_page
from mesh.runtime.workers import WorkerPool
from revo_engine_parallel import hookspecs
from revo_engine_parallel.builtin_types import builtin_types
from revo_engine_parallel.dispatch import Dispatcher, Handler
from revo_engine_parallel.metrics import declare_metrics
from revo_engine_parallel.settings import ParallelSettings
from revo_engine_parallel.store import (
    CANCEL_PREFIX,
    FINISHED,
    KICK_SUBJECT,
    ROLE_HEADER,
    TaskStore,
    kick_message,
    new_task_id,
    now_timestamp,
    owner_token,
    queue_subject,
    task_key,
)
from revo_engine_parallel.v1 import tasks_pb2 as pb

__all__ = ["TaskEngine"]

_CANCEL_WAIT_S = 5.0


class TaskEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["TaskService"],)
    settings: ParallelSettings

    async def start(self) -> None:
        runtime = self.runtime
        self.handlers = _task_types(runtime.plugins.each(hookspecs.revo_task_types),
                                    builtin_types())
        self.store = TaskStore(runtime.nc, self.settings)
        await self.store.open()
        config = runtime.config
        self.auth = config.auth.enabled
        self.pool = WorkerPool(asyncio.get_running_loop(), self.settings.workers_min,
                               self.settings.workers_max, self.settings.idle_s)
        self.pool.start()
        self.dispatcher = Dispatcher(
            self.store, self.pool, self.settings, node_id=runtime.node_id,
            handlers=self.handlers, runtime=runtime)
        await self.dispatcher.start()
        declare_metrics(runtime.metrics, self.pool, self.dispatcher)

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.pool.stop()

    # -- validation -------------------------------------------------------------------

    def _checked(self, spec: pb.TaskSpec, index: int, ctx: Context) -> pb.TaskSpec:
        """The spec with defaults filled in, or InvalidArgument naming the task and field."""
        s = self.settings
        where = f"tasks[{index}]"
        kind = spec.WhichOneof("work")
        if kind is None:
            raise InvalidArgument(f"{where}: set call (a mesh method) or typed (a task type)")
        if kind == "call":
            size = len(spec.call.request)
            self._check_call(spec.call, where, ctx)
        else:
            size = len(spec.typed.payload)
            if spec.typed.type not in self.handlers:
                raise InvalidArgument(f"{where}: unknown task type {spec.typed.type[:80]!r}; "
                                      f"types: {', '.join(sorted(self.handlers)) or 'none'}")
        if size > s.payload_limit_bytes:
            raise InvalidArgument(f"{where}: the payload of {size} bytes is over the limit of "
                                  f"{s.payload_limit_bytes} bytes")
        if spec.priority > 9:
            raise InvalidArgument(f"{where}: priority must be 1 (lowest) to 9 (highest), or 0 "
                                  f"for the default {s.default_priority}; got {spec.priority}")
        if spec.HasField("timeout"):
            timeout = spec.timeout.ToTimedelta().total_seconds()
            if timeout <= 0:
                raise InvalidArgument(f"{where}: timeout must be more than 0 s, got "
                                      f"{timeout:g} s")
            if timeout > s.max_timeout_s:
                raise InvalidArgument(f"{where}: timeout of {timeout:g} s is over the limit of "
                                      f"{s.max_timeout_s:g} s")
        if spec.max_attempts > s.max_attempts_limit:
            raise InvalidArgument(f"{where}: max_attempts must be at most "
                                  f"{s.max_attempts_limit}, got {spec.max_attempts}")
        if len(spec.idempotency_key) > 256:
            raise InvalidArgument(f"{where}: idempotency_key is longer than 256 characters")
        checked = pb.TaskSpec()
        checked.CopyFrom(spec)
        checked.priority = spec.priority or s.default_priority
        checked.max_attempts = spec.max_attempts or s.default_max_attempts
        if not spec.idempotency_key and ctx.idempotency_key:
            # a Submit with an idempotency key (a workflow step's, say) is idempotent task
            # by task, as if each had a key of its own
            checked.idempotency_key = f"{ctx.idempotency_key}#{index}"
        if not spec.HasField("timeout"):
            checked.timeout.FromTimedelta(timedelta(seconds=s.default_timeout_s))
        return checked

    def _check_call(self, call: pb.MethodCall, where: str, ctx: Context) -> None:
        route = self.runtime.calls.route(call.method)
        if route is None:
            raise InvalidArgument(f"{where}: unknown method {call.method[:200]!r}: no node "
                                  "serves it (methods are /package.Service/Method)")
        if route.server_streaming:
            raise InvalidArgument(f"{where}: {call.method} streams its answer; only unary "
                                  "methods can be tasks")
        needed = declared_permission(route.method)
        if self.auth and not grants(ctx.role, needed):
            raise PermissionDenied(f"{where}: {call.method} needs the "
                                   f"{permission_name(needed)} permission; role "
                                   f"{ctx.role!r} lacks it")
        try:
            message_factory.GetMessageClass(route.method.input_type).FromString(call.request)
        except DecodeError as exc:
            raise InvalidArgument(f"{where}: request is not a valid "
                                  f"{route.method.input_type.full_name}: {exc}") from None

    # -- TaskService ------------------------------------------------------------------

    async def submit(self, request: pb.SubmitRequest, ctx: Context) -> pb.SubmitResponse:
        if not request.tasks:
            raise InvalidArgument("Submit needs at least one task")
        if len(request.tasks) > self.settings.batch_limit:
            raise InvalidArgument(f"Submit takes at most {self.settings.batch_limit} tasks "
                                  f"at once, got {len(request.tasks)}; split the batch")
        specs = [self._checked(spec, i, ctx) for i, spec in enumerate(request.tasks)]
        outcomes = await asyncio.gather(*(self._submit(spec, ctx) for spec in specs),
                                        return_exceptions=True)
        done = [o for o in outcomes if isinstance(o, tuple)]
        if any(queued for _, queued, _ in done):
            await self.runtime.nc.publish(KICK_SUBJECT, kick_message(
                [(t, revision) for t, queued, revision in done if queued]))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the ones before it are queued and stay queued
        return pb.SubmitResponse(tasks=[o[0] for o in outcomes if isinstance(o, tuple)])

    async def _submit(self, spec: pb.TaskSpec,
                      ctx: Context) -> tuple[pb.Task, bool, int | None]:
        """The task for ``spec``, whether this call put it in the queue, and the revision of
        the record it wrote (None when it wrote none: the kick then carries no hint).

        The queue message goes first and carries the whole task; the record follows. So a
        record in ``QUEUED`` always has its message, and a Submit that stops half-way
        leaves either nothing or a message the first node to take it writes the record for.
        Nothing is undone on failure: an undo raced the caller's retry and could land after
        it (a write sent while NATS reconnects goes out late).
        """
        owner = ctx.caller
        task = pb.Task(id=new_task_id(), owner=owner, spec=spec, state=pb.TASK_STATE_QUEUED)
        task.created_at.CopyFrom(now_timestamp())
        if spec.idempotency_key:
            existing = await self.store.claim_key(owner, spec.idempotency_key, task.id)
            if existing is not None:
                return (*await self._submitted_before(existing, task, ctx), None)
        queued = await self._enqueue(task, ctx.role)
        # when a node was first, the answer is still as submitted
        return task, queued, await self._record(task)

    async def _submitted_before(self, task_id: str, fresh: pb.Task,
                                ctx: Context) -> tuple[pb.Task, bool]:
        """The task an idempotency key already names, queued now if it never was.

        A key without a record means the Submit that claimed it stopped (its node died, or
        NATS went away) before writing the record, and perhaps before queueing. So the task
        is queued now under the key's id: the message id is the task's id, and the stream
        keeps one message per id within its duplicate window, so a first message that did
        arrive is not doubled.
        """
        found = await self.store.get(fresh.owner, task_id)
        if found is not None:
            task, queued = found[0], False
        else:
            fresh.id = task_id
            queued = await self._enqueue(fresh, ctx.role)
            task = fresh
            if await self._record(fresh) is None:
                found = await self.store.get(fresh.owner, task_id)
                task = found[0] if found is not None else fresh
        task.deduplicated = True
        return task, queued

    async def _record(self, task: pb.Task) -> int | None:
        """Write a queued task's record; its revision, or None when a node that took the
        task (or a retry of the Submit) wrote it first."""
        try:
            return await self.store.create(task)
        except KeyWrongLastSequenceError:
            return None

    async def _enqueue(self, task: pb.Task, role: str) -> bool:
        """Publish the task's queue message; False when the stream already had it."""
        try:
            ack = await self.store.js.publish(
                queue_subject(task.spec.priority, task.owner), task.SerializeToString(),
                headers={ROLE_HEADER: role, Header.MSG_ID: task.id})
        except APIError as exc:
            if "maximum messages" in str(exc).lower():
                raise ResourceExhausted(
                    f"the task queue is full ({self.settings.queue_limit} tasks queued or "
                    "running); retry later") from exc
            raise
        return not ack.duplicate

    async def _visible(self, task_id: str, ctx: Context) -> pb.Task:
        """The task, if the caller owns it or may manage; else NOT_FOUND."""
        if not task_id:
            raise InvalidArgument("give the task's id")
        found = await self.store.get(ctx.caller, task_id)
        if found is not None:
            return found[0]
        if not self.auth or grants(ctx.role, MANAGE):
            task = await self.store.find(task_id)
            if task is not None:
                return task
        raise NotFound(f"no task {task_id[:64]!r} of yours")

    async def get(self, request: pb.GetRequest, ctx: Context) -> pb.Task:
        """The task; a result kept in the object store is read back into ``result``."""
        task = await self._visible(request.id, ctx)
        if task.result_object and not task.result:
            task.result = await self.store.read_result(task.result_object)
        return task

    async def cancel(self, request: pb.CancelRequest, ctx: Context) -> pb.Task:
        task = await self._visible(request.id, ctx)
        for _ in range(5):
            if task.state in FINISHED:
                return task
            if task.state == pb.TASK_STATE_RUNNING:
                return await self._cancel_running(task)
            found = await self.store.get(task.owner, task.id)
            if found is None:
                raise NotFound(f"task {task.id} is gone")
            task, revision = found
            if task.state != pb.TASK_STATE_QUEUED:
                continue
            task.state = pb.TASK_STATE_CANCELLED
            task.finished_at.CopyFrom(now_timestamp())
            try:
                await self.store.tasks.update(task_key(task.owner, task.id),
                                              task.SerializeToString(), last=revision)
                return task  # its queue message is dropped when a node next takes it
            except KeyWrongLastSequenceError:
                continue
        return task

    async def _cancel_running(self, task: pb.Task) -> pb.Task:
        """Tell the running node; return the record once it says the task ended."""
        updates = self.store.watch(task.owner, task.id)
        try:
            await self.runtime.nc.publish(f"{CANCEL_PREFIX}.{task.id}", b"")
            deadline = time.monotonic() + _CANCEL_WAIT_S
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    current = await asyncio.wait_for(anext(updates), remaining)
                except (TimeoutError, StopAsyncIteration):
                    break
                task = current
                if task.state in FINISHED:
                    break
        finally:
            await updates.aclose()  # type: ignore[attr-defined]
        return task

    async def watch(self, request: pb.WatchRequest, ctx: Context) -> AsyncIterator[pb.Task]:
        if not request.id:
            raise InvalidArgument("give the task's id")
        if any(c in request.id for c in ".*> \t\r\n"):  # never a wildcard subscription
            raise NotFound(f"no task {request.id[:64]!r} of yours")
        # The caller's own task: the watch's first read is the visibility check too.
        updates = self.store.watch(ctx.caller, request.id, must_exist=True)
        try:
            try:
                record: pb.Task | None = await anext(updates)
            except StopAsyncIteration:
                record = None
            if record is None:  # another owner's task, for a caller with manage; or none
                await updates.aclose()  # type: ignore[attr-defined]
                task = await self._visible(request.id, ctx)
                updates = self.store.watch(task.owner, task.id)
                record = await anext(updates)
            while True:
                yield record
                if record.state in FINISHED:
                    return
                record = await anext(updates)
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    async def list(self, request: pb.ListRequest, ctx: Context) -> pb.ListResponse:
        owner = request.owner or ctx.caller
        if owner != ctx.caller and self.auth and not grants(ctx.role, MANAGE):
            raise PermissionDenied(f"listing the tasks of {owner!r} needs the manage "
                                   f"permission; role {ctx.role!r} lacks it")
        size = page_size(request.page_size)
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        query = [owner, request.state, since]
        after = decode_page_token(request.page_token, query, (str,))
        pattern = "t.*.*" if owner == "*" else f"t.{owner_token(owner)}.*"
        tasks = [t for t in await self.store.scan(pattern)
                 if (not request.state or t.state == request.state)
                 and t.created_at.ToNanoseconds() >= since]
        # ids are time-ordered and unique: newest first is by id, descending
        page, last = take_page(tasks, lambda t: t.id, size, after and after[0],
                               descending=True)
        return pb.ListResponse(
            tasks=page, next_page_token=encode_page_token((last,), query) if last else "")

    async def stats(self, request: pb.StatsRequest, ctx: Context) -> pb.StatsResponse:
        await self.dispatcher.refresh()
        by_priority = self.dispatcher.depth_by_priority()
        stats = self.dispatcher.stats
        return pb.StatsResponse(
            depth=[pb.PriorityDepth(priority=p, tasks=n) for p, n in sorted(by_priority.items())],
            workers=self.pool.size, busy_workers=self.pool.busy, succeeded=stats.succeeded,
            failed=stats.failed, dead_lettered=stats.dead_lettered,
            throughput_per_s=stats.throughput(), node=self.runtime.node_id)


def _task_types(offered: Mapping[str, object], builtin: Mapping[str, Handler]
                ) -> dict[str, Handler]:
    """Every plugin's task types; one name offered twice is a ConfigError."""
    types: dict[str, Handler] = dict(builtin)
    owners = dict.fromkeys(builtin, "revo-engine-parallel")
    for plugin, mapping in offered.items():
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"plugin {plugin}: revo_task_types() returned "
                              f"{type(mapping).__name__}, expected a mapping of name to handler")
        for name, handler in mapping.items():
            if name in types:
                raise ConfigError(f"task type {name!r} is offered by both {owners[name]} and "
                                  f"{plugin}")
            if not callable(handler):
                raise ConfigError(f"plugin {plugin}: task type {name!r} is not callable")
            types[name], owners[name] = handler, plugin
    return types
