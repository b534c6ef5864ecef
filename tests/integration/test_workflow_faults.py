"""The Coordinator under faults: nodes SIGKILLed at every boundary of a step, and
nats-server restarted, while runs are in flight.

Node processes (``revo node``) on a nats-server of the test's own:
- ``fx``, Parallel Mind with the test task type ``test.step_effect``
  (tests/plugins/guarded.py), which writes ``effect <key>`` to a file, works ``ms``, then
  writes ``done <key>``. It is never killed, so Parallel Mind's own at-least-once redelivery
  plays no part: an effect counted twice can only be a step the Coordinator ran twice
  without its idempotency key doing its work.
- three nodes hosting ``workflows`` (lease TTL 1 s, sweep every 0.2 s); the killer SIGKILLs
  one of them at a time and starts a replacement under a new id.

Every run is of the workflow ``faults``: task steps ``a`` and ``b`` in parallel, then
``c``, then ``d``. Each step's payload is keyed ``<run id>/<step>``, so the effect files
say how many times each step of each run took effect.

Boundaries. Each kill is aimed at a moment (a run owned by the victim in a given state),
but a node owns many runs at once, so one kill catches several runs at several points.
After the kill the test classifies every (run, step) the victim owned from what was
recorded before the kill (events are timed by their writer; the victim is dead when the
time is taken, and its successor cannot write before the lease expires) and from the
effect files read just before and just after the kill:
- ``before_call``: the step's start recorded, its effect not yet made (none after the kill);
- ``after_effect``: the effect made (before the kill), the callee still working;
- ``before_record``: the callee done (before the kill), its success not recorded;
- ``after_record``: the step's success recorded, and the last thing the run recorded.
The test asserts each boundary was hit, and that at every one the next owner did the right
thing: the step recorded as succeeded once, by the next owner where the victim had not,
its effect made once.

nats-server restarted mid-run: every run finishes, every step made one task (the step's
idempotency key held across the outage). The outage can make Parallel Mind run a task
again (its execution is at least once when an acknowledgement is lost): such repeats are
counted and reported, and must come from the step's one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import json_format
from nats.js.api import DeliverPolicy

from mesh.embedded.nats_server import NatsServer
from mesh.testing import MeshHarness, spawn_node, wait_for
from revo_engine_workflows.history import RUN_PREFIX, RUNS_STREAM
from revo_engine_workflows.leases import BUCKET as LEASES_BUCKET
from revo_engine_workflows.v1 import workflows_pb2 as pb
from revo_engine_workflows.v1 import workflows_pb2_grpc
from tests.plugins.guarded import EFFECTS_DIR_ENV

SERVICE = "revo.workflows.v1.WorkflowService"
TASKS = "revo.tasks.v1.TaskService"
WORKFLOW = "faults"
WORK_MS = {"a": 100, "b": 500, "c": 0, "d": 250}
"""Each step's work after its effect (c: none, so its callee finishes at once)."""
NEEDS = {"c": ["a", "b"], "d": ["c"]}
BOUNDARIES = ("before_call", "after_effect", "before_record", "after_record")
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
RUN_WAIT_S = 90.0
"""A run must finish this long after it started (kills and takeovers included)."""
SETTLE_S = 100.0
"""Every run must be finished this long after the last fault."""


def _definition() -> pb.Workflow:
    steps = [{"id": step, "needs": NEEDS.get(step, []),
              "task": {"type": "test.step_effect",
                       "payloadExpr": f'{{"key": run.id + "/{step}", "ms": {ms}}}'}}
             for step, ms in WORK_MS.items()]
    return json_format.ParseDict({"name": WORKFLOW, "steps": steps}, pb.Workflow())


@dataclass(frozen=True)
class Effects:
    """The effect files at one moment: when each key took effect, and finished its work."""

    made: dict[str, list[int]]
    done: dict[str, list[int]]
    tasks: dict[str, set[str]]
    """The Parallel Mind task(s) each key's effects came from."""

    @classmethod
    def read(cls, folder: Path) -> Effects:
        made: dict[str, list[int]] = {}
        done: dict[str, list[int]] = {}
        tasks: dict[str, set[str]] = {}
        for file in folder.glob("steps-*.log"):
            for line in file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 5:  # a line being written has no newline yet: skipped
                    kind, key, ns, task, _attempt = parts
                    (made if kind == "effect" else done).setdefault(key, []).append(int(ns))
                    tasks.setdefault(key, set()).add(task)
        return cls(made, done, tasks)


