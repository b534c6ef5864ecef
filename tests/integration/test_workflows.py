"""The Coordinator through a real gateway: definitions, runs, watch, signals, cancel,
permissions, and a run continued by another node after its node was SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from mesh.runtime.node import Node
from mesh.testing import MeshHarness, spawn_node, stop_node, wait_for
from mesh.transport.connection import connect
from revo_engine_workflows.history import History
from revo_engine_workflows.leases import BUCKET as LEASES_BUCKET
from revo_engine_workflows.runs_index import RunIndex
from revo_engine_workflows.state import json_value
from revo_engine_workflows.v1 import workflows_pb2 as pb
from revo_engine_workflows.v1 import workflows_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since
from tests.integration.test_workflow_runner import echo
from tests.plugins.guarded import EFFECTS_DIR_ENV

SERVICE = "revo.workflows.v1.WorkflowService"
ECHO = "/revo.echo.v1.EchoService/Echo"
COUNT = "/revo.echo.v1.EchoService/Count"
TASKS = "revo.tasks.v1.TaskService"
PLUGINS = {"only": ["echo", "workflows"]}


def _workflow(name: str, steps: list[dict[str, Any]], **fields: Any) -> pb.Workflow:
    return json_format.ParseDict({"name": name, "steps": steps, **fields}, pb.Workflow())


@pytest.fixture
async def mesh(mesh_harness: Callable[..., Any]) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(plugins=PLUGINS,
                                              engines={"workflows": {"lease_ttl_s": 1.0}})
    await harness.wait_for_service(SERVICE)
    return harness


def _coordinator_env(plugins: str) -> dict[str, str]:
    """A Coordinator node process's settings: quick takeovers (lease 1 s, sweep 0.2 s)."""
    return {"REVO_PLUGINS__ONLY": plugins, "REVO_ENGINES__WORKFLOWS__LEASE_TTL_S": "1.0",
            "REVO_ENGINES__WORKFLOWS__SWEEP_INTERVAL_S": "0.2"}


def _stub(mesh: MeshHarness) -> Any:
    return workflows_pb2_grpc.WorkflowServiceStub(mesh.channel)


async def _finished(stub: Any, run_id: str, metadata: Any = None) -> pb.Run:
    events = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=run_id),
                                                   timeout=60, metadata=metadata)]
    assert events[-1].WhichOneof("event") == "run_finished"
    run: pb.Run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10,
                                     metadata=metadata)).run
    return run


