"""Running one workflow run on the node that owns it: :class:`Runner`.

The runner starts from the run's folded history (:mod:`revo_engine_workflows.state`):
- a fresh run;
- a run taken over from a node that died;
- a run woken from a sleep.

It repeats until the run ends:
1. start every step whose needs are finished;
2. record each step's events: started, waiting, succeeded, failed or skipped;
3. record the run's end.

Every write is a conditional append to the history. A step that was started but not
finished when its node died is started again by the next owner. Its calls carry the same
idempotency key, ``<run id>/<step id>``, so its effect happens once.

Signals and cancel requests are appended by whichever node receives them. The runner
follows the history to see them. When one lands between two of its own appends, the next
append conflicts; the runner reads what was added and, when it is only signals or cancel
requests, applies them and appends again. Any other event there means another node now
owns the run, and the runner stops.

A runner stopped from outside (its node stopping, or its lease lost) *abandons* the run:
it records nothing more and leaves the work its steps started (Parallel Mind tasks, say)
running, for the next owner to find under the same idempotency keys. Only the run's own
decisions (a cancel request, a group that no longer needs a branch) cancel that work.
When the history store does not answer, an append is tried again for up to
:attr:`Limits.store_patience_s`; then the runner abandons the run, whose lease lapses, and
a node that can reach the store continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import MethodDescriptor

from mesh.calls import MeshCalls, MeshChannel
from mesh.errors import RpcError, Unavailable
from mesh.runtime.cancel import cancel_and_wait
from revo_engine_parallel.v1 import tasks_pb2, tasks_pb2_grpc
from revo_engine_workflows.definitions import Definition
from revo_engine_workflows.expressions import ExpressionError
from revo_engine_workflows.history import (
    EventTooLarge,
    History,
    HistoryConflict,
    HistoryUnavailable,
    Recorded,
)
from revo_engine_workflows.metrics import CoordinatorMeters
from revo_engine_workflows.state import EXTERNAL, RunState, StepStatus, json_value
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["Limits", "OwnershipLost", "Runner"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

UNAVAILABLE_PAUSE_S = 0.2
"""The first pause before a call or task that met UNAVAILABLE is tried again in its
attempt; it doubles up to UNAVAILABLE_PAUSE_MAX_S."""
UNAVAILABLE_PAUSE_MAX_S = 2.0

_FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
                    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE})
"""Failures a retry cannot fix: a step fails at once on them."""
_TASK_DONE = frozenset({tasks_pb2.TASK_STATE_SUCCEEDED, tasks_pb2.TASK_STATE_FAILED,
                        tasks_pb2.TASK_STATE_CANCELLED, tasks_pb2.TASK_STATE_DEAD_LETTERED})


class OwnershipLost(Exception):
    """Another node recorded an event of this run: this node must stop running it."""


@dataclass(frozen=True)
class Limits:
    """The engine's defaults for steps ([engines.workflows])."""

    step_timeout_s: float = 300.0
    max_attempts: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    map_concurrency: int = 16
    progress_events: int = 100
    """Stream messages recorded as progress per step at most (the rest are not recorded)."""
    store_patience_s: float = 60.0
    """How long an append waits for an unanswering history store before the runner
    abandons the run."""
    outside_poll_s: float = 5.0
    """How often the runner looks for outside events without a notice (a lost one)."""


