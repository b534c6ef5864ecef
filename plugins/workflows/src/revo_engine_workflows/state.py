"""A run's state is a fold of its history: :func:`fold` and :meth:`RunState.apply`.

Nothing about a run lives anywhere but in its events (:mod:`revo_engine_workflows.history`):
the node that continues a run after its node died folds the same events and knows what the
first knew. Events are applied in order, each exactly once (by its sequence number).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from revo_engine_workflows.history import Recorded
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["EXTERNAL", "RunState", "StepStatus", "fold", "json_value", "value_json"]

EXTERNAL = frozenset({"signal_received", "cancel_requested"})
"""Events any node may record (Signal, CancelRun); every other event is the owner's."""

FINISHED_STEP = frozenset({pb.STEP_STATE_SUCCEEDED, pb.STEP_STATE_FAILED,
                           pb.STEP_STATE_SKIPPED, pb.STEP_STATE_CANCELLED})
FINISHED_RUN = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED,
                          pb.RUN_STATE_CANCELLED})


def value_json(value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as a JSON-able Python value."""
    return json_format.MessageToDict(value)


def json_value(data: Any) -> struct_pb2.Value:
    """A JSON-able Python value as a ``google.protobuf.Value``."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


@dataclass
class StepStatus:
    id: str
    state: int = pb.STEP_STATE_PENDING
    attempt: int = 0
    output: Any = None
    error: str = ""
    code: str = ""
    started_ms: int = 0
    """When its current attempt started (the event's time)."""
    finished_ms: int = 0
    waiting_until_ms: int = 0
    """A sleep's or a backoff's end, 0 when not waiting on a time."""
    waiting_reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STEP


@dataclass
class RunState:
    run_id: str
    workflow: str = ""
    version: int = 0
    input: Any = None
    started_by: str = ""
    role: str = ""
    idempotency_key: str = ""
    state: int = pb.RUN_STATE_UNSPECIFIED
    steps: dict[str, StepStatus] = field(default_factory=dict)
    signals: dict[str, list[Any]] = field(default_factory=dict)
    """Payloads of every signal received, by name, in order."""
    cancel_requested: str = ""
    """Who asked to cancel ('' when nobody did)."""
    output: Any = None
    error: str = ""
    created_ms: int = 0
    finished_ms: int = 0
    last_sequence: int = 0
    last_stream_sequence: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_RUN

    def step(self, step_id: str) -> StepStatus:
        status = self.steps.get(step_id)
        if status is None:
            status = self.steps[step_id] = StepStatus(step_id)
        return status

    def apply(self, recorded: Recorded) -> bool:
        """Apply the next event; False (and nothing changes) for one already applied.
        Raises ValueError for an event that skips a sequence number."""
        event = recorded.event
        if event.sequence <= self.last_sequence:
            return False
        if event.sequence != self.last_sequence + 1:
            raise ValueError(f"run {self.run_id}: event {event.sequence} follows "
                             f"{self.last_sequence}")
        self.last_sequence = event.sequence
        self.last_stream_sequence = recorded.stream_sequence
        at = event.time.ToMilliseconds()
        kind = event.WhichOneof("event")
        if kind == "run_started":
            started = event.run_started
            self.workflow, self.version = started.workflow, started.version
            self.input = value_json(started.input) if started.HasField("input") else None
            self.started_by, self.role = started.started_by, started.role
            self.idempotency_key = started.idempotency_key
            self.state, self.created_ms = pb.RUN_STATE_RUNNING, at
        elif kind == "run_finished":
            finished = event.run_finished
            self.state = finished.state
            self.output = value_json(finished.output) if finished.HasField("output") else None
            self.error, self.finished_ms = finished.error, at
        elif kind == "signal_received":
            signal = event.signal_received
            self.signals.setdefault(signal.name, []).append(
                value_json(signal.payload) if signal.HasField("payload") else None)
        elif kind == "cancel_requested":
            self.cancel_requested = event.cancel_requested.requester or "-"
        else:
            self._apply_step(self.step(event.step_id), event, kind, at)
        return True

    def _apply_step(self, status: StepStatus, event: pb.RunEvent, kind: str | None,
                    at: int) -> None:
        if kind == "step_started":
            status.state, status.attempt = pb.STEP_STATE_RUNNING, event.step_started.attempt
            status.started_ms, status.waiting_until_ms, status.waiting_reason = at, 0, ""
            status.error = status.code = ""
        elif kind == "step_waiting":
            waiting = event.step_waiting
            status.state = pb.STEP_STATE_WAITING
            status.waiting_until_ms = (waiting.until.ToMilliseconds()
                                       if waiting.HasField("until") else 0)
            status.waiting_reason = waiting.reason
        elif kind == "step_succeeded":
            status.state, status.finished_ms = pb.STEP_STATE_SUCCEEDED, at
            succeeded = event.step_succeeded
            status.output = (value_json(succeeded.output) if succeeded.HasField("output")
                             else None)
            status.error = status.code = ""
        elif kind == "step_failed":
            failed = event.step_failed
            status.error, status.code = failed.message, failed.code
            if not failed.will_retry:
                status.state = (pb.STEP_STATE_CANCELLED if failed.code == "CANCELLED"
                                else pb.STEP_STATE_FAILED)
                status.finished_ms = at
        elif kind == "step_skipped":
            status.state, status.finished_ms = pb.STEP_STATE_SKIPPED, at
        # step_progress changes nothing but the watchers' view

    @property
    def waiting(self) -> bool:
        """Every step that started and has not finished waits (on a time or a signal)."""
        open_steps = [s for s in self.steps.values()
                      if not s.finished and s.state != pb.STEP_STATE_PENDING]
        return bool(open_steps) and all(s.state == pb.STEP_STATE_WAITING for s in open_steps)

    def to_proto(self, with_steps: bool = True) -> pb.Run:
        run = pb.Run(id=self.run_id, workflow=self.workflow, version=self.version,
                     state=(pb.RUN_STATE_WAITING if self.state == pb.RUN_STATE_RUNNING
                            and self.waiting else self.state),  # type: ignore[arg-type]
                     error=self.error, started_by=self.started_by,
                     idempotency_key=self.idempotency_key, last_sequence=self.last_sequence)
        if self.input is not None:
            run.input.CopyFrom(json_value(self.input))
        if self.output is not None:
            run.output.CopyFrom(json_value(self.output))
        if self.created_ms:
            run.created_at.FromMilliseconds(self.created_ms)
        if self.finished_ms:
            run.finished_at.FromMilliseconds(self.finished_ms)
        if with_steps:
            for status in self.steps.values():
                if status.state == pb.STEP_STATE_PENDING:
                    continue  # not started: nothing recorded about it yet
                step = run.steps.add(id=status.id, state=status.state, attempt=status.attempt,
                                     error=status.error)
                if status.output is not None:
                    step.output.CopyFrom(json_value(status.output))
                if status.started_ms:
                    step.started_at.FromMilliseconds(status.started_ms)
                if status.finished_ms:
                    step.finished_at.FromMilliseconds(status.finished_ms)
        return run


def fold(run_id: str, events: Iterable[Recorded]) -> RunState:
    """The state of run ``run_id`` after ``events`` (in order)."""
    state = RunState(run_id)
    for recorded in events:
        state.apply(recorded)
    return state