async def test_a_workflow_is_created_as_versions_and_run_to_its_output(
        mesh: MeshHarness) -> None:
    stub = _stub(mesh)
    definition = _workflow("greet", [
        echo("a"),
        {"id": "b", "call": {"method": COUNT, "collectStream": True,
                             "requestExpr": '{"count": input.n}'}}],
        output='{"payload": steps.a.output.payload, "counted": size(steps.b.output)}')
    created = await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=definition),
                                        timeout=10)
    assert (created.workflow.version, created.created) == (1, True)
    again = await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=definition),
                                      timeout=10)
    assert (again.workflow.version, again.created) == (1, False), "identical: not stored"
    definition.description = "now described"
    assert (await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=definition),
                                      timeout=10)).workflow.version == 2
    started = await stub.StartRun(pb.StartRunRequest(workflow="greet", version=1,
                                                     input=json_value({"n": 3})), timeout=10)
    assert started.started
    run = await _finished(stub, started.run.id)
    assert run.state == pb.RUN_STATE_SUCCEEDED
    assert (run.workflow, run.version) == ("greet", 1)
    assert json_format.MessageToDict(run.output) == {"payload": "aGk=", "counted": 3}
    assert [s.state for s in run.steps] == [pb.STEP_STATE_SUCCEEDED] * 2
    listed = await stub.ListRuns(pb.ListRunsRequest(workflow="greet"), timeout=10)
    assert [r.id for r in listed.runs] == [run.id]
    assert listed.runs[0].state == pb.RUN_STATE_SUCCEEDED
    names, token = [], ""
    while True:  # a page at a time, by name: greet's latest version once
        page = await stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=1,
                                                                page_token=token), timeout=10)
        names += [(w.name, w.version) for w in page.workflows]
        if not (token := page.next_page_token):
            break
    assert ("greet", 2) in names
    assert len(names) == len(set(names))
    assert names == sorted(names)
    scraped = await asyncio.to_thread(_scrape, mesh.nodes[0].metrics.url + "/metrics")
    assert _sample(scraped, "engine_coordination_latency_seconds_count", 'kind="call"') == 2
    assert _sample(scraped, "coordinator_steps_total", 'outcome="succeeded"') == 2
    assert _sample(scraped, "coordinator_runs_total", 'outcome="succeeded"') == 1


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def _sample(scraped: str, name: str, label: str) -> float:
    """The sum of ``name``'s samples whose labels include ``label``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
               if line.startswith(name + "{") and label in line)


async def test_watch_streams_events_as_they_happen_and_resumes_after_a_sequence(
        mesh: MeshHarness) -> None:
    stub = _stub(mesh)
    await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("watched", [
        echo("a"), echo("b", needs=["a"])])), timeout=10)
    run = (await stub.StartRun(pb.StartRunRequest(workflow="watched"), timeout=10)).run
    everything = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=run.id),
                                                       timeout=30)]
    sequences = [e.sequence for e in everything]
    assert sequences == list(range(1, len(everything) + 1)), "no gaps, no repeats"
    kinds = [e.WhichOneof("event") for e in everything]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert kinds.count("step_succeeded") == 2
    # a watcher that saw up to 3 and reconnected gets exactly the rest
    rest = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=run.id,
                                                                    after_sequence=3),
                                                 timeout=30)]
    assert rest == everything[3:]


async def test_a_run_waits_for_its_signal_and_a_cancel_stops_another(
        mesh: MeshHarness) -> None:
    stub = _stub(mesh)
    await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("approve", [
        {"id": "ok", "waitSignal": {"name": "approved"}}, echo("ship", needs=["ok"])],
        output="steps.ok.output")), timeout=10)
    run = (await stub.StartRun(pb.StartRunRequest(workflow="approve"), timeout=10)).run

    async def waiting() -> bool:
        got: pb.Run = (await stub.GetRun(pb.GetRunRequest(run_id=run.id), timeout=10)).run
        return got.state == pb.RUN_STATE_WAITING

    await wait_for(waiting, 10, "the run waiting for its signal")
    await stub.Signal(pb.SignalRequest(run_id=run.id, name="approved",
                                       payload=json_value("yes")), timeout=10)
    done = await _finished(stub, run.id)
    assert done.state == pb.RUN_STATE_SUCCEEDED
    assert done.output.string_value == "yes"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Signal(pb.SignalRequest(run_id=run.id, name="approved"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    other = (await stub.StartRun(pb.StartRunRequest(workflow="approve"), timeout=10)).run
    await wait_for(lambda: _state_is(stub, other.id, pb.RUN_STATE_WAITING), 10, "waiting")
    await stub.CancelRun(pb.CancelRunRequest(run_id=other.id), timeout=10)
    cancelled = await _finished(stub, other.id)
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    # CancelRun is declared IDEMPOTENT: a repeat (a client's retry) answers the run as is
    again = (await stub.CancelRun(pb.CancelRunRequest(run_id=other.id), timeout=10)).run
    assert (again.state, again.last_sequence) == (pb.RUN_STATE_CANCELLED,
                                                  cancelled.last_sequence)


async def _state_is(stub: Any, run_id: str, state: int) -> bool:
    run: pb.Run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)).run
    return run.state == state


async def test_an_idempotency_key_starts_one_run(mesh: MeshHarness) -> None:
    stub = _stub(mesh)
    await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("once", [
        echo("a")])), timeout=10)
    request = pb.StartRunRequest(workflow="once", idempotency_key=f"k-{time.time_ns()}")
    first, second = await asyncio.gather(stub.StartRun(request, timeout=10),
                                         stub.StartRun(request, timeout=10))
    assert first.run.id == second.run.id
    assert sorted([first.started, second.started]) == [False, True]


@contextlib.asynccontextmanager
async def _claimed_key(mesh: MeshHarness, workflow: str
                       ) -> AsyncIterator[tuple[Any, RunIndex, str, str]]:
    """A one-step ``workflow``, and an idempotency key claimed for a fresh run id, as a
    starter that went no further leaves it: the connection, the index, the key, the id."""
    await _stub(mesh).CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow(
        workflow, [echo("a")])), timeout=10)
    nc = await connect(mesh.config.nats, f"test-{workflow}")
    try:
        index = RunIndex(nc)
        await index.start()
        key, run_id = f"k-{time.time_ns()}", uuid.uuid4().hex
        assert await index.claim_key("", key, run_id) == run_id
        yield nc, index, key, run_id
    finally:
        await nc.close()


async def test_a_starter_that_died_before_recording_leaves_no_trace_and_its_key_works(
        mesh: MeshHarness) -> None:
    """A starter that claimed an idempotency key and indexed its run, then died before
    recording it: the sweep takes the summary out of the index (no blank ListRuns entry),
    and a StartRun retried with the key starts the run under the claimed id, even while a
    sweep holds that run's lease."""
    stub = _stub(mesh)
    async with _claimed_key(mesh, "orphan") as (_, index, key, claimed):
        lost = uuid.uuid4().hex
        for run_id in (claimed, lost):  # what the dead starters left
            await index.put(pb.Run(id=run_id, workflow="orphan", version=1,
                                   state=pb.RUN_STATE_RUNNING), fresh=True)

        async def removed() -> bool:
            return await index.get(lost) is None

        await wait_for(removed, 30, "the sweep to take the unrecorded run out")
        listed = await stub.ListRuns(pb.ListRunsRequest(page_size=1000), timeout=10)
        assert lost not in [r.id for r in listed.runs]
        assert all(r.workflow for r in listed.runs), "no blank entry"

        started = await stub.StartRun(pb.StartRunRequest(workflow="orphan",
                                                         idempotency_key=key), timeout=30)
        assert (started.run.id, started.started) == (claimed, True)
        assert (await _finished(stub, claimed)).state == pb.RUN_STATE_SUCCEEDED