class StepFailed(Exception):
    def __init__(self, code: str, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.code, self.message, self.final = code, message, final


class Runner:
    """Runs one run to its end, or until ownership is lost (``await runner.run()``)."""

    def __init__(self, definition: Definition, state: RunState, history: History,
                 calls: MeshCalls, limits: Limits, *,
                 on_event: Callable[[Recorded], None] | None = None,
                 meters: CoordinatorMeters | None = None, window: int = 32) -> None:
        self.definition = definition
        self.state = state
        self.history = history
        self.calls = calls
        self.limits = limits
        self.window = window
        self.on_event = on_event
        self.meters = meters
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        """Set when an event from outside (a signal, a cancel request) was applied."""
        self._work: dict[str, float] = {}
        """Seconds each running step spent in its work (for the coordination latency)."""
        self.abandoned = False
        """Stopped from outside: record nothing more, leave the steps' work running."""

    # -- the history ------------------------------------------------------------------

    async def record(self, step_id: str = "", **kind: Any) -> None:
        """Append one event of this run (``kind``: its oneof field), as its owner. The
        append and its application to the state are shielded from cancellation: an event
        stored but not applied would look like another owner's."""
        await asyncio.shield(self._record(step_id, kind))

    async def _record(self, step_id: str, kind: dict[str, Any]) -> None:
        async with self._lock:
            for _ in range(100):  # bounded: each retry follows an outside event
                if self.abandoned:
                    raise OwnershipLost(f"run {self.state.run_id}: abandoned by this node")
                event = pb.RunEvent(run_id=self.state.run_id, step_id=step_id,
                                    sequence=self.state.last_sequence + 1, **kind)
                event.time.GetCurrentTime()
                try:
                    stream_sequence = await self._patiently(functools.partial(
                        self.history.append, event, self.state.last_stream_sequence))
                except HistoryConflict:
                    await self._patiently(self._catch_up)
                    continue
                self._applied(Recorded(event, stream_sequence))
                return
            raise OwnershipLost(f"run {self.state.run_id}: too many outside events at once")

    async def _patiently(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """``operation()`` on the history, tried again while the store does not answer
        (for at most ``store_patience_s``; then the run is abandoned here)."""
        deadline = time.monotonic() + self.limits.store_patience_s
        delay = 0.05
        while True:
            try:
                return await operation()
            except HistoryUnavailable as error:
                if self.abandoned:  # stopped meanwhile: the next owner records instead
                    raise OwnershipLost(f"run {self.state.run_id}: abandoned by this node "
                                        f"while the history store did not answer") from None
                if time.monotonic() + delay > deadline:
                    self.abandoned = True
                    raise OwnershipLost(f"run {self.state.run_id}: the history store did not "
                                        f"answer for {self.limits.store_patience_s:g} s "
                                        f"({error}); another node continues the run") from None
                log.warning("workflow run %s: the history store did not answer (%s); "
                            "trying again in %.2f s", self.state.run_id, error, delay)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _catch_up(self) -> None:
        """Apply what others appended since our last event: only outside events may be
        there; anything else means another owner."""
        for recorded in await self.history.read(self.state.run_id):
            if recorded.event.sequence <= self.state.last_sequence:
                continue
            if recorded.event.WhichOneof("event") not in EXTERNAL:
                raise OwnershipLost(f"run {self.state.run_id}: event "
                                    f"{recorded.event.sequence} was recorded by another owner")
            self._applied(recorded)

    def _applied(self, recorded: Recorded) -> None:
        if self.state.apply(recorded):
            if recorded.event.WhichOneof("event") in EXTERNAL:
                self._changed.set()
            if self.on_event is not None:
                self.on_event(recorded)

    async def _follow(self) -> None:
        """Apply outside events (signals, cancel requests): look when their writer's notice
        comes, and every ``outside_poll_s`` in case one was lost."""
        noticed = asyncio.Event()
        subscription = None
        try:
            try:
                subscription = await self.history.notices(self.state.run_id, noticed.set)
            except Exception as error:  # NATS away: the periodic looks still come
                log.warning("workflow run %s: cannot hear notices (%r)", self.state.run_id,
                            error)
            while True:
                noticed.clear()
                try:
                    await self._look_outside()
                except Exception as error:  # NATS's many errors: look again later
                    log.warning("workflow run %s: reading outside events failed (%r)",
                                self.state.run_id, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(noticed.wait(), self.limits.outside_poll_s)
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _look_outside(self) -> None:
        """Apply the outside events appended after this runner's last event, if any."""
        last = await self.history.last(self.state.run_id)
        if last is None or last.event.sequence <= self.state.last_sequence:
            return
        for recorded in await self.history.read(self.state.run_id):
            async with self._lock:
                if recorded.event.sequence != self.state.last_sequence + 1:
                    continue
                if recorded.event.WhichOneof("event") not in EXTERNAL:
                    return  # another owner's: this runner's next append fails
                self._applied(recorded)

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the run ends; raises :class:`OwnershipLost` when another node took
        it over."""
        follower = asyncio.get_running_loop().create_task(self._follow())
        steps: dict[str, asyncio.Task[None]] = {}
        try:
            await self._loop(steps)
        except BaseException:  # cancelled from outside, or ownership lost: abandon the run
            self.abandoned = True
            raise
        finally:
            await cancel_and_wait(follower, *steps.values())

    def abandon(self) -> None:
        """Stop recording: the caller is about to cancel :meth:`run` because another node
        will continue the run (this node stops, or lost its lease)."""
        self.abandoned = True

    async def _loop(self, steps: dict[str, asyncio.Task[None]]) -> None:
        """Start steps as their needs finish, until the run ends (``steps``: the tasks
        started, which :meth:`run` stops on the way out)."""
        while not self.state.finished:
            if self.state.cancel_requested:
                await self._cancel(steps, f"cancelled by {self.state.cancel_requested}")
                return
            failed = self._fatal()
            if failed is not None:
                await self._cancel(steps, None)
                await self._finish(pb.RUN_STATE_FAILED, None, failed)
                return
            for step_id in self._ready(steps):
                steps[step_id] = asyncio.get_running_loop().create_task(
                    self._guarded(self.definition.steps[step_id], step_id))
            if all(self.state.step(s).finished for s in self.definition.order):
                await self._succeed()
                return
            self._changed.clear()
            running = [t for t in steps.values() if not t.done()]
            waiter = asyncio.get_running_loop().create_task(self._changed.wait())
            try:
                await asyncio.wait([*running, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            for task in [t for t in steps.values() if t.done()]:
                if not task.cancelled() and isinstance(task.exception(), OwnershipLost):
                    raise task.exception()  # type: ignore[misc]

    async def _guarded(self, step: pb.Step, step_id: str) -> None:
        """A top-level step; a bug in running it fails the step (INTERNAL) rather than
        leaving the run waiting for it."""
        try:
            await self._step(step, step_id, None)
        except (OwnershipLost, asyncio.CancelledError):
            raise
        except Exception as error:
            log.exception("workflow run %s: step %s failed unexpectedly", self.state.run_id,
                          step_id)
            status = self.state.step(step_id)
            if not status.finished:
                await self.record(step_id, step_failed=pb.StepFailed(
                    attempt=status.attempt, code="INTERNAL",
                    message=f"{type(error).__name__}: {error}"[:2000]))

    def _ready(self, started: dict[str, asyncio.Task[None]]) -> list[str]:
        ready = []
        for step_id in self.definition.order:
            if step_id in started or self.state.step(step_id).finished:
                continue
            if all(self._done_for_dependents(need) for need in self.definition.needs[step_id]):
                ready.append(step_id)
        return ready

    def _done_for_dependents(self, step_id: str) -> bool:
        status = self.state.step(step_id)
        if status.state in (pb.STEP_STATE_SUCCEEDED, pb.STEP_STATE_SKIPPED):
            return True
        return status.state == pb.STEP_STATE_FAILED and \
            self.definition.steps[step_id].on_failure == pb.ON_FAILURE_CONTINUE

    def _fatal(self) -> str | None:
        for step_id in self.definition.order:
            status = self.state.step(step_id)
            step = self.definition.steps[step_id]
            if status.state in (pb.STEP_STATE_FAILED, pb.STEP_STATE_CANCELLED) and \
                    step.on_failure != pb.ON_FAILURE_CONTINUE:
                return f"step {step_id} failed: {status.code} {status.error}".strip()
        return None

    async def _succeed(self) -> None:
        try:
            output = self._output()
        except ExpressionError as error:
            await self._finish(pb.RUN_STATE_FAILED, None, f"the workflow's output: {error}")
            return
        await self._finish(pb.RUN_STATE_SUCCEEDED, output, "")

    def _output(self) -> Any:
        expression = self.definition.expressions.get(("", "output"))
        if expression is not None:
            return expression.evaluate(self._variables())
        needed = {n for needs in self.definition.needs.values() for n in needs}
        sinks = [s for s in self.definition.order if s not in needed]
        if len(sinks) == 1:
            return self.state.step(sinks[0]).output
        return {s: self.state.step(s).output for s in sinks}

    async def _finish(self, state: int, output: Any, error: str) -> None:
        finished = pb.RunFinished(state=state, error=error[:2000])  # type: ignore[arg-type]
        if output is not None:
            finished.output.CopyFrom(json_value(output))
        try:
            await self.record(run_finished=finished)
        except EventTooLarge as error:
            await self.record(run_finished=pb.RunFinished(
                state=pb.RUN_STATE_FAILED, error=f"the run's output is too large to record: "
                f"{error}"))

    async def _cancel(self, steps: dict[str, asyncio.Task[None]], reason: str | None) -> None:
        await cancel_and_wait(*steps.values())
        for step_id, status in list(self.state.steps.items()):
            if not status.finished and status.state != pb.STEP_STATE_PENDING:
                await self.record(step_id, step_failed=pb.StepFailed(
                    attempt=status.attempt, code="CANCELLED", message="the run ended"))
        if reason is not None:
            await self._finish(pb.RUN_STATE_CANCELLED, None, reason)

    # -- steps ------------------------------------------------------------------------

    def _variables(self, scope: dict[str, Any] | None = None) -> dict[str, Any]:
        steps = {sid: {"output": s.output,
                       "state": pb.StepState.Name(s.state)}  # type: ignore[arg-type]
                 for sid, s in self.state.steps.items() if s.finished}
        run = {"id": self.state.run_id, "workflow": self.state.workflow,
               "version": self.state.version, "started_by": self.state.started_by}
        return {"input": self.state.input, "steps": steps, "run": run, **(scope or {})}

    def _expression(self, step: pb.Step, name: str, scope: dict[str, Any] | None) -> Any:
        expression = self.definition.expressions.get((step.id, name))
        if expression is None:
            return None
        try:
            return expression.evaluate(self._variables(scope))
        except ExpressionError as error:
            raise StepFailed("INVALID_ARGUMENT", f"{name}: {error}", final=True) from None

    async def _step(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None) -> None:
        """Run one step (or map branch ``step_id``) to its end, with its retries; a
        failure that ends it is recorded, and handled by its ``on_failure``."""
        status = self.state.step(step_id)
        if status.finished:
            return
        began, self._work[step_id] = time.perf_counter(), 0.0
        try:
            await self._steps(step, step_id, scope, status)
        finally:
            work = self._work.pop(step_id, 0.0)
            if self.meters is not None and status.finished:
                outcome = {pb.STEP_STATE_SUCCEEDED: "succeeded",
                           pb.STEP_STATE_SKIPPED: "skipped"}.get(status.state, "failed")
                self.meters.step(step.WhichOneof("kind") or "", outcome,
                                 time.perf_counter() - began - work)

    async def _steps(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None,
                     status: StepStatus) -> None:
        try:
            if step.when and not self._expression(step, "when", scope):
                await self.record(step_id, step_skipped=pb.StepSkipped())
                return
        except StepFailed as failure:
            await self._failed(step_id, status, failure, will_retry=False)
            return
        retry = step.retry
        # a group does not retry as a whole: its branches retry themselves
        attempts = 1 if step.WhichOneof("kind") == "group" else (
            retry.max_attempts or self.limits.max_attempts)
        backoff = (retry.initial_backoff.ToNanoseconds() / 1e9
                   if retry.HasField("initial_backoff") else self.limits.initial_backoff_s)
        longest = (retry.max_backoff.ToNanoseconds() / 1e9
                   if retry.HasField("max_backoff") else self.limits.max_backoff_s)
        attempt = max(1, status.attempt)  # a step started before a takeover runs again
        if status.state == pb.STEP_STATE_WAITING and status.waiting_reason == "retry":
            await self._wait_until(step_id, 0.0, "retry")  # the rest of the backoff
            attempt += 1
        while True:
            started = status.state in (pb.STEP_STATE_RUNNING, pb.STEP_STATE_WAITING)
            if not started or status.attempt != attempt:
                await self.record(step_id, step_started=pb.StepStarted(attempt=attempt))
            working = time.perf_counter()
            try:
                output = await self._attempt(step, step_id, scope)
            except StepFailed as failure:
                self._work[step_id] = self._work.get(step_id, 0.0) + (
                    time.perf_counter() - working)
                retrying = not failure.final and attempt < attempts
                await self._failed(step_id, status, failure, will_retry=retrying)
                if not retrying:
                    await self._fallback(step, step_id, status, scope)
                    return
                delay = min(longest, backoff * 2 ** (attempt - 1))
                await self._wait_until(step_id, time.time() + delay, "retry")
                attempt += 1
                continue
            self._work[step_id] = self._work.get(step_id, 0.0) + (
                time.perf_counter() - working)
            try:
                await self.record(step_id, step_succeeded=_succeeded(output))
            except EventTooLarge as error:
                await self._failed(step_id, status, StepFailed(
                    "RESOURCE_EXHAUSTED", f"the step's output is too large to record: {error}; "
                    "keep large data elsewhere (Recall, an object store) and return a "
                    "reference", final=True), will_retry=False)
                await self._fallback(step, step_id, status, scope)
            return

    async def _failed(self, step_id: str, status: StepStatus, failure: StepFailed,
                      will_retry: bool) -> None:
        await self.record(step_id, step_failed=pb.StepFailed(
            attempt=status.attempt, code=failure.code, message=failure.message[:2000],
            will_retry=will_retry))

    async def _fallback(self, step: pb.Step, step_id: str, status: StepStatus,
                        scope: dict[str, Any] | None) -> None:
        if step.on_failure != pb.ON_FAILURE_FALLBACK:
            return
        await self._step(self.definition.steps[step.fallback], step.fallback, scope)
        replacement = self.state.step(step.fallback)
        if replacement.state == pb.STEP_STATE_SUCCEEDED:  # stands for the failed step
            await self.record(step_id, step_succeeded=_succeeded(replacement.output))

    async def _wait_until(self, step_id: str, until: float, reason: str) -> None:
        status = self.state.step(step_id)
        if not (status.state == pb.STEP_STATE_WAITING and status.waiting_reason == reason):
            waiting = pb.StepWaiting(reason=reason)
            waiting.until.FromMilliseconds(int(until * 1000))
            await self.record(step_id, step_waiting=waiting)
        else:
            until = status.waiting_until_ms / 1000  # a takeover keeps the recorded time
        await asyncio.sleep(max(0.0, until - time.time()))

    async def _attempt(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None
                       ) -> Any:
        kind = step.WhichOneof("kind")
        timeout = self._timeout(step)
        if kind in ("call", "task"):
            return await self._call_or_task(step, step_id, scope, timeout)
        if kind == "group":
            return await self._group(step, step_id, scope)
        elif kind == "sleep":
            status = self.state.step(step_id)
            until = status.started_ms / 1000 + step.sleep.duration.ToNanoseconds() / 1e9
            await self._wait_until(step_id, until, "sleep")
            return None
        return await self._signal(step, step_id)

    async def _call_or_task(self, step: pb.Step, step_id: str,
                            scope: dict[str, Any] | None, timeout: float) -> Any:
        """One attempt of a call or task step, within ``timeout``. UNAVAILABLE (no node
        serves the method right now, or the node that had the call was lost, as in a NATS
        leader election or a node restart) is tried again within the attempt, with a short
        backoff, until its time is up: the step's idempotency key makes the retry safe as
        it makes a next attempt safe, and a passing outage does not use up the step's
        attempts (which are for the work failing)."""
        kind = step.WhichOneof("kind")
        deadline = time.monotonic() + timeout
        pause = UNAVAILABLE_PAUSE_S
        while True:
            left = deadline - time.monotonic()
            work = (self._call(step, step_id, scope, left) if kind == "call"
                    else self._task(step, step_id, scope, left))
            try:
                return await asyncio.wait_for(work, left)
            except TimeoutError:
                raise StepFailed("DEADLINE_EXCEEDED",
                                 f"the step took longer than {timeout:g} s",
                                 final=False) from None
            except RpcError as error:
                if error.code is not grpc.StatusCode.UNAVAILABLE or (
                        time.monotonic() + pause >= deadline):
                    raise StepFailed(error.code.name, error.message,
                                     final=error.code in _FINAL) from None
                log.info("run %s step %s: %s; trying again in %.1f s", self.state.run_id,
                         step_id, error.message, pause)
            if self.meters is not None:
                self.meters.unavailable_retry(kind or "")
            await asyncio.sleep(pause)
            pause = min(UNAVAILABLE_PAUSE_MAX_S, pause * 2)

    def _timeout(self, step: pb.Step) -> float:
        """A step attempt's timeout: its own, or the engine's default."""
        return (step.timeout.ToNanoseconds() / 1e9 if step.HasField("timeout")
                else self.limits.step_timeout_s)

    def _channel(self, timeout: float) -> MeshChannel:
        return MeshChannel(self.calls, caller=self.state.started_by, role=self.state.role,
                           request_id=f"{self.state.run_id[:12]}-wf",
                           deadline=time.monotonic() + timeout, window=self.window)

    def _key(self, step_id: str) -> tuple[tuple[str, str]]:
        return (("idempotency-key", f"{self.state.run_id}/{step_id}"),)

    async def _call(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None,
                    timeout: float) -> Any:
        call = step.call
        method, message = self._request(step, scope, call.method, call.request)
        if not method.server_streaming:
            return await self._unary(method, call.method, message, timeout, step_id)
        reply_type = message_factory.GetMessageClass(method.output_type)
        stream = self._channel(timeout).unary_stream(call.method, request_serializer=_serialize,
                                      response_deserializer=reply_type.FromString)
        messages: list[Any] = []
        recorded = 0
        async for reply in stream(message, metadata=self._key(step_id)):
            data = _json(reply)
            messages.append(data)
            if recorded < self.limits.progress_events:
                recorded += 1
                with contextlib.suppress(EventTooLarge):  # progress is not kept, then
                    await self.record(step_id, step_progress=pb.StepProgress(
                        data=json_value(data)))
        return messages if call.collect_stream else (messages[-1] if messages else None)

    async def _unary(self, method: MethodDescriptor, path: str, message: Any, timeout: float,
                     key: str) -> Any:
        """Call unary ``method`` as the run's starter, with idempotency key ``key``; its
        reply as JSON."""
        reply_type = message_factory.GetMessageClass(method.output_type)
        unary = self._channel(timeout).unary_unary(path, request_serializer=_serialize,
                                                   response_deserializer=reply_type.FromString)
        return _json(await unary(message, metadata=self._key(key)))

    def _request(self, step: pb.Step, scope: dict[str, Any] | None, path: str,
                 constant: struct_pb2.Struct, name: str = "request"
                 ) -> tuple[MethodDescriptor, Any]:
        """The method a step calls and its request: ``constant`` with the step's
        request expression (``name``) merged over it."""
        route = self.calls.route(path)
        if route is None:
            raise Unavailable(f"no live node serves {path} right now")
        method = route.method
        request = json_format.MessageToDict(constant)
        extra = self._expression(step, name, scope)
        if extra is not None:
            if not isinstance(extra, dict):
                raise StepFailed("INVALID_ARGUMENT", "request_expr must give a map, got "
                                 f"{type(extra).__name__}", final=True)
            request.update(extra)
        message = message_factory.GetMessageClass(method.input_type)()
        try:
            json_format.ParseDict(request, message)
        except json_format.ParseError as error:
            raise StepFailed("INVALID_ARGUMENT", f"the request does not fit "
                             f"{method.input_type.full_name}: {error}", final=True) from None
        return method, message

    async def _task(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None,
                    timeout: float) -> Any:
        task = step.task
        reply_type: Any = None
        spec = tasks_pb2.TaskSpec(priority=task.priority)
        if step.HasField("timeout"):  # the task does not outlive its step
            spec.timeout.CopyFrom(step.timeout)
        if task.method:
            method, message = self._request(step, scope, task.method, task.request)
            reply_type = message_factory.GetMessageClass(method.output_type)
            spec.call.CopyFrom(tasks_pb2.MethodCall(method=task.method,
                                                    request=message.SerializeToString()))
        else:
            payload = self._expression(step, "payload", scope) if task.payload_expr else (
                json_format.MessageToDict(task.payload) if task.HasField("payload") else None)
            spec.typed.CopyFrom(tasks_pb2.TypedWork(type=task.type,
                                                    payload=json.dumps(payload).encode()))
        channel = self._channel(timeout)
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        submitted = await tasks.Submit(tasks_pb2.SubmitRequest(tasks=[spec]),
                                       metadata=self._key(step_id))
        task_id = submitted.tasks[0].id
        try:
            final = submitted.tasks[0]
            if final.state not in _TASK_DONE:
                async for update in tasks.Watch(tasks_pb2.WatchRequest(id=task_id)):
                    final = update
                    if update.state in _TASK_DONE:
                        break
        except asyncio.CancelledError:
            if not self.abandoned:  # the run (or its group) no longer wants the task
                with contextlib.suppress(Exception):
                    await asyncio.shield(tasks.Cancel(tasks_pb2.CancelRequest(id=task_id)))
            raise
        if final.state != tasks_pb2.TASK_STATE_SUCCEEDED:
            code = final.error.code or tasks_pb2.TaskState.Name(final.state).removeprefix(
                "TASK_STATE_")
            raise StepFailed(code, final.error.message or final.dead_letter_reason
                             or "the task did not succeed", final=True)
        if final.result_object:  # a large result: Get reads it from the object store
            final = await tasks.Get(tasks_pb2.GetRequest(id=task_id))
        if reply_type is not None:
            return _json(reply_type.FromString(final.result))
        return _result(final.result)

    async def _signal(self, step: pb.Step, step_id: str) -> Any:
        """The n-th signal of its name, where n counts the wait_signal steps of that name
        that finished before this one."""
        name = step.wait_signal.name
        used = sum(1 for s in self.state.steps.values() if s.finished and s.id != step_id
                   and self.definition.steps.get(s.id, pb.Step()).wait_signal.name == name
                   and s.state == pb.STEP_STATE_SUCCEEDED)
        deadline = (time.time() + step.wait_signal.timeout.ToNanoseconds() / 1e9
                    if step.wait_signal.HasField("timeout") else None)
        status = self.state.step(step_id)
        if status.state != pb.STEP_STATE_WAITING:
            waiting = pb.StepWaiting(reason="signal")
            if deadline is not None:
                waiting.until.FromMilliseconds(int(deadline * 1000))
            await self.record(step_id, step_waiting=waiting)
        elif status.waiting_until_ms:
            deadline = status.waiting_until_ms / 1000
        while len(self.state.signals.get(name, [])) <= used:
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                raise StepFailed("DEADLINE_EXCEEDED", f"no signal {name!r} came in time",
                                 final=True)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.state.signals[name][used]

    async def _group(self, step: pb.Step, step_id: str, scope: dict[str, Any] | None) -> Any:
        group = step.group
        if group.strategy == pb.STRATEGY_MAP:
            items = self._expression(step, "items", scope)
            if not isinstance(items, list):
                raise StepFailed("INVALID_ARGUMENT", "items must give a list, got "
                                 f"{type(items).__name__}", final=True)
            limit = group.concurrency or self.limits.map_concurrency
            gate = asyncio.Semaphore(limit)

            async def branch(index: int, item: Any) -> None:
                async with gate:
                    await self._step(group.each, f"{step_id}[{index}]",
                                     {**(scope or {}), "item": item, "index": index})

            branch_ids = [f"{step_id}[{i}]" for i in range(len(items))]
            await self._branches([branch(i, item) for i, item in enumerate(items)])
            return self._collect(branch_ids)
        branch_ids = [b.id for b in group.steps]
        runs = [self._step(b, b.id, scope) for b in group.steps]
        if group.strategy == pb.STRATEGY_ALL:
            await self._branches(runs)
            return self._collect(branch_ids)
        if group.strategy == pb.STRATEGY_RACE:
            return await self._race(branch_ids, runs)
        return await self._vote(step, branch_ids, runs, scope)

    async def _branches(self, runs: Sequence[Awaitable[None]]) -> None:
        tasks = [asyncio.get_running_loop().create_task(_as_coroutine(r)) for r in runs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def _collect(self, branch_ids: list[str]) -> list[Any]:
        failed = [b for b in branch_ids if self.state.step(b).state in
                  (pb.STEP_STATE_FAILED, pb.STEP_STATE_CANCELLED)
                  and self._branch_fatal(b)]
        if failed:
            first = self.state.step(failed[0])
            raise StepFailed("ABORTED", f"branch {failed[0]} failed: {first.code} "
                             f"{first.error}", final=True)
        return [self.state.step(b).output for b in branch_ids]

    def _branch_fatal(self, branch_id: str) -> bool:
        base = branch_id.split("[", 1)[0]
        step = self.definition.steps.get(base)
        if step is not None and step.WhichOneof("kind") == "group":
            step = step.group.each
        return step is None or step.on_failure != pb.ON_FAILURE_CONTINUE

    async def _race(self, branch_ids: list[str], runs: Sequence[Awaitable[None]]) -> Any:
        tasks = {asyncio.get_running_loop().create_task(_as_coroutine(r)): b
                 for r, b in zip(runs, branch_ids, strict=True)}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if self.state.step(tasks[task]).state == pb.STEP_STATE_SUCCEEDED:
                        return self.state.step(tasks[task]).output
            raise StepFailed("ABORTED", "every branch of the race failed", final=True)
        finally:
            await self._stop_losers(tasks)

    async def _stop_losers(self, tasks: dict[asyncio.Task[None], str]) -> None:
        await cancel_and_wait(*tasks)
        if self.abandoned:
            return
        for branch in tasks.values():
            status = self.state.step(branch)
            if not status.finished and status.state != pb.STEP_STATE_PENDING:
                await self.record(branch, step_failed=pb.StepFailed(
                    attempt=status.attempt, code="CANCELLED", message="the group decided"))

    async def _vote(self, step: pb.Step, branch_ids: list[str], runs: Sequence[Awaitable[None]],
                    scope: dict[str, Any] | None) -> Any:
        group = step.group
        if group.HasField("judge"):
            return await self._judged(step, branch_ids, runs, scope)
        quorum = group.quorum or len(branch_ids) // 2 + 1
        expression = self.definition.expressions.get((step.id, "vote_key"))
        tasks = {asyncio.get_running_loop().create_task(_as_coroutine(r)): b
                 for r, b in zip(runs, branch_ids, strict=True)}
        votes: dict[str, list[str]] = {}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    status = self.state.step(tasks[task])
                    if status.state != pb.STEP_STATE_SUCCEEDED:
                        continue
                    key = status.output
                    if expression is not None:
                        try:
                            key = expression.evaluate({**self._variables(scope),
                                                       "output": status.output})
                        except ExpressionError as error:
                            raise StepFailed("INVALID_ARGUMENT", f"vote_key: {error}",
                                             final=True) from None
                    ballot = json.dumps(key, sort_keys=True)
                    votes.setdefault(ballot, []).append(tasks[task])
                    if len(votes[ballot]) >= quorum:
                        return self.state.step(votes[ballot][0]).output
                most = max((len(v) for v in votes.values()), default=0)
                if most + len(pending) < quorum:
                    break  # no value can reach the quorum any more
            tally = ", ".join(f"{k} x{len(v)}" for k, v in votes.items()) or "no votes"
            raise StepFailed("ABORTED", f"no value reached the quorum of {quorum} "
                             f"({tally})", final=True)
        finally:
            await self._stop_losers(tasks)


    async def _judged(self, step: pb.Step, branch_ids: list[str],
                      runs: Sequence[Awaitable[None]], scope: dict[str, Any] | None) -> Any:
        """Every branch to its end, then the judge's pick among the outputs of those that
        succeeded."""
        await self._branches(runs)
        succeeded = [b for b in branch_ids
                     if self.state.step(b).state == pb.STEP_STATE_SUCCEEDED]
        if not succeeded:
            raise StepFailed("ABORTED", "no branch of the vote succeeded", final=True)
        outputs = [self.state.step(b).output for b in succeeded]
        judge = step.group.judge
        within = {**(scope or {}), "outputs": outputs}
        try:
            method, message = self._request(step, within, judge.method, judge.request,
                                            name="judge_request")
            reply = await self._unary(method, judge.method, message, self._timeout(step),
                                      f"{step.id}/judge")
        except RpcError as error:
            raise StepFailed(error.code.name, f"the judge {judge.method}: {error.message}",
                             final=error.code in _FINAL) from None
        choice = self.definition.expressions[(step.id, "judge_choice")]
        try:
            index = choice.evaluate({**self._variables(scope), "output": reply,
                                     "outputs": outputs})
        except ExpressionError as error:
            raise StepFailed("INVALID_ARGUMENT", f"judge choice: {error}", final=True) from None
        if not isinstance(index, int) or isinstance(index, bool) \
                or not 0 <= index < len(outputs):
            raise StepFailed("OUT_OF_RANGE", f"the judge's choice is {index!r}, not an index "
                             f"of the {len(outputs)} outputs", final=True)
        return outputs[index]


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _json(message: Any) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _succeeded(output: Any) -> pb.StepSucceeded:
    succeeded = pb.StepSucceeded()
    if output is not None:
        succeeded.output.CopyFrom(json_value(output))
    return succeeded


def _result(data: bytes) -> Any:
    """A task's result: its JSON, or its text, or None."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")

