"""The mixed load that a cluster is put under while a fault hits it, and the check after.

Four kinds of call go through one gRPC address (Envoy in front of the gateways) at once,
each from its own lanes, each a caller that retries what failed with a retryable code
(the same request again: every write carries its key):

- ``task``: ``TaskService.Submit`` of one task (type ``sleep``, a few milliseconds) with an
  idempotency key;
- ``memory``: ``RecallService.Remember`` of one memory with a ``client_id`` and its own
  vector (no embedding model in the way);
- ``run``: ``WorkflowService.StartRun`` of a two-step workflow (a Parallel Mind task, then a
  mesh call) with an idempotency key;
- ``call``: ``EchoService.Echo``, a plain call.

Every attempt is recorded (kind, start, end, status code). Afterwards :meth:`MixedLoad.check`
says, per kind: ``acked`` (writes the caller was told succeeded), ``lost`` (acked, but not
there, or not finished successfully once the mesh settled), ``duplicated`` (a key that made
two tasks or runs, or memories beyond the distinct keys ever sent), ``bad_codes`` (attempts
that ended with a status a caller may not retry: anything but OK, UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED) and the unavailable windows: the union of
the attempts that failed or took longer than :data:`STALL_S`, merged when closer than
:data:`MERGE_S`; ``max_unavailable_s`` is the longest.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from revo_engine_parallel.v1 import tasks_pb2, tasks_pb2_grpc
from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc
from revo_engine_workflows.v1 import workflows_pb2, workflows_pb2_grpc

KINDS = ("task", "memory", "run", "call")
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})
ATTEMPT_TIMEOUT_S = 3.0
"""Each attempt's deadline: a call stuck behind a dead server fails in this time."""
RETRY_PAUSE_S = 0.1
STALL_S = 1.0
"""A successful attempt slower than this counts as unavailable time too."""
MERGE_S = 0.5
WORKFLOW = "cluster-load"
TASK_MS = 5
DIM = 384


@dataclass(frozen=True)
class Attempt:
    kind: str
    started: float
    ended: float
    code: str
    """``OK`` or the gRPC status name."""


@dataclass
class Ledger:
    """What the caller sent and what it was told."""

    attempts: list[Attempt] = field(default_factory=list)
    sent: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    """Every key sent at least once, by kind."""
    acked: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    """Key -> id (task, memory or run) the mesh answered, by kind."""
    ids_per_key: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    """Every id the mesh ever answered for a key: more than one is a duplicate."""
    gave_up: Counter[str] = field(default_factory=Counter)
    bad_examples: list[str] = field(default_factory=list)


def _definition() -> workflows_pb2.Workflow:
    return json_format.ParseDict({
        "name": WORKFLOW,
        "description": "the cluster benchmark's run: a task, then a mesh call",
        "steps": [
            {"id": "work", "task": {"type": "noop", "payload": {"n": TASK_MS}}},
            {"id": "echo", "needs": ["work"],
             "call": {"method": "/revo.echo.v1.EchoService/Echo",
                      "request": {"payload": "aGk="}}},
        ],
    }, workflows_pb2.Workflow())


def _vector(rng: random.Random) -> list[float]:
    values = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