async def test_a_key_claimed_by_a_failed_starter_works_for_a_caller_with_a_short_deadline(
        mesh: MeshHarness) -> None:
    """A starter claimed an idempotency key, then failed before recording its run (JetStream
    did not answer, in a leader election). A caller retrying with a 2 s deadline must get
    the run: nobody holds its lease, so nobody is recording it. (A fixed 5 s wait for the
    first starter outlasted the deadline: every retry timed out and the key was stuck.)"""
    stub = _stub(mesh)
    async with _claimed_key(mesh, "stuck") as (_, _, key, claimed):
        pass  # the starter failed here: nothing more was written
    started = await stub.StartRun(pb.StartRunRequest(workflow="stuck", idempotency_key=key),
                                  timeout=2)
    assert (started.run.id, started.started) == (claimed, True)
    assert (await _finished(stub, claimed)).state == pb.RUN_STATE_SUCCEEDED


async def _record_late(nc: Any, run_id: str, workflow: str, key: str) -> None:
    """What a starter's first append does when it lands late: the run's RunStarted."""
    history = History(nc)
    await history.start()
    event = pb.RunEvent(run_id=run_id, sequence=1, run_started=pb.RunStarted(
        workflow=workflow, version=1, idempotency_key=key))
    event.time.GetCurrentTime()
    await history.append(event, 0)