class Tracker:
    """Every run's history and lease holder as they change, read from JetStream directly
    (one ordered consumer over every run's subject, one watcher on the lease bucket)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: dict[str, dict[int, pb.RunEvent]] = {}
        self.holder: dict[str, str] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.nc = await nats.connect(self.url, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2)
        js = self.nc.jetstream()
        await js.subscribe(f"{RUN_PREFIX}.>", stream=RUNS_STREAM, ordered_consumer=True,
                           deliver_policy=DeliverPolicy.ALL, cb=self._on_event)
        watcher = await (await js.key_value(LEASES_BUCKET)).watchall()
        self._tasks.append(asyncio.get_running_loop().create_task(self._leases(watcher)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nc.close()

    async def _on_event(self, message: Any) -> None:
        self.add(pb.RunEvent.FromString(message.data))

    def add(self, event: pb.RunEvent) -> None:
        self.events.setdefault(event.run_id, {})[event.sequence] = event
        if event.WhichOneof("event") == "run_finished":
            self.done_event(event.run_id).set()

    def done_event(self, run_id: str) -> asyncio.Event:
        return self.finished.setdefault(run_id, asyncio.Event())

    async def _leases(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.holder.pop(entry.key, None)
            else:
                self.holder[entry.key] = entry.value.decode().partition(" ")[0]

    def history(self, run_id: str) -> list[pb.RunEvent]:
        found = self.events.get(run_id, {})
        return [found[s] for s in sorted(found)]

    def is_finished(self, run_id: str) -> bool:
        return self.done_event(run_id).is_set()

    async def reload(self) -> None:
        """Read every history again from the stream, whole (for the final checks)."""
        js = self.nc.jetstream()
        last = (await js.stream_info(RUNS_STREAM)).state.last_seq
        subscription = await js.subscribe(f"{RUN_PREFIX}.>", stream=RUNS_STREAM,
                                          ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.ALL)
        self.events = {}
        try:
            async for message in subscription.messages:
                self.add(pb.RunEvent.FromString(message.data))
                if message.metadata.sequence.stream >= last:
                    break
        finally:
            await subscription.unsubscribe()


@dataclass
class Mesh:
    """The test's nats-server, a gateway in the test's process, the effect node and the
    Coordinator's nodes (processes)."""

    nats: NatsServer
    harness: MeshHarness
    folder: Path
    effects: Path
    fx: subprocess.Popen[bytes]
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    spawned: int = 0

    def spawn_coordinator(self) -> str:
        self.spawned += 1
        node_id = f"wf-{self.spawned}"
        self.nodes[node_id] = spawn_node(self.harness.config,
                                         self.folder / f"{node_id}.log", extra_env={
            "REVO_NODE__ID": node_id,
            "REVO_PLUGINS__ONLY": "workflows",
            "REVO_ENGINES__WORKFLOWS__LEASE_TTL_S": "1.0",
            "REVO_ENGINES__WORKFLOWS__SWEEP_INTERVAL_S": "0.2",
        })
        return node_id

    def serving(self) -> list[str]:
        """Coordinator nodes alive and in the gateway's view."""
        view = self.harness.gateway._view
        listed = set(view.snapshot.service_nodes.get(SERVICE, [])) if view else set()
        return [n for n, p in self.nodes.items() if p.poll() is None and n in listed]

    def log_tail(self, node_id: str) -> str:
        return (self.folder / f"{node_id}.log").read_text()[-3000:]