class MixedLoad:
    """The four kinds of call on one channel, ``lanes`` callers of each kind."""

    def __init__(self, channel: grpc.aio.Channel, tag: str, lanes: int = 2,
                 pause_s: float = 0.02, seed: int = 7) -> None:
        self.tag = tag
        self.lanes = lanes
        self.pause_s = pause_s
        self.ledger = Ledger()
        self.tasks: Any = tasks_pb2_grpc.TaskServiceStub(channel)
        self.recall: Any = recall_pb2_grpc.RecallServiceStub(channel)
        self.workflows: Any = workflows_pb2_grpc.WorkflowServiceStub(channel)
        self.echo: Any = echo_pb2_grpc.EchoServiceStub(channel)
        self.scope = recall_pb2.Scope(kind=recall_pb2.SCOPE_KIND_PROJECT, id=f"cl-{tag}")
        self._rng = random.Random(seed)
        self._counter = 0

    async def prepare(self) -> None:
        """Create the workflow (a new version when it exists: harmless)."""
        await self._until_ok("prepare", lambda: self.workflows.CreateWorkflow(
            workflows_pb2.CreateWorkflowRequest(workflow=_definition()),
            timeout=ATTEMPT_TIMEOUT_S), deadline=time.monotonic() + 60)

    async def _attempt(self, kind: str, call: Callable[[], Awaitable[Any]]
                       ) -> tuple[Any | None, str]:
        started = time.monotonic()
        try:
            reply = await call()
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            self.ledger.attempts.append(Attempt(kind, started, time.monotonic(), code))
            if code not in RETRYABLE:
                self.ledger.bad_examples.append(f"{kind}: {code} {exc.details()}")
            return None, code
        self.ledger.attempts.append(Attempt(kind, started, time.monotonic(), "OK"))
        return reply, "OK"

    async def _until_ok(self, kind: str, call: Callable[[], Awaitable[Any]],
                        deadline: float) -> Any | None:
        """Retry ``call`` on retryable codes until it succeeds or ``deadline`` passes; None
        when it did not succeed (a code that may not be retried ends it at once)."""
        while True:
            reply, code = await self._attempt(kind, call)
            if code == "OK":
                return reply
            if code not in RETRYABLE or time.monotonic() > deadline:
                self.ledger.gave_up[kind] += 1
                return None
            await asyncio.sleep(RETRY_PAUSE_S)

    def _key(self, kind: str) -> str:
        self._counter += 1
        key = f"{self.tag}-{kind}-{self._counter}"
        self.ledger.sent[kind].add(key)
        return key

    def _answered(self, kind: str, key: str, ident: str) -> None:
        self.ledger.acked[kind][key] = ident
        self.ledger.ids_per_key[kind].setdefault(key, set()).add(ident)

    async def one(self, kind: str, give_up_s: float = 30.0) -> None:
        """One call of ``kind``, retried until it succeeds (or ``give_up_s`` passes)."""
        deadline = time.monotonic() + give_up_s
        timeout = ATTEMPT_TIMEOUT_S
        if kind == "task":
            key = self._key(kind)
            spec = tasks_pb2.TaskSpec(typed=tasks_pb2.TypedWork(
                type="sleep", payload=str(TASK_MS).encode()), idempotency_key=key,
                max_attempts=5)
            reply = await self._until_ok(kind, lambda: self.tasks.Submit(
                tasks_pb2.SubmitRequest(tasks=[spec]), timeout=timeout), deadline)
            if reply is not None:
                self._answered(kind, key, reply.tasks[0].id)
        elif kind == "memory":
            key = self._key(kind)
            memory = recall_pb2.MemoryInput(scope=self.scope, text=f"memory {key}",
                                            client_id=key, vector=_vector(self._rng))
            reply = await self._until_ok(kind, lambda: self.recall.Remember(
                recall_pb2.RememberRequest(memories=[memory]), timeout=timeout), deadline)
            if reply is not None:
                self._answered(kind, key, reply.results[0].id)
        elif kind == "run":
            key = self._key(kind)
            value = struct_pb2.Value(string_value=key)
            reply = await self._until_ok(kind, lambda: self.workflows.StartRun(
                workflows_pb2.StartRunRequest(workflow=WORKFLOW, input=value,
                                              idempotency_key=key), timeout=timeout),
                deadline)
            if reply is not None:
                self._answered(kind, key, reply.run.id)
        else:
            await self._until_ok(kind, lambda: self.echo.Echo(
                echo_pb2.EchoRequest(payload=b"ping"), timeout=timeout), deadline)

    async def run(self, stop: asyncio.Event) -> None:
        """Every lane calls, one call at a time, until ``stop`` is set."""
        async def lane(kind: str) -> None:
            while not stop.is_set():
                await self.one(kind)
                await asyncio.sleep(self.pause_s)

        await asyncio.gather(*(lane(kind) for kind in KINDS for _ in range(self.lanes)))

    # --- after the fault -------------------------------------------------------------

    async def settle(self, within_s: float) -> dict[str, Any]:
        """Wait (at most ``within_s``) until every acknowledged task and run finished, then
        check everything acknowledged. Returns the check, per kind and in total."""
        deadline = time.monotonic() + within_s
        tasks = await self._finished_tasks(deadline)
        runs = await self._finished_runs(deadline)
        memories = await self._memories(deadline)
        report: dict[str, Any] = {"task": tasks, "run": runs, "memory": memories,
                                  "call": {"acked": sum(1 for a in self.ledger.attempts
                                                        if a.kind == "call" and a.code == "OK"),
                                           "lost": 0, "duplicated": 0}}
        for kind in KINDS:
            report[kind].update(self.availability(kind))
            report[kind]["gave_up"] = self.ledger.gave_up[kind]
        report["lost"] = sum(report[k]["lost"] for k in KINDS)
        report["duplicated"] = sum(report[k]["duplicated"] for k in KINDS)
        report["bad_codes"] = dict(sum((Counter(report[k]["bad_codes"]) for k in KINDS),
                                       Counter()))
        report["max_unavailable_s"] = max(report[k]["max_unavailable_s"] for k in KINDS)
        report["gave_up"] = sum(self.ledger.gave_up.values())
        report["bad_examples"] = self.ledger.bad_examples[:5]
        return report

    def _duplicated(self, kind: str) -> int:
        return sum(len(ids) - 1 for ids in self.ledger.ids_per_key[kind].values())

    async def _finished_tasks(self, deadline: float) -> dict[str, Any]:
        acked = self.ledger.acked["task"]
        states: Counter[str] = Counter()
        for key, task_id in acked.items():
            while True:
                task = await self._until_ok("check", partial(
                    self.tasks.Get, tasks_pb2.GetRequest(id=task_id),
                    timeout=ATTEMPT_TIMEOUT_S), deadline)
                state = tasks_pb2.TaskState.Name(task.state) if task else "UNREADABLE"
                if state not in ("TASK_STATE_QUEUED", "TASK_STATE_RUNNING") or (
                        time.monotonic() > deadline):
                    break
                await asyncio.sleep(0.2)
            states[state] += 1
            # the caller's second Submit of the key must give back the same task
            spec = tasks_pb2.TaskSpec(typed=tasks_pb2.TypedWork(
                type="sleep", payload=str(TASK_MS).encode()), idempotency_key=key)
            again = await self._until_ok("check", partial(
                self.tasks.Submit, tasks_pb2.SubmitRequest(tasks=[spec]),
                timeout=ATTEMPT_TIMEOUT_S), deadline)
            if again is not None:
                self.ledger.ids_per_key["task"][key].add(again.tasks[0].id)
        lost = len(acked) - states["TASK_STATE_SUCCEEDED"]
        return {"acked": len(acked), "lost": lost, "duplicated": self._duplicated("task"),
                "states": dict(states)}

    async def _finished_runs(self, deadline: float) -> dict[str, Any]:
        acked = self.ledger.acked["run"]
        states: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        steps_twice = 0
        unfinished: list[str] = []
        for key, run_id in acked.items():
            while True:
                reply = await self._until_ok("check", partial(
                    self.workflows.GetRun, workflows_pb2.GetRunRequest(run_id=run_id),
                    timeout=ATTEMPT_TIMEOUT_S), deadline)
                run = reply.run if reply else None
                state = workflows_pb2.RunState.Name(run.state) if run else "UNREADABLE"
                if state not in ("RUN_STATE_RUNNING", "RUN_STATE_WAITING") or (
                        time.monotonic() > deadline):
                    break
                await asyncio.sleep(0.2)
            states[state] += 1
            if state != "RUN_STATE_SUCCEEDED":
                unfinished.append(run_id)
            if run is not None and run.error:
                errors[run.error[:120]] += 1
            if run is not None:
                ids = [s.id for s in run.steps]
                steps_twice += len(ids) - len(set(ids))
            value = struct_pb2.Value(string_value=key)
            again = await self._until_ok("check", partial(
                self.workflows.StartRun, workflows_pb2.StartRunRequest(
                    workflow=WORKFLOW, input=value, idempotency_key=key),
                timeout=ATTEMPT_TIMEOUT_S), deadline)
            if again is not None:
                self.ledger.ids_per_key["run"][key].add(again.run.id)
        lost = len(acked) - states["RUN_STATE_SUCCEEDED"]
        return {"acked": len(acked), "lost": lost,
                "duplicated": self._duplicated("run") + steps_twice, "states": dict(states),
                "errors": dict(errors.most_common(3)), "unfinished": unfinished[:5]}

    async def _memories(self, deadline: float) -> dict[str, Any]:
        acked = self.ledger.acked["memory"]
        ids = sorted(set(acked.values()))
        missing: list[str] = []
        for start in range(0, len(ids), 200):
            reply = await self._until_ok("check", partial(
                self.recall.Get, recall_pb2.GetRequest(ids=ids[start:start + 200]),
                timeout=10), deadline)
            missing.extend(reply.missing if reply else ids[start:start + 200])
        stats = await self._until_ok("check", lambda: self.recall.Stats(
            recall_pb2.StatsRequest(scopes=[self.scope]), timeout=10), deadline)
        stored = sum(s.memories for s in stats.scopes) if stats else 0
        extra = max(0, stored - len(self.ledger.sent["memory"]))
        return {"acked": len(acked), "lost": len(missing), "stored": stored,
                "duplicated": extra + self._duplicated("memory")}

    def availability(self, kind: str, since: float = 0.0) -> dict[str, Any]:
        """Bad codes and unavailable windows of the attempts of ``kind`` (after ``since``)."""
        attempts = [a for a in self.ledger.attempts if a.kind == kind and a.started >= since]
        bad = Counter(a.code for a in attempts if a.code != "OK" and a.code not in RETRYABLE)
        spans = sorted((a.started, a.ended) for a in attempts
                       if a.code != "OK" or a.ended - a.started > STALL_S)
        windows: list[list[float]] = []
        for start, end in spans:
            if windows and start <= windows[-1][1] + MERGE_S:
                windows[-1][1] = max(windows[-1][1], end)
            else:
                windows.append([start, end])
        longest = max((end - start for start, end in windows), default=0.0)
        return {"attempts": len(attempts),
                "failed_attempts": sum(1 for a in attempts if a.code != "OK"),
                "codes": dict(Counter(a.code for a in attempts if a.code != "OK")),
                "bad_codes": dict(bad), "windows": len(windows),
                "max_unavailable_s": round(longest, 3)}