async def test_a_first_append_that_lands_late_is_still_run(mesh: MeshHarness) -> None:
    """A starter indexed its run and sent its first event as its nats-server hung; the
    event lands when the server resumes, after the sweep has looked at the run (and found
    no history). The run must still be found and finished: a sweep that took the young
    summary out left the run recorded, unlisted and owned by nobody, RUNNING for ever (the
    cluster benchmark's stuck run after a partition)."""
    stub = _stub(mesh)
    async with _claimed_key(mesh, "late") as (nc, index, key, run_id):
        leases = await nc.jetstream().key_value(LEASES_BUCKET)
        watcher: Any = await leases.watch(run_id)  # nats-py leaves it untyped
        listed = pb.Run(id=run_id, workflow="late", version=1, state=pb.RUN_STATE_RUNNING,
                        idempotency_key=key)
        listed.created_at.GetCurrentTime()
        await index.put(listed, fresh=True)
        held = False
        try:
            async with asyncio.timeout(30):
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation is None and entry.value:
                        held = True  # a sweep took the run's lease...
                    elif held and entry.operation in ("DEL", "PURGE"):
                        break  # ...and let it go, having found no history
        finally:
            await watcher.stop()
        await _record_late(nc, run_id, "late", key)
        assert (await _finished(stub, run_id)).state == pb.RUN_STATE_SUCCEEDED
        assert (await index.get(run_id)).state == pb.RUN_STATE_SUCCEEDED  # type: ignore[union-attr]


async def test_a_retried_start_continues_a_recorded_run_nobody_owns(
        mesh: MeshHarness) -> None:
    """A run recorded (its first event landed late) but not in the index and leased by
    nobody: StartRun retried with its key continues it, and lists it again."""
    stub = _stub(mesh)
    async with _claimed_key(mesh, "unlisted") as (nc, index, key, run_id):
        await _record_late(nc, run_id, "unlisted", key)
        again = await stub.StartRun(pb.StartRunRequest(workflow="unlisted",
                                                       idempotency_key=key), timeout=10)
        assert (again.run.id, again.started) == (run_id, False)
        assert (await _finished(stub, run_id)).state == pb.RUN_STATE_SUCCEEDED
        assert (await index.get(run_id)).state == pb.RUN_STATE_SUCCEEDED  # type: ignore[union-attr]


async def test_a_run_the_sweep_cannot_continue_does_not_hold_up_the_runs_after_it(
        mesh: MeshHarness) -> None:
    """The takeover sweep meets a run it cannot continue (recorded with a workflow that
    does not exist) before a finished run whose summary still says RUNNING (its node's
    last index write was lost to a nats-server restart). The finished run's summary is
    set right all the same: a failure stopped the whole sweep at the first run, every
    time, and that run's summary stayed RUNNING for ever."""
    nc = await connect(mesh.config.nats, "test-sweep-order")
    try:
        index, history = RunIndex(nc), History(nc)
        await index.start()
        await history.start()
        poison, done = uuid.uuid4().hex, uuid.uuid4().hex
        for run_id, workflow in ((poison, f"ghost-{poison}"), (done, "done")):
            await index.put(pb.Run(id=run_id, workflow=workflow, version=1,
                                   state=pb.RUN_STATE_RUNNING), fresh=True)
        assert [r.id for r in await index.active() if r.id in (poison, done)] == [
            poison, done], "the sweep meets the poisoned run first"
        for run_id, workflow, finished in ((poison, f"ghost-{poison}", False),
                                           (done, "done", True)):
            events = [pb.RunEvent(run_id=run_id, sequence=1, run_started=pb.RunStarted(
                workflow=workflow, version=1))]
            if finished:
                events.append(pb.RunEvent(run_id=run_id, sequence=2, run_finished=(
                    pb.RunFinished(state=pb.RUN_STATE_SUCCEEDED))))
            after = 0
            for event in events:
                event.time.GetCurrentTime()
                after = await history.append(event, after)

        async def set_right() -> bool:
            found = await index.get(done)
            return found is not None and found.state == pb.RUN_STATE_SUCCEEDED

        try:
            await wait_for(set_right, 30, "the sweep to set the finished run's summary")
            stuck = await index.get(poison)
            assert stuck is not None  # still listed, and still waiting for its workflow
            assert stuck.state == pb.RUN_STATE_RUNNING
        finally:
            await index.remove(poison)  # later tests' sweeps on this server need not meet it
    finally:
        await nc.close()