@pytest.fixture
def own_nats(tmp_path: Path) -> Any:
    """A nats-server of the test's own, which the test may restart."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def mesh(own_nats: NatsServer, mesh_harness: Any, tmp_path: Path) -> AsyncIterator[Mesh]:
    effects = tmp_path / "effects"
    effects.mkdir()
    harness: MeshHarness = await mesh_harness(nodes=0, nats={"url": own_nats.url})
    fx = spawn_node(harness.config, tmp_path / "fx.log", extra_env={
        "REVO_NODE__ID": "fx",
        "REVO_PLUGINS__ONLY": "parallel,guarded",
        "REVO_PLUGINS__EXTRA__GUARDED": "tests.plugins.guarded",
        "REVO_ENGINES__PARALLEL__WORKERS_MIN": "8",
        "REVO_ENGINES__PARALLEL__WORKERS_MAX": "48",
        EFFECTS_DIR_ENV: str(effects),
    })
    mesh = Mesh(own_nats, harness, tmp_path, effects, fx)
    try:
        await harness.wait_for_service(TASKS, timeout=60)
        for _ in range(3):
            mesh.spawn_coordinator()

        def up() -> bool:
            for node_id, process in [("fx", fx), *mesh.nodes.items()]:
                if process.poll() is not None:
                    raise AssertionError(f"node {node_id} exited: {mesh.log_tail(node_id)}")
            return len(mesh.serving()) == 3

        await wait_for(up, 90, "three nodes serving the Coordinator")
        yield mesh
    finally:
        for process in [fx, *mesh.nodes.values()]:
            if process.poll() is None:
                process.kill()
                process.wait()


class Starter:
    """Starts runs through the gateway, ``in_flight`` at a time, each with its own
    idempotency key; a failed StartRun (its node killed, say) is retried with the key."""

    def __init__(self, stub: Any, tracker: Tracker, in_flight: int) -> None:
        self.stub = stub
        self.tracker = tracker
        self.gate = asyncio.Semaphore(in_flight)
        self.ids: dict[str, str] = {}
        self.retries = 0
        self.redelivered = 0
        """Steps whose one task Parallel Mind ran again (see _settle)."""
        self.started_at: dict[str, float] = {}

    async def start(self, key: str, deadline: float) -> str:
        for _ in range(100):  # bounded, and by the deadline
            try:
                reply = await self.stub.StartRun(pb.StartRunRequest(
                    workflow=WORKFLOW, idempotency_key=key), timeout=15)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRY_CODES or time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.2)  # a pause between retries
                continue
            run_id: str = reply.run.id
            earlier = self.ids.setdefault(key, run_id)
            assert earlier == run_id, f"key {key} started two runs: {earlier}, {run_id}"
            return run_id
        raise AssertionError(f"StartRun {key} kept failing")

    async def run_all(self, keys: Iterable[str], deadline: float) -> None:
        async def one(key: str) -> None:
            async with self.gate:
                run_id = await self.start(key, deadline)
                self.started_at[run_id] = time.monotonic()
                with contextlib.suppress(TimeoutError):  # a stuck run is reported later
                    await asyncio.wait_for(self.tracker.done_event(run_id).wait(),
                                           RUN_WAIT_S)

        await asyncio.gather(*(one(k) for k in keys))


@dataclass
class Kill:
    victim: str
    aimed_at: str
    at: float
    """time.time() once the victim was dead."""
    before: Effects
    after: Effects
    owned: list[str]
    """Unfinished runs whose lease the victim held."""


def _key(run_id: str, step: str) -> str:
    return f"{run_id}/{step}"


def _live_state(tracker: Tracker, effects: Effects, run_id: str) -> set[str]:
    """Which boundaries run ``run_id`` is at now, as far as the test sees."""
    history = tracker.history(run_id)
    found = set()
    if history and history[-1].WhichOneof("event") == "step_succeeded":
        found.add("after_record")
    for step in WORK_MS:
        kinds = {e.WhichOneof("event") for e in history if e.step_id == step}
        if "step_started" not in kinds or "step_succeeded" in kinds:
            continue
        key = _key(run_id, step)
        if key in effects.done:
            found.add("before_record")
        elif key in effects.made:
            found.add("after_effect")
        else:
            found.add("before_call")
    return found


def _classify(kill: Kill, tracker: Tracker) -> list[tuple[str, str, str]]:
    """(boundary, run, step) for every step of the victim's runs caught at a boundary."""
    caught = []
    for run_id in kill.owned:
        before = [e for e in tracker.history(run_id)
                  if e.time.ToNanoseconds() / 1e9 < kill.at]
        if not before or before[-1].WhichOneof("event") == "run_finished":
            continue
        last = before[-1]
        if last.WhichOneof("event") == "step_succeeded":
            caught.append(("after_record", run_id, last.step_id))
        for step in WORK_MS:
            kinds = {e.WhichOneof("event") for e in before if e.step_id == step}
            if "step_started" not in kinds or "step_succeeded" in kinds:
                continue
            key = _key(run_id, step)
            if key not in kill.after.made:
                caught.append(("before_call", run_id, step))
            elif key in kill.before.done:
                caught.append(("before_record", run_id, step))
            elif key in kill.before.made and key not in kill.after.done:
                caught.append(("after_effect", run_id, step))
    return caught


