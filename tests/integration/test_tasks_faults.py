"""Parallel Mind under faults: a node SIGKILLed, and nats-server restarted, mid-batch.

Two ``revo node`` processes run a batch of 1,000 tasks (each with an idempotency key) on a
nats-server of the test's own; the batch is still being submitted and run when the fault
hits (each test checks that it did: a Submit in flight, tasks RUNNING, the node killed or
the server replaced). Afterwards every task must end SUCCEEDED within a bounded time (each
has 5 attempts, and one fault costs a task at most one), none left QUEUED or RUNNING;
resubmitting every key must give back the same task (one task per key: exactly once from the
caller's view); every succeeded task's effect must have happened. Execution itself is at
least once: a node that dies after the effect but before the acknowledgement runs it again
elsewhere; the SIGKILL test requires that this happened (the killed node's effect, then a
later attempt on the other node), and both report how often.

The effect is ``test.file_effect`` (tests/plugins/guarded.py): it appends its key to a file
under a folder the test gives the nodes, so the test sees effects made in other processes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.embedded.nats_server import NatsServer
from mesh.testing import MeshHarness, spawn_node, wait_for
from revo_engine_parallel.v1 import tasks_pb2 as pb
from revo_engine_parallel.v1 import tasks_pb2_grpc
from tests.plugins.guarded import EFFECTS_DIR_ENV

SERVICE = "revo.tasks.v1.TaskService"
TOTAL, BATCH = 1000, 50
WORK_MS = 40
"""Each task's wait after its effect: a window in which a fault catches it unacknowledged."""
SETTLE_S = 45.0
"""Every task must be finished this long after the fault."""
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _node_env(node_id: str, effects: Path) -> dict[str, str]:
    return {
        "REVO_NODE__ID": node_id,
        "REVO_PLUGINS__ONLY": "parallel,guarded",
        "REVO_PLUGINS__EXTRA__GUARDED": "tests.plugins.guarded",
        # a claim lapses 2 s after its node stops renewing it: redelivery comes quickly
        "REVO_ENGINES__PARALLEL__ACK_WAIT_S": "2",
        # few workers: the batch takes several seconds, so the fault hits it mid-run
        "REVO_ENGINES__PARALLEL__WORKERS_MIN": "1",
        "REVO_ENGINES__PARALLEL__WORKERS_MAX": "4",
        "REVO_ENGINES__PARALLEL__IDLE_S": "1",
        "REVO_ENGINES__PARALLEL__RETRY_DELAY_S": "0.1",
        EFFECTS_DIR_ENV: str(effects),
    }


def _effects(folder: Path) -> Counter[str]:
    """How many times each key took effect, on any node."""
    counts: Counter[str] = Counter()
    for file in folder.glob("effects-*.log"):
        for line in file.read_text().splitlines():
            if line.strip():
                counts[line.split()[0]] += 1
    return counts


def _spec(key: str) -> pb.TaskSpec:
    return pb.TaskSpec(typed=pb.TypedWork(type="test.file_effect",
                                          payload=f"{key} {WORK_MS}".encode()),
                       idempotency_key=key, max_attempts=5)


