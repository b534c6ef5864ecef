"""Engine ``workflows``: ``revo.workflows.v1.WorkflowService``, the Coordinator.

An :class:`~mesh.engine.AsyncEngine`: the Coordinator waits on other engines. One instance
per node runs the runs this node owns (a task each), answers the service's RPCs, and
sweeps for active runs that no node owns. Those are runs whose node died; this node takes
their leases and continues them from their history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from google.protobuf.descriptor import MethodDescriptor
from pydantic import BaseModel, ConfigDict, Field

from mesh.auth.roles import MANAGE, declared_permission, grants, permission_name
from mesh.engine import AsyncEngine, Context
from mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unavailable,
)
from mesh.pagination import decode_page_token, encode_page_token, page_size, take_page
from mesh.runtime.cancel import cancel_and_wait
from revo_engine_workflows.builtins import BUILTIN_AUTHOR, BUILTINS, builtin
from revo_engine_workflows.definitions import Definition, check
from revo_engine_workflows.definitions_store import DefinitionStore
from revo_engine_workflows.history import History, HistoryConflict, Recorded
from revo_engine_workflows.leases import Leases
from revo_engine_workflows.metrics import CoordinatorMeters
from revo_engine_workflows.runner import Limits, OwnershipLost, Runner
from revo_engine_workflows.runs_index import RunIndex
from revo_engine_workflows.state import RunState, fold
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["WorkflowEngine", "WorkflowSettings"]

log = logging.getLogger(__name__)

_CLAIMED_POLL_S = 0.1
_CLAIMED_POLLS = 600
"""StartRun on a claimed key looks for the run this often, at most this many times (and
never past its deadline)."""


def _age_s(run: pb.Run) -> float:
    """Seconds since the run's summary was made (its ``created_at``)."""
    return time.time() - run.created_at.ToNanoseconds() / 1e9


class WorkflowSettings(BaseModel):
    """``[engines.workflows]``; every node of a mesh should agree."""

    model_config = ConfigDict(extra="forbid")

    step_timeout_s: float = Field(300.0, gt=0, description="a step attempt's timeout, "
                                  "unless the step says")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts of a step that fails "
                              "with a retryable error, unless the step says")
    initial_backoff_s: float = Field(0.5, gt=0, description="before a step's second attempt "
                                     "(doubles each time)")
    max_backoff_s: float = Field(30.0, gt=0, description="the longest backoff")
    map_concurrency: int = Field(16, ge=1, le=1000, description="branches of a map group at "
                                 "once, unless the group says")
    lease_ttl_s: float = Field(3.0, ge=1.0, le=60.0, description="how long a dead node's "
                               "runs stay unowned before another node takes them")
    unrecorded_grace_s: float = Field(60.0, ge=0, le=3600.0, description="how long the "
                                      "sweep leaves a run that is listed but not recorded "
                                      "(its starter failed) before taking it out of the "
                                      "index: a starter's write can land this late")
    sweep_interval_s: float = Field(1.0, gt=0, le=60.0, description="how often a node looks "
                                    "for runs nobody owns")
    history_max_age_s: float = Field(30 * 86_400.0, gt=0, description="how long runs' "
                                     "histories are kept")


class WorkflowEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["WorkflowService"],)
    settings: WorkflowSettings

    async def start(self) -> None:
        s, runtime = self.settings, self.runtime
        nc = runtime.nc
        self.history = History(nc, max_age_s=s.history_max_age_s)
        self.definitions = DefinitionStore(nc)
        self.index = RunIndex(nc)
        self.leases = Leases(nc, runtime.node_id, ttl_s=s.lease_ttl_s, on_lost=self._lost)
        await asyncio.gather(self.history.start(), self.definitions.start(),
                             self.index.start())
        await self.leases.start()
        self.limits = Limits(step_timeout_s=s.step_timeout_s, max_attempts=s.max_attempts,
                             initial_backoff_s=s.initial_backoff_s,
                             max_backoff_s=s.max_backoff_s, map_concurrency=s.map_concurrency)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, Runner] = {}
        self._starting: set[str] = set()
        """Runs whose start is being recorded on this node (not launched yet)."""
        self.meters = CoordinatorMeters(runtime.metrics, lambda: len(self.running))
        self._checked: dict[tuple[str, int], Definition] = {}
        self._installed: set[str] = set()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        for runner in self._runners.values():
            runner.abandon()  # their work goes on; the next owner finds it
        await cancel_and_wait(self._sweeper, *self.running.values())
        await self.leases.stop(release=True)  # another node continues them at once

    # -- definitions --------------------------------------------------------------------

    def _lookup(self, path: str) -> MethodDescriptor | None:
        route = self.runtime.calls.route(path)
        return route.method if route is not None else None

    async def create_workflow(self, request: pb.CreateWorkflowRequest,
                              ctx: Context) -> pb.CreateWorkflowResponse:
        check(request.workflow, self._lookup)
        stored, created = await self.definitions.create(request.workflow, ctx.caller)
        return pb.CreateWorkflowResponse(workflow=stored, created=created)

    async def validate_workflow(self, request: pb.ValidateWorkflowRequest,
                                ctx: Context) -> pb.ValidateWorkflowResponse:
        check(request.workflow, self._lookup)
        return pb.ValidateWorkflowResponse()

    async def get_workflow(self, request: pb.GetWorkflowRequest,
                           ctx: Context) -> pb.GetWorkflowResponse:
        return pb.GetWorkflowResponse(workflow=await self._workflow(request.name,
                                                                    request.version))

    async def list_workflows(self, request: pb.ListWorkflowsRequest,
                             ctx: Context) -> pb.ListWorkflowsResponse:
        for name in BUILTINS:
            with contextlib.suppress(FailedPrecondition):  # listed once it can run
                await self._install(name)
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token, "workflows", (str,))
        workflows, last = take_page(await self.definitions.list_latest(), lambda w: w.name,
                                    size, after and after[0])
        return pb.ListWorkflowsResponse(
            workflows=workflows,
            next_page_token=encode_page_token((last,), "workflows") if last else "")

    async def _install(self, name: str) -> None:
        """Store built-in workflow ``name`` as its latest version (once per node), checked
        against the mesh as it is now; FAILED_PRECONDITION saying what to enable when an
        engine it calls is not served."""
        if name in self._installed:
            return
        workflow = builtin(name)
        try:
            check(workflow, self._lookup)
        except InvalidArgument as error:
            missing = sorted({v.description.split(" ")[3] for v in error.violations
                              if v.description.startswith("no node serves ")})
            raise FailedPrecondition(
                f"the built-in workflow {name} cannot run on this mesh now: it calls "
                "Perfect Recall, Creative, Parallel Mind and the model router; `revo up` "
                "starts them all, elsewhere enable the recall, creative, parallel and models "
                f"engines. Not served now: {', '.join(missing) or error.message}") from None
        await self.definitions.create(workflow, BUILTIN_AUTHOR)
        self._installed.add(name)

    async def _workflow(self, name: str, version: int) -> pb.Workflow:
        if name in BUILTINS:
            await self._install(name)
        found = await self.definitions.get(name, version)
        if found is None:
            which = f"version {version} of " if version else ""
            raise NotFound(f"no {which}workflow {name[:80]!r}; ListWorkflows lists them")
        return found

    async def _definition(self, workflow: pb.Workflow) -> Definition:
        """The checked definition of a stored version (checked once per node)."""
        key = (workflow.name, workflow.version)
        found = self._checked.get(key)
        if found is None:
            try:
                found = check(workflow, self._lookup)
            except InvalidArgument as error:
                raise FailedPrecondition(f"workflow {workflow.name} version "
                                         f"{workflow.version} cannot run now: "
                                         f"{error.message}") from None
            self._checked[key] = found
        return found

    # -- runs ---------------------------------------------------------------------------

    def _permitted(self, definition: Definition, ctx: Context) -> None:
        if not self.runtime.config.auth.enabled:
            return
        refused = []
        for path in sorted(definition.methods):
            route = self.runtime.calls.route(path)
            needed = declared_permission(route.method) if route is not None else MANAGE
            if not grants(ctx.role, needed):
                refused.append(f"{path} ({permission_name(needed)})")
        if refused:
            raise PermissionDenied(f"the run would call methods role {ctx.role!r} may not: "
                                   f"{', '.join(refused)}",
                                   metadata={"methods": ",".join(refused)[:500]})

    async def start_run(self, request: pb.StartRunRequest, ctx: Context) -> pb.StartRunResponse:
        workflow = await self._workflow(request.workflow, request.version)
        definition = await self._definition(workflow)
        self._permitted(definition, ctx)
        run_id = uuid.uuid4().hex
        if request.idempotency_key:
            if len(request.idempotency_key) > 256:
                raise InvalidArgument(violations=[("idempotency_key", "is longer than 256 "
                                                                      "characters")])
            claimed = await self.index.claim_key(ctx.caller, request.idempotency_key, run_id)
            if claimed != run_id:
                return await self._claimed(claimed, workflow, definition, request, ctx)
        run = await self._begin(run_id, workflow, definition, request, ctx, claimed=False)
        if run is None:  # a retry of this call took the run over before this starter began
            return await self._claimed(run_id, workflow, definition, request, ctx)
        return pb.StartRunResponse(run=run, started=True)

    async def _claimed(self, run_id: str, workflow: pb.Workflow, definition: Definition,
                       request: pb.StartRunRequest, ctx: Context) -> pb.StartRunResponse:
        """The run an idempotency key already names.

        Its starter holds the run's lease from before it records the run until the run
        ends. A claimed run with no history and a free lease lost its starter (the starter
        died, or failed and let go; a dead one's lease expires within the lease TTL), and
        this call starts it under the claimed id: only one starter can take the lease and
        record it. Waits for a live starter as long as this call's deadline allows, then
        answers UNAVAILABLE (the caller retries with the same key); a retry never waits
        for a fixed time longer than its deadline, so it cannot time out every time.
        """
        for _ in range(_CLAIMED_POLLS):  # bounded by the count and by the deadline
            last = await self.history.last(run_id)
            if last is not None:
                if not last.event.HasField("run_finished") and await self._take(run_id):
                    # recorded, unfinished and owned by nobody: a late first append that
                    # the sweep may not know of (its summary was taken out); continue it
                    await self._resume(run_id)
                return pb.StartRunResponse(run=await self._run(run_id, ctx), started=False)
            run = await self._begin(run_id, workflow, definition, request, ctx, claimed=True)
            if run is not None:
                return pb.StartRunResponse(run=run, started=True)
            if ctx.time_remaining() < 2 * _CLAIMED_POLL_S:
                break
            await asyncio.sleep(_CLAIMED_POLL_S)
        raise Unavailable(f"run {run_id} (idempotency key {request.idempotency_key[:80]!r}) "
                          "is being started elsewhere; retry with the same key")

    async def _begin(self, run_id: str, workflow: pb.Workflow, definition: Definition,
                     request: pb.StartRunRequest, ctx: Context, *,
                     claimed: bool) -> pb.Run | None:
        """Record run ``run_id``'s start and run it here; None when another starter holds
        the run or recorded it first. ``claimed``: the id came from an idempotency key
        another call claimed, so its run may exist already."""
        if run_id in self._starting or run_id in self.running:
            return None  # a starter on this node is at it (a lease held here is not proof)
        self._starting.add(run_id)
        acquired = False
        try:
            state = RunState(run_id)
            runner = Runner(definition, state, self.history, self.runtime.calls, self.limits,
                            meters=self.meters)
            started = pb.RunStarted(workflow=workflow.name, version=workflow.version,
                                    started_by=ctx.caller, role=ctx.role,
                                    idempotency_key=request.idempotency_key)
            if request.HasField("input"):
                started.input.CopyFrom(request.input)
            # The index first: a starter that dies once the run is recorded must leave it
            # where the takeover sweep looks (active in the index), or nobody ever continues
            # it. One that dies before recording it leaves a summary without a history,
            # which the sweep takes off the active list (_resume).
            listed = pb.Run(id=run_id, workflow=workflow.name, version=workflow.version,
                            state=pb.RUN_STATE_RUNNING, started_by=ctx.caller,
                            idempotency_key=request.idempotency_key)
            listed.created_at.GetCurrentTime()
            if claimed:  # nothing is written unless the run is free and unrecorded
                acquired = await self.leases.acquire(run_id)
                if not acquired or await self.history.last(run_id) is not None:
                    return None
                await self.index.put(listed, fresh=True)
            else:  # a fresh id: the lease and the summary at once
                lease, put = await asyncio.gather(self.leases.acquire(run_id),
                                                  self.index.put(listed, fresh=True),
                                                  return_exceptions=True)
                acquired = lease is True
                for outcome in (lease, put):
                    if isinstance(outcome, BaseException):
                        raise outcome
                if not acquired:
                    return None
            try:
                await runner.record(run_started=started)
            except OwnershipLost:
                if runner.abandoned:  # the store did not answer
                    raise Unavailable(f"run {run_id} could not be recorded: the history "
                                      "store did not answer; retry (with the same "
                                      "idempotency key, it starts one run)",
                                      reason=Reason.STORE_UNAVAILABLE,
                                      metadata={"engine": "workflows"}) from None
                return None
            self._launch(runner)  # its first step need not wait for the summary below
            acquired = False  # the run holds it now, and lets it go when it ends
        finally:
            self._starting.discard(run_id)
            if acquired:  # not launched: let the next starter (or the sweep) have it
                with contextlib.suppress(Exception):
                    await self.leases.release(run_id)
        await self.index.put(state.to_proto(with_steps=False))
        return state.to_proto()

    def _launch(self, runner: Runner) -> None:
        run_id = runner.state.run_id

        async def run() -> None:
            try:
                await runner.run()
            except OwnershipLost as lost:
                log.info("workflow run %s: %s", run_id, lost)
                return
            self.meters.run(pb.RunState.Name(runner.state.state)  # type: ignore[arg-type]
                            .removeprefix("RUN_STATE_").lower())
            await self.index.put(runner.state.to_proto(with_steps=False))
            await self.leases.release(run_id)

        task = asyncio.get_running_loop().create_task(run())
        self.running[run_id] = task
        self._runners[run_id] = runner

        def forget(_: object) -> None:
            self.running.pop(run_id, None)
            self._runners.pop(run_id, None)

        task.add_done_callback(forget)

    def _lost(self, run_id: str) -> None:
        task, runner = self.running.get(run_id), self._runners.get(run_id)
        if task is not None and runner is not None:
            log.warning("workflow run %s: this node lost its lease; another continues it",
                        run_id)
            runner.abandon()
            task.cancel()

    async def _take(self, run_id: str) -> bool:
        """Take the lease of a run that no starter or runner works on here; whether this
        node holds it now."""
        return run_id not in self.running and run_id not in self._starting \
            and await self.leases.acquire(run_id)

    async def _sweep(self) -> None:
        """Take over active runs that no node owns (their node died)."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                active = await self.index.active()
            except Exception:  # the next sweep tries again
                log.exception("workflows: the takeover sweep could not read the index")
                continue
            for listed in active:
                await self._sweep_one(listed)

    async def _sweep_one(self, listed: pb.Run) -> None:
        """Take over one active run if nobody owns it. A run that cannot be continued now
        (its history unreadable, its workflow missing) is logged and its lease let go, so
        that it holds up neither the runs after it in this sweep nor another node; the
        next sweep tries it again."""
        try:
            if await self._take(listed.id):
                await self._resume(listed.id, listed)
        except Exception as error:
            log.warning("workflows: run %s could not be taken over (%r); the next sweep "
                        "tries again", listed.id, error)
            if listed.id not in self.running:
                with contextlib.suppress(Exception):
                    await self.leases.release(listed.id)

    async def _resume(self, run_id: str, listed: pb.Run | None = None) -> None:
        """Continue run ``run_id`` here (its lease held); ``listed``: its summary, when
        the sweep found it in the index."""
        state = fold(run_id, await self.history.read(run_id))
        if not state.workflow:  # not recorded: its starter failed or died before that
            # A starter's append can land late (sent as its nats-server hung, it lands when
            # the server resumes): a summary is taken out only once it is older than any
            # such append, or the run would be recorded with nobody to find it.
            if listed is not None and _age_s(listed) > self.settings.unrecorded_grace_s:
                await self.index.remove(run_id)
            await self.leases.release(run_id)
            return
        if state.finished:
            await self.index.put(state.to_proto(with_steps=False))
            await self.leases.release(run_id)
            return
        workflow = await self._workflow(state.workflow, state.version)
        definition = await self._definition(workflow)
        log.info("workflow run %s: continued on this node from event %d", run_id,
                 state.last_sequence)
        if listed is None:  # listed again, so that the sweep finds it if this node dies
            await self.index.put(state.to_proto(with_steps=False))
        self._launch(Runner(definition, state, self.history, self.runtime.calls,
                            self.limits, meters=self.meters))

    async def _state(self, run_id: str, ctx: Context) -> RunState:
        if not run_id or len(run_id) > 64:
            raise InvalidArgument(violations=[("run_id", "must be a run id")])
        try:
            state = fold(run_id, await self.history.read(run_id))
        except ValueError:
            raise InvalidArgument(violations=[("run_id", "must be a run id")]) from None
        if not state.workflow:
            raise NotFound(f"no run {run_id[:64]!r}")
        if state.started_by != ctx.caller and self.runtime.config.auth.enabled \
                and not grants(ctx.role, MANAGE):
            raise NotFound(f"no run {run_id[:64]!r}")  # others' runs are not shown
        return state

    async def _run(self, run_id: str, ctx: Context) -> pb.Run:
        return (await self._state(run_id, ctx)).to_proto()

    async def get_run(self, request: pb.GetRunRequest, ctx: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=await self._run(request.run_id, ctx))

    async def list_runs(self, request: pb.ListRunsRequest,
                        ctx: Context) -> pb.ListRunsResponse:
        # the caller's own runs unless it manages: filtered before paging, so no page is
        # short of others' runs
        mine = (ctx.caller if self.runtime.config.auth.enabled
                and not grants(ctx.role, MANAGE) else None)
        runs, token = await self.index.page(request.workflow, request.state,
                                            request.page_size, request.page_token, mine)
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    async def _outside(self, run_id: str, ctx: Context, *, done: Callable[[RunState], bool]
                       = lambda _: False, **kind: object) -> RunState:
        """Append a signal or a cancel request to a run's history, as any node may;
        nothing when ``done(state)`` says the request has already had its effect."""
        state = await self._state(run_id, ctx)
        for _ in range(50):  # bounded: each retry follows the owner's newer event
            if done(state):
                return state
            if state.finished:
                raise FailedPrecondition(f"run {run_id} has finished "
                                         f"({pb.RunState.Name(state.state)})")  # type: ignore[arg-type]
            event = pb.RunEvent(run_id=run_id, sequence=state.last_sequence + 1,
                                **kind)  # type: ignore[arg-type]
            event.time.GetCurrentTime()
            try:
                stored = await self.history.append(event, state.last_stream_sequence)
            except HistoryConflict:
                state = fold(run_id, await self.history.read(run_id))
                continue
            state.apply(Recorded(event, stored))
            await self.history.notify(run_id)  # the owner reads it at once
            return state
        raise Unavailable(f"run {run_id} is too busy to take the request now; retry")

    async def cancel_run(self, request: pb.CancelRunRequest,
                         ctx: Context) -> pb.CancelRunResponse:
        # idempotent: a run already cancelled, or asked to be, is answered as it is
        state = await self._outside(
            request.run_id, ctx, cancel_requested=pb.CancelRequested(
                requester=ctx.caller or "-"),
            done=lambda s: s.state == pb.RUN_STATE_CANCELLED or bool(s.cancel_requested))
        return pb.CancelRunResponse(run=state.to_proto())

    async def signal(self, request: pb.SignalRequest, ctx: Context) -> pb.SignalResponse:
        if not request.name or len(request.name) > 64:
            raise InvalidArgument(violations=[("name", "must be 1 to 64 characters")])
        signal = pb.SignalReceived(name=request.name, sender=ctx.caller)
        if request.HasField("payload"):
            signal.payload.CopyFrom(request.payload)
        await self._outside(request.run_id, ctx, signal_received=signal)
        return pb.SignalResponse()

    async def watch_run(self, request: pb.WatchRunRequest,
                        ctx: Context) -> AsyncIterator[pb.WatchRunResponse]:
        state = await self._state(request.run_id, ctx)
        if state.finished and request.after_sequence >= state.last_sequence:
            return
        follow = self.history.follow(request.run_id, request.after_sequence)
        async with contextlib.aclosing(follow):  # type: ignore[type-var]
            async for recorded in follow:
                yield pb.WatchRunResponse(event=recorded.event)
                if recorded.event.WhichOneof("event") == "run_finished":
                    return