async def _victim(mesh: Mesh, tracker: Tracker, aim: str) -> str | None:
    """A live Coordinator node (not the last one) owning a run at boundary ``aim`` now;
    None when there is none."""
    serving = mesh.serving()
    if len(serving) < 2:
        return None
    effects = Effects.read(mesh.effects)
    score: Counter[str] = Counter()
    for run_id, node_id in list(tracker.holder.items()):
        if node_id in serving and not tracker.is_finished(run_id) and (
                aim == "any" or aim in _live_state(tracker, effects, run_id)):
            score[node_id] += 1
    return score.most_common(1)[0][0] if score else None


async def _kill(mesh: Mesh, tracker: Tracker, aim: str) -> Kill:
    found: list[str] = []

    async def aimed() -> bool:
        victim = await _victim(mesh, tracker, aim)
        if victim is not None:
            found.append(victim)
        return victim is not None

    try:
        await wait_for(aimed, 5, f"a node owning a run at {aim}")
    except AssertionError:  # not seen in time: any node owning runs will do
        async def any_victim() -> bool:
            return await _victim(mesh, tracker, "any") is not None

        await wait_for(any_victim, 60, "a node owning unfinished runs, with another serving")
        aim = "any"
    victim = found[-1] if found else await _victim(mesh, tracker, "any")
    assert victim is not None
    owned = [r for r, n in tracker.holder.items() if n == victim
             and not tracker.is_finished(r)]
    before = Effects.read(mesh.effects)
    process = mesh.nodes[victim]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    at = time.time()
    return Kill(victim, aim, at, before, Effects.read(mesh.effects), owned)


async def _prepare(mesh: Mesh) -> tuple[Any, Tracker]:
    stub = workflows_pb2_grpc.WorkflowServiceStub(mesh.harness.channel)
    await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_definition()), timeout=30)
    tracker = Tracker(mesh.nats.url)
    await tracker.start()
    return stub, tracker