class Caller:
    """A caller that submits its keys in batches, retrying a failed Submit with the same keys."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.ids: dict[str, str] = {}
        self.retries = 0
        self.in_flight = 0
        """Submits sent and not yet answered (the fault is timed to hit one on its way)."""

    async def submit(self, keys: list[str], deadline: float) -> list[pb.Task]:
        while True:
            self.in_flight += 1
            try:
                reply = await self.stub.Submit(
                    pb.SubmitRequest(tasks=[_spec(k) for k in keys]), timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES or time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.2)
                continue
            finally:
                self.in_flight -= 1
            tasks = list(reply.tasks)
            assert len(tasks) == len(keys)
            return tasks

    async def submit_all(self, keys: list[str], pause_s: float, deadline: float) -> None:
        """Two streams of batches, so that a Submit is usually in flight."""
        async def stream(part: list[str]) -> None:
            for start in range(0, len(part), BATCH):
                batch = part[start:start + BATCH]
                for key, task in zip(batch, await self.submit(batch, deadline), strict=True):
                    earlier = self.ids.setdefault(key, task.id)
                    assert earlier == task.id, f"key {key} made two tasks"
                await asyncio.sleep(pause_s)

        half = len(keys) // 2
        await asyncio.gather(stream(keys[:half]), stream(keys[half:]))

    async def by_state(self, state: pb.TaskState.ValueType) -> list[pb.Task]:
        for _ in range(20):
            try:
                reply = await self.stub.List(pb.ListRequest(state=state, page_size=1000),
                                             timeout=10)
                return list(reply.tasks)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("List kept failing")

    async def running_on(self, node: str | None = None) -> list[pb.Task]:
        """Tasks RUNNING now (on ``node``, or anywhere)."""
        return [t for t in await self.by_state(pb.TASK_STATE_RUNNING)
                if node is None or t.node == node]

    async def unfinished(self) -> int:
        return sum([len(await self.by_state(s))
                    for s in (pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING)])


@pytest.fixture
def own_nats(tmp_path: Path) -> Any:
    """A nats-server of the test's own: an empty queue, and one the test may restart."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def two_nodes(own_nats: NatsServer, mesh_harness: Any, tmp_path: Path) -> Any:
    """A gateway in the test's process and two ``revo node`` processes running tasks."""
    effects = tmp_path / "effects"
    effects.mkdir()
    mesh: MeshHarness = await mesh_harness(nodes=0, nats={"url": own_nats.url})
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    for node_id in ("tasks-a", "tasks-b"):
        nodes[node_id] = spawn_node(mesh.config, tmp_path / f"{node_id}.log",
                                    extra_env=_node_env(node_id, effects))
    try:
        def up() -> bool:
            for node_id, process in nodes.items():
                if process.poll() is not None:
                    log = (tmp_path / f"{node_id}.log").read_text()[-2000:]
                    raise AssertionError(f"node {node_id} exited: {log}")
            view = mesh.gateway._view
            return view is not None and len(view.snapshot.service_nodes.get(SERVICE, [])) >= 2

        await wait_for(up, 60, "two nodes serving tasks")
        yield mesh, nodes, effects
    finally:
        for process in nodes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@dataclass
class Outcome:
    """What a batch run through a fault measured, and each key's final task."""

    report: dict[str, Any]
    final: dict[str, pb.Task]


def _runs(folder: Path) -> dict[int, list[tuple[str, int]]]:
    """Each node process's (key, attempt) runs of ``test.file_effect``, by pid."""
    runs: dict[int, list[tuple[str, int]]] = {}
    for file in folder.glob("effects-*.log"):
        pid = int(file.stem.removeprefix("effects-"))
        for line in file.read_text().splitlines():
            if line.strip():
                key, _task_id, attempt = line.split()
                runs.setdefault(pid, []).append((key, int(attempt)))
    return runs


def _kill_after_next_effect(victim: subprocess.Popen[bytes], folder: Path) -> bool:
    """SIGKILL ``victim`` as soon as its effects file grows (polled every millisecond, in a
    thread so the test's event loop cannot delay it, for at most 10 s); whether it did."""
    file = folder / f"effects-{victim.pid}.log"
    size = file.stat().st_size if file.exists() else 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if file.exists() and file.stat().st_size > size:
            victim.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.001)
    victim.send_signal(signal.SIGKILL)
    return False