async def test_bad_definitions_and_unknown_things_get_clear_errors(mesh: MeshHarness) -> None:
    stub = _stub(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("bad", [
            echo("a", needs=["b"]), echo("b", needs=["a"]),
            {"id": "c", "call": {"method": "/revo.nothing.v1.Nope/Call"}}])), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(caught.value.details())
    assert "no node serves /revo.nothing.v1.Nope/Call" in details
    assert "cycle: a -> b -> a" in details
    for call, code in [
            (stub.StartRun(pb.StartRunRequest(workflow="missing"), timeout=10),
             grpc.StatusCode.NOT_FOUND),
            (stub.GetRun(pb.GetRunRequest(run_id="0" * 32), timeout=10),
             grpc.StatusCode.NOT_FOUND),
            (stub.GetWorkflow(pb.GetWorkflowRequest(name="missing"), timeout=10),
             grpc.StatusCode.NOT_FOUND)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code


async def test_every_steps_permission_is_checked_before_any_step_runs(
        mesh_harness: Callable[..., Any]) -> None:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(plugins=PLUGINS, auth=AUTH)
    await mesh.wait_for_service(SERVICE)
    try:
        async def signed_in(role: str) -> Any:
            return bearer((await login(mesh.channel, await add_user(mesh, role))).access_token)

        admin, analyst, developer = [await signed_in(r)
                                     for r in ("admin", "analyst", "developer")]
        stub = _stub(mesh)
        # a run that echoes (execute), then defines a workflow (write)
        inner = {"name": "inner", "steps": [echo("x")]}
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("meta", [
            echo("a"),
            {"id": "define", "needs": ["a"], "call": {
                "method": "/revo.workflows.v1.WorkflowService/CreateWorkflow",
                "request": {"workflow": inner}}}])), timeout=10, metadata=admin)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StartRun(pb.StartRunRequest(workflow="meta"), timeout=10,
                                metadata=analyst)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "WorkflowService/CreateWorkflow (write)" in str(caught.value.details())
        listed = await stub.ListRuns(pb.ListRunsRequest(workflow="meta"), timeout=10,
                                     metadata=admin)
        assert not listed.runs, "nothing ran"
        run = (await stub.StartRun(pb.StartRunRequest(workflow="meta"), timeout=10,
                                   metadata=developer)).run
        done = await _finished(stub, run.id, developer)
        assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
        assert done.started_by.startswith("developer")
        # the analyst does not see the developer's run
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRun(pb.GetRunRequest(run_id=run.id), timeout=10, metadata=analyst)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await remove_users_since(mesh, since)