async def _settle(mesh: Mesh, stub: Any, tracker: Tracker, starter: Starter,
                  keys: list[str], *, redelivery: bool = False) -> dict[str, list[pb.RunEvent]]:
    """Wait until every run finished (bounded), then check the end state: every run
    succeeded, no key started two runs, every step made one task and took effect once
    (with ``redelivery``, an effect repeated by a later attempt of that one task, which
    Parallel Mind's at-least-once execution allows when NATS went away, is counted, not
    refused); the histories."""
    async def all_finished() -> bool:
        return len(starter.ids) == len(keys) and all(
            tracker.is_finished(r) for r in starter.ids.values())

    try:
        await wait_for(all_finished, SETTLE_S, "every run to finish")
    except AssertionError:
        stuck = [r for r in starter.ids.values() if not tracker.is_finished(r)]
        listed = {r.id: pb.RunState.Name(r.state) for r in (await stub.ListRuns(
            pb.ListRunsRequest(workflow=WORKFLOW, page_size=1000), timeout=30)).runs}
        detail = {r: ([f"{e.WhichOneof('event')}:{e.step_id}"
                       for e in tracker.history(r)][-6:], tracker.holder.get(r),
                      listed.get(r, "not in the index"))
                  for r in stuck[:10]}
        raise AssertionError(f"{len(stuck)} runs stuck (last events, last lease holder "
                             f"seen, state in the index): "
                             f"{detail}; unstarted keys: "
                             f"{len(keys) - len(starter.ids)}") from None
    await tracker.reload()
    run_ids = sorted(starter.ids.values())
    assert len(set(run_ids)) == len(keys), "one run per key"
    histories = {r: tracker.history(r) for r in run_ids}
    for run_id, history in histories.items():
        assert [e.sequence for e in history] == list(range(1, len(history) + 1)), run_id
        assert history[-1].run_finished.state == pb.RUN_STATE_SUCCEEDED, (
            run_id, history[-1].run_finished.error)
        for step in WORK_MS:
            succeeded = [e for e in history if e.step_id == step
                         and e.WhichOneof("event") == "step_succeeded"]
            assert len(succeeded) == 1, f"run {run_id} step {step}: {len(succeeded)} successes"
    # the index agrees: every run listed, succeeded, and no other run started. The index
    # is written after the history (a run's last summary follows its RunFinished, or the
    # sweep writes it for a node killed in between), so it may lag by a moment: bounded
    indexed: list[pb.Run] = []

    async def index_agrees() -> bool:
        nonlocal indexed
        indexed = list((await stub.ListRuns(pb.ListRunsRequest(
            workflow=WORKFLOW, page_size=1000), timeout=30)).runs)
        return sorted(r.id for r in indexed) == run_ids and all(
            r.state == pb.RUN_STATE_SUCCEEDED for r in indexed)

    waited = time.monotonic()
    try:
        await wait_for(index_agrees, 15, "the run index to agree with the histories")
        print(f"the index agreed {time.monotonic() - waited:.2f} s after the histories")
    except AssertionError:
        disagree = {r.id: pb.RunState.Name(r.state) for r in indexed
                    if r.state != pb.RUN_STATE_SUCCEEDED}
        raise AssertionError(f"index: {len(indexed)} runs indexed of {len(run_ids)}; not "
                             f"succeeded there: {disagree}") from None
    # every step of every run took effect exactly once, and nothing else did
    effects = Effects.read(mesh.effects)
    expected = {_key(r, s) for r in run_ids for s in WORK_MS}
    assert set(effects.made) == expected
    two_tasks = {k: sorted(v) for k, v in effects.tasks.items() if len(v) != 1}
    assert not two_tasks, f"steps that made two tasks: {list(two_tasks.items())[:10]}"
    twice = {k: len(v) for k, v in effects.made.items() if len(v) != 1}
    starter.redelivered = len(twice)
    assert redelivery or not twice, f"effects made more than once: {list(twice.items())[:10]}"
    return histories