async def _run_batch_through(mesh: MeshHarness, effects: Path,
                             fault: Callable[[], Awaitable[None]], fault_at: int,
                             busy_node: str | None = None) -> Outcome:
    """Submit and run the batch; once ``fault_at`` effects happened, tasks are RUNNING (on
    ``busy_node``, if given) and a Submit is on its way, bring ``fault`` once; then check
    the end state. Returns what it measured."""
    caller = Caller(tasks_pb2_grpc.TaskServiceStub(mesh.channel))
    keys = [f"key-{i:04d}" for i in range(TOTAL)]
    started = time.monotonic()
    deadline = started + 60
    submitting = asyncio.ensure_future(caller.submit_all(keys, 0.4, deadline))
    try:
        await wait_for(lambda: sum(_effects(effects).values()) >= fault_at or submitting.done(),
                       30, f"{fault_at} effects before the fault")

        async def busy() -> bool:
            return submitting.done() or bool(await caller.running_on(busy_node))

        await wait_for(busy, 30, f"tasks RUNNING on {busy_node or 'a node'}")
        # strike while a Submit is on its way: its node may be half through the batch
        await wait_for(lambda: caller.in_flight > 0 or submitting.done(), 10,
                       "a Submit on its way")
        assert not submitting.done(), "the batch was submitted before the fault: too quick"
        in_flight_at_fault = caller.in_flight
        done_before = sum(_effects(effects).values())
        faulted = time.monotonic()
        await fault()
        await submitting
    finally:
        if not submitting.done():
            submitting.cancel()
    submitted = time.monotonic()

    await wait_for(lambda: _settled(caller), SETTLE_S, "every task to finish")
    settled = time.monotonic()

    # the caller's view: one task per key, each finished, the same on a second Submit
    assert set(caller.ids) == set(keys)
    assert len(set(caller.ids.values())) == TOTAL
    again: dict[str, pb.Task] = {}
    for start in range(0, TOTAL, BATCH):
        batch = keys[start:start + BATCH]
        for key, task in zip(batch, await caller.submit(batch, time.monotonic() + 20),
                             strict=True):
            again[key] = task
    assert all(t.deduplicated for t in again.values())
    assert {k: t.id for k, t in again.items()} == caller.ids
    states = Counter(pb.TaskState.Name(t.state) for t in again.values())
    unsucceeded = {k: (pb.TaskState.Name(t.state), t.attempts, t.dead_letter_reason)
                   for k, t in again.items() if t.state != pb.TASK_STATE_SUCCEEDED}
    assert not unsucceeded, f"{states}; e.g. {list(unsucceeded.items())[:5]}"

    # the mesh's view: exactly the caller's tasks, no duplicates made behind its back
    listed = {t.id for s in pb.TaskState.values() if s
              for t in await caller.by_state(s)}
    assert listed == set(caller.ids.values())

    # effects: every task's happened (at least once; a few twice after the fault)
    counts = _effects(effects)
    assert set(counts) <= set(keys)
    missing = [k for k in keys if counts[k] < 1]
    assert not missing, f"succeeded without an effect: {missing[:10]}"
    return Outcome({
        "states": dict(states), "effects_before_fault": done_before,
        "submits_in_flight_at_fault": in_flight_at_fault,
        "ran_twice_or_more": sum(1 for k in keys if counts[k] > 1),
        "max_runs": max(counts.values()), "submit_retries": caller.retries,
        "attempts>1": sum(1 for t in again.values() if t.attempts > 1),
        "fault_at_s": round(faulted - started, 1),
        "submitted_at_s": round(submitted - started, 1),
        "settled_at_s": round(settled - started, 1),
    }, again)


async def _settled(caller: Caller) -> bool:
    if await caller.unfinished():
        await asyncio.sleep(0.5)  # List scans every task: poll gently
        return False
    return True


async def test_sigkill_a_node_mid_batch_every_task_ends_once_for_the_caller(
        two_nodes: Any) -> None:
    mesh, nodes, effects = two_nodes
    victim = nodes["tasks-a"]

    async def kill() -> None:
        # strike right after the victim made an effect: that attempt is surely in flight
        # (its task waits WORK_MS after the effect before it finishes)
        struck = await asyncio.to_thread(_kill_after_next_effect, victim, effects)
        assert struck, "the victim made no effect within 10 s to strike after"
        victim.wait()

    outcome = await _run_batch_through(mesh, effects, kill, fault_at=200, busy_node="tasks-a")
    # the killed node had attempts in flight: it made their effect, never acknowledged
    # them, and the other node ran them again once their claims lapsed
    redelivered = sorted({key for key, attempt in _runs(effects).get(victim.pid, [])
                          if outcome.final[key].attempts > attempt
                          and outcome.final[key].node == "tasks-b"})
    outcome.report["redelivered_from_the_killed_node"] = len(redelivered)
    print("SIGKILL mid-batch:", outcome.report)
    assert victim.returncode == -signal.SIGKILL
    assert nodes["tasks-b"].poll() is None
    assert redelivered, "no task in flight on the killed node was run again elsewhere"
    assert outcome.report["attempts>1"] >= len(redelivered)


async def test_restart_nats_server_mid_batch_every_task_ends_once_for_the_caller(
        two_nodes: Any, own_nats: NatsServer) -> None:
    mesh, nodes, effects = two_nodes
    gateway_nc = mesh.gateway.nc
    assert gateway_nc is not None
    reconnects = gateway_nc.stats["reconnects"]

    async def restart() -> None:
        port, monitor = own_nats.port, own_nats.monitor_port
        await asyncio.to_thread(own_nats.stop)  # SIGTERM: JetStream flushes its files
        await asyncio.sleep(1.0)  # the outage
        own_nats.port, own_nats.monitor_port = port, monitor
        await asyncio.to_thread(own_nats.start)

    outcome = await _run_batch_through(mesh, effects, restart, fault_at=200)
    print("nats-server restarted mid-batch:", outcome.report)
    assert gateway_nc.stats["reconnects"] > reconnects  # the mesh saw the server go away
    assert all(p.poll() is None for p in nodes.values())