async def test_a_run_whose_node_is_killed_is_continued_by_another(
        mesh_harness: Callable[..., Any], tmp_path: Path) -> None:
    """Two node processes host the Coordinator; the one running a run is SIGKILLed in the
    middle of a step; the other takes the run over and finishes it."""
    mesh: MeshHarness = await mesh_harness(plugins={"only": ["echo"]}, nodes=1)
    env = _coordinator_env("workflows,echo")
    first = spawn_node(mesh.config, tmp_path / "first.log",
                       extra_env={**env, "REVO_NODE__ID": "first"})
    second: Any = None
    try:
        await mesh.wait_for_service(SERVICE, nodes=1, timeout=60)
        stub = _stub(mesh)
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("durable", [
            echo("a"), echo("b", delay_ms=3_000, needs=["a"]), echo("c", needs=["b"])])),
            timeout=10)
        run = (await stub.StartRun(pb.StartRunRequest(workflow="durable"), timeout=10)).run

        async def step_b_running() -> bool:
            got = (await stub.GetRun(pb.GetRunRequest(run_id=run.id), timeout=10)).run
            return any(s.id == "b" and s.state == pb.STEP_STATE_RUNNING for s in got.steps)

        await wait_for(step_b_running, 20, "step b running on the first node")
        second = spawn_node(mesh.config, tmp_path / "second.log",
                            extra_env={**env, "REVO_NODE__ID": "second"})
        await mesh.wait_for_service(SERVICE, nodes=2, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        done = await _finished(stub, run.id)
        assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
        assert time.monotonic() - killed < 60
        history = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=run.id),
                                                        timeout=10)]
        started_b = [e for e in history if e.step_id == "b"
                     and e.WhichOneof("event") == "step_started"]
        assert len(started_b) == 1, "the second node continued the same attempt"
        b = next(s for s in done.steps if s.id == "b")
        assert json_format.MessageToDict(b.output)["idempotencyKey"] == f"{run.id}/b"
        log = (tmp_path / "second.log").read_text()
        assert f"workflow run {run.id}: continued on this node" in log, log[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if second is not None:
            stop_node(second)


async def test_a_node_that_stops_mid_task_hands_the_run_on_without_cancelling_the_task(
        mesh_harness: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Coordinator node stopped (SIGTERM) while a task step's Parallel Mind task runs
    leaves the task running: the next owner finds the same task under the step's key and
    the run succeeds with the task's one effect. (A stopping or lease-losing node that
    cancelled the task left the next owner a CANCELLED task, and the run failed.)"""
    effects = tmp_path / "effects"
    effects.mkdir()
    monkeypatch.setenv(EFFECTS_DIR_ENV, str(effects))  # the in-process node runs the task
    mesh: MeshHarness = await mesh_harness(plugins={
        "only": ["parallel", "guarded"], "extra": {"guarded": "tests.plugins.guarded"}})
    env = _coordinator_env("workflows")
    first = spawn_node(mesh.config, tmp_path / "first.log",
                       extra_env={**env, "REVO_NODE__ID": "first"})
    second: Any = None
    try:
        await mesh.wait_for_service(SERVICE, nodes=1, timeout=60)
        stub = _stub(mesh)
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=_workflow("handed", [
            {"id": "work", "task": {"type": "test.step_effect",
                                    "payload": {"key": "handed", "ms": 3000}}}])),
            timeout=10)
        run = (await stub.StartRun(pb.StartRunRequest(workflow="handed"), timeout=10)).run
        log = effects / f"steps-{os.getpid()}.log"
        await wait_for(lambda: log.exists() and "effect handed" in log.read_text(), 20,
                       "the step's task running")
        second = spawn_node(mesh.config, tmp_path / "second.log",
                            extra_env={**env, "REVO_NODE__ID": "second"})
        await mesh.wait_for_service(SERVICE, nodes=2, timeout=60)
        assert await asyncio.to_thread(stop_node, first) == 0
        done = await _finished(stub, run.id)
        assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
        assert json.loads(json_format.MessageToJson(done.output)) == "handed"
        lines = [line.split() for line in log.read_text().splitlines()]
        assert [line[0] for line in lines] == ["effect", "done"], lines
        ran_s = (int(lines[1][2]) - int(lines[0][2])) / 1e9
        assert ran_s > 2.9, f"the task was cut short after {ran_s:.2f} s of its 3 s"
        assert lines[0][3:] == lines[1][3:] == [lines[0][3], "1"], "one task, one attempt"
        second_log = (tmp_path / "second.log").read_text()
        assert f"workflow run {run.id}: continued on this node" in second_log, \
            second_log[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if second is not None:
            stop_node(second)


async def test_the_command_line_applies_lists_and_runs_a_workflow_from_a_file(
        mesh: MeshHarness, tmp_path: Path) -> None:
    good = tmp_path / "hello.yaml"
    good.write_text(f"""
name: hello-cli
description: two echoes
steps:
  - id: first
    call:
      method: {ECHO}
      request: {{payload: aGk=}}
  - id: second
    call:
      method: {COUNT}
      collectStream: true
      requestExpr: '{{"count": input.n}}'
output: 'size(steps.second.output)'
""")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "steps": [{"id": "x", "call": {"method": "/no.Such/M"}}]}')

    async def revo(*words: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh", "workflows", "--address", mesh.target, *words,
            env={**os.environ, "REVO_HOME": str(mesh.config.home),
                 "REVO_NATS__URL": mesh.config.nats.url, "REVO_AUTH__ENABLED": "false"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return int(process.returncode or 0), out.decode()

    assert await revo("apply", str(good), "--check") == (0, "hello-cli: valid\n")
    assert await revo("apply", str(good)) == (0, "hello-cli: version 1 (created)\n")
    code, out = await revo("apply", str(bad))
    assert code == 1
    assert "INVALID_ARGUMENT" in out
    assert "no node serves /no.Such/M" in out
    code, out = await revo("list")
    assert code == 0
    assert "hello-cli" in out
    code, out = await revo("run", "hello-cli", "--input", '{"n": 4}')
    assert code == 0, out
    assert "step_succeeded" in out
    assert json.loads(out.strip().splitlines()[-1]) == {
        "state": "RUN_STATE_SUCCEEDED", "output": 4, "error": None}


async def test_a_step_waits_out_a_service_that_is_down_without_using_its_attempts(
        mesh: MeshHarness) -> None:
    """Parallel Mind goes away while a run waits (as while a NATS leader is elected or the
    only node restarts): its task step keeps trying within its attempt, and once a node
    serves Parallel Mind again the run succeeds on the step's first attempt, with no
    failure recorded."""
    stub = _stub(mesh)
    definition = _workflow("outage", [
        {"id": "gate", "waitSignal": {"name": "go"}},
        {"id": "work", "needs": ["gate"], "task": {"type": "noop", "payload": {"n": 1}},
         "retry": {"maxAttempts": 2}}])
    only_parallel = mesh.config.model_copy(update={"plugins": mesh.config.plugins.model_copy(
        update={"only": ["parallel"]})})
    first = Node(only_parallel)
    await first.start()  # a run with a task step starts only while Parallel Mind is served
    await mesh.wait_for_service(TASKS)
    await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=definition), timeout=10)
    started = await stub.StartRun(pb.StartRunRequest(workflow="outage"), timeout=10)
    await first.stop()
    await wait_for(lambda: _runtime(mesh).calls.route(f"/{TASKS}/Submit") is None, 10,
                   "the Coordinator's node to see Parallel Mind gone")
    await stub.Signal(pb.SignalRequest(run_id=started.run.id, name="go"), timeout=10)
    url = mesh.nodes[0].metrics.url + "/metrics"

    async def retried(times: int) -> bool:
        scraped = await asyncio.to_thread(_scrape, url)
        return _sample(scraped, "coordinator_unavailable_retries_total",
                       'kind="task"') >= times

    # more tries than the step has attempts: each would have failed one attempt before
    await wait_for(lambda: retried(4), 30, "the step to meet UNAVAILABLE four times")
    parallel = Node(only_parallel)
    await parallel.start()
    try:
        run = await _finished(stub, started.run.id)
    finally:
        await parallel.stop()
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert [(s.id, s.state, s.attempt) for s in run.steps][1] == (
        "work", pb.STEP_STATE_SUCCEEDED, 1)
    history = [r.event async for r in stub.WatchRun(
        pb.WatchRunRequest(run_id=started.run.id), timeout=10)]
    assert not [e for e in history if e.WhichOneof("event") == "step_failed"]


def _runtime(mesh: MeshHarness) -> Any:
    runtime = mesh.nodes[0].runtime
    assert runtime is not None
    return runtime