@pytest.mark.timeout(420)
async def test_sigkill_at_every_boundary_of_a_step_every_run_finishes_each_effect_once(
        mesh: Mesh) -> None:
    runs, kills, extra_kills, in_flight = 240, 10, 4, 24
    stub, tracker = await _prepare(mesh)
    starter = Starter(stub, tracker, in_flight)
    keys = [f"fault-{i:03d}" for i in range(runs)]
    began = time.monotonic()
    starting = asyncio.ensure_future(starter.run_all(keys, began + 300))
    done: list[Kill] = []
    aims = [*BOUNDARIES, "any"]
    try:
        await wait_for(lambda: len(starter.ids) >= in_flight or starting.done(), 60,
                       "the first runs started")
        for number in range(kills + extra_kills):
            # a boundary's window can be a few milliseconds wide (before_call: from the
            # step's start to its callee's effect), so the planned kills may all miss
            # one; a few more (bounded) are aimed at what no kill has caught yet
            seen = {b for k in done for b, _, _ in _classify(k, tracker)}
            unseen = [b for b in BOUNDARIES if b not in seen]
            if number >= kills and (not unseen or starting.done()):
                break
            assert not starting.done(), f"every run finished before kill {number + 1}: " \
                "the runs are too quick for the kills"
            await wait_for(lambda: len(mesh.serving()) >= 2, 90,
                           "two Coordinator nodes serving")
            aim = aims[number % len(aims)] if number < kills else unseen[0]
            kill = await _kill(mesh, tracker, aim)
            done.append(kill)
            print(f"kill {number + 1} at {time.monotonic() - began:.1f} s: {kill.victim} "
                  f"aimed at {kill.aimed_at}, owned {len(kill.owned)}; started "
                  f"{len(starter.ids)}, finished "
                  f"{sum(tracker.is_finished(r) for r in starter.ids.values())}")
            mesh.spawn_coordinator()  # the replacement, under a new id
            await asyncio.sleep(random.uniform(0.2, 1.5))  # varied moments between kills
        killed = time.monotonic()
        await starting
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
    try:
        histories = await _settle(mesh, stub, tracker, starter, keys)
        caught = [c for k in done for c in _classify(k, tracker)]
    finally:
        await tracker.stop()
    settled = time.monotonic()

    # the kills were real: each killed a node that owned unfinished runs
    assert kills <= len(done) <= kills + extra_kills
    assert all(k.owned for k in done), [(k.victim, k.aimed_at) for k in done]
    assert all(mesh.nodes[k.victim].returncode == -signal.SIGKILL for k in done)
    counts = Counter(boundary for boundary, _, _ in caught)
    # at each boundary caught, the run went on right: the step succeeded once, recorded
    # by the next owner where the victim had not, and took effect once
    effects = Effects.read(mesh.effects)
    kill_at = {(b, r, s): k.at for k in done for b, r, s in _classify(k, tracker)}
    for (boundary, run_id, step), at in kill_at.items():
        assert len(effects.made[_key(run_id, step)]) == 1
        succeeded = next(e for e in histories[run_id] if e.step_id == step
                         and e.WhichOneof("event") == "step_succeeded")
        if boundary != "after_record":
            assert succeeded.time.ToNanoseconds() / 1e9 >= at, (boundary, run_id, step)
    takeovers = [min((e.time.ToNanoseconds() / 1e9 - k.at for e in histories[r]
                      if e.time.ToNanoseconds() / 1e9 >= k.at), default=0.0)
                 for k in done for r in k.owned
                 if histories[r][0].time.ToNanoseconds() / 1e9 < k.at]  # recorded before
    print("kill at every boundary:", {
        "runs": runs, "kills": len(done), "aimed_at": Counter(k.aimed_at for k in done),
        "runs_owned_by_victims": sum(len(k.owned) for k in done),
        "boundaries_caught": dict(counts),
        "start_retries": starter.retries,
        "longest_wait_for_a_takeover_s": round(max(takeovers), 2),
        "kills_over_s": round(killed - began, 1), "all_done_s": round(settled - began, 1)})
    missing = [b for b in BOUNDARIES if counts[b] < 1]
    assert not missing, f"no kill caught a step at {missing}: {dict(counts)}"


@pytest.mark.timeout(300)
async def test_restart_nats_server_mid_run_every_run_finishes_each_effect_once(
        mesh: Mesh) -> None:
    runs, in_flight = 60, 30
    stub, tracker = await _prepare(mesh)
    starter = Starter(stub, tracker, in_flight)
    keys = [f"restart-{i:02d}" for i in range(runs)]
    began = time.monotonic()
    starting = asyncio.ensure_future(starter.run_all(keys, began + 300))
    try:
        def mid_run() -> bool:
            finished = sum(tracker.is_finished(r) for r in starter.ids.values())
            busy = [r for r in starter.ids.values() if not tracker.is_finished(r)
                    and len(tracker.history(r)) > 2]
            return finished >= 5 and len(busy) >= 10

        await wait_for(mid_run, 90, "runs finished and runs mid-way")
        assert not starting.done()
        in_progress = [r for r in starter.ids.values() if not tracker.is_finished(r)]
        gateway_nc = mesh.harness.gateway.nc
        assert gateway_nc is not None
        reconnects = gateway_nc.stats["reconnects"]
        port, monitor = mesh.nats.port, mesh.nats.monitor_port
        await asyncio.to_thread(mesh.nats.stop)  # SIGTERM: JetStream flushes its files
        await asyncio.sleep(1.0)  # the outage: longer than the lease TTL
        mesh.nats.port, mesh.nats.monitor_port = port, monitor
        await asyncio.to_thread(mesh.nats.start)
        await starting
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
    try:
        await _settle(mesh, stub, tracker, starter, keys, redelivery=True)
    finally:
        await tracker.stop()
    print("nats-server restarted mid-run:", {
        "runs": runs, "in_progress_at_restart": len(in_progress),
        "start_retries": starter.retries, "tasks_run_again": starter.redelivered,
        "all_done_s": round(time.monotonic() - began, 1)})
    assert gateway_nc.stats["reconnects"] > reconnects  # the mesh saw the server go away
    assert all(p.poll() is None for p in mesh.nodes.values()), "no node died of it"
