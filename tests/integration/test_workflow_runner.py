"""The Coordinator's runner against a real mesh: steps call the echo engine through NATS,
every event goes to the run's history in JetStream, and a run continues from its history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import json_format

from mesh.calls import MeshCalls
from mesh.testing import MeshHarness, wait_for
from mesh.transport.connection import MeshConnection, connect
from revo_engine_workflows.definitions import check
from revo_engine_workflows.history import History
from revo_engine_workflows.runner import Limits, OwnershipLost, Runner
from revo_engine_workflows.state import RunState, fold, json_value
from revo_engine_workflows.v1 import workflows_pb2 as pb

ECHO = "/revo.echo.v1.EchoService/Echo"
COUNT = "/revo.echo.v1.EchoService/Count"


@dataclass
class Rig:
    history: History
    calls: MeshCalls

    def runner(self, workflow: dict[str, Any], state: RunState | None = None,
               **limits: Any) -> Runner:
        definition = check(json_format.ParseDict({"name": "t", **workflow}, pb.Workflow()),
                           lambda path: r.method if (r := self.calls.route(path)) else None)
        return Runner(definition, state or RunState(uuid.uuid4().hex), self.history,
                      self.calls, Limits(initial_backoff_s=0.01, **limits))

    async def start(self, runner: Runner, run_input: Any = None) -> None:
        started = pb.RunStarted(workflow="t", version=1)
        if run_input is not None:
            started.input.CopyFrom(json_value(run_input))
        await runner.record(run_started=started)

    async def run(self, workflow: dict[str, Any], run_input: Any = None,
                  **limits: Any) -> RunState:
        runner = self.runner(workflow, **limits)
        await self.start(runner, run_input)
        await asyncio.wait_for(runner.run(), 30)
        # what the history holds is what the runner knew
        again = fold(runner.state.run_id, await self.history.read(runner.state.run_id))
        assert again.to_proto() == runner.state.to_proto()
        return runner.state


@pytest.fixture
async def rig(mesh_harness: Callable[..., Any]) -> AsyncIterator[Rig]:
    mesh: MeshHarness = await mesh_harness(plugins={"only": ["echo"]})
    nc: MeshConnection = await connect(mesh.config.nats, "test-workflow-runner")
    history = History(nc)
    await history.start()
    calls = MeshCalls(nc, mesh.config)
    await calls.start()
    try:
        yield Rig(history, calls)
    finally:
        await calls.stop()
        await nc.close()


def echo(step_id: str, payload: str = "aGk=", delay_ms: int = 0, **fields: Any
         ) -> dict[str, Any]:
    request: dict[str, Any] = {"payload": payload}
    if delay_ms:
        request["delayMs"] = delay_ms
    return {"id": step_id, "call": {"method": ECHO, "request": request}, **fields}


async def test_steps_pass_outputs_on_through_expressions(rig: Rig) -> None:
    state = await rig.run({
        "steps": [
            echo("a"),
            {"id": "b", "call": {"method": COUNT, "collectStream": True,
                                 "requestExpr": '{"count": size(steps.a.output.payload) '
                                                '+ input.extra}'}},
        ],
        "output": '{"echoed": steps.a.output.payload, "counted": size(steps.b.output)}',
    }, {"extra": 1})
    assert state.state == pb.RUN_STATE_SUCCEEDED
    assert state.output == {"echoed": "aGk=", "counted": 5}
    assert state.steps["b"].output == [{"index": i} for i in range(5)]
    # each step's call carried the run's key for it
    assert state.steps["a"].output["idempotencyKey"] == f"{state.run_id}/a"


async def test_groups_all_race_vote_and_map(rig: Rig) -> None:
    state = await rig.run({"steps": [
        {"id": "both", "group": {"strategy": "STRATEGY_ALL",
                                 "steps": [echo("one", "MQ=="), echo("two", "Mg==")]}},
        {"id": "first", "group": {"strategy": "STRATEGY_RACE", "steps": [
            echo("slow", "c2xvdw==", delay_ms=8_000), echo("fast", "ZmFzdA==")]}},
        {"id": "agreed", "group": {"strategy": "STRATEGY_VOTE",
                                   "voteKey": "output.payload",
                                   "steps": [echo("v1", "eA=="), echo("v2", "eQ=="),
                                             echo("v3", "eA==")]}},
        {"id": "counts", "group": {"strategy": "STRATEGY_MAP", "items": "[1, 2, 3]",
                                   "concurrency": 2,
                                   "each": {"id": "each_count", "call": {
                                       "method": COUNT, "collectStream": True,
                                       "requestExpr": '{"count": item}'}}}},
    ]})
    assert state.state == pb.RUN_STATE_SUCCEEDED, state.error
    outputs = {s: state.steps[s].output for s in ("both", "first", "agreed", "counts")}
    assert [o["payload"] for o in outputs["both"]] == ["MQ==", "Mg=="]
    assert outputs["first"]["payload"] == "ZmFzdA=="
    assert state.steps["slow"].state == pb.STEP_STATE_CANCELLED, "the race's loser"
    assert outputs["agreed"]["payload"] == "eA=="
    branches = [state.steps[f"counts[{i}]"] for i in range(3)]
    assert [len(o) for o in outputs["counts"]] == [1, 2, 3], (outputs["counts"], branches)
    assert state.steps["counts[2]"].output == [{"index": 0}, {"index": 1}, {"index": 2}]


async def test_a_vote_without_a_quorum_fails_the_run(rig: Rig) -> None:
    state = await rig.run({"steps": [
        {"id": "split", "group": {"strategy": "STRATEGY_VOTE", "voteKey": "output.payload",
                                  "steps": [echo("yes", "eQ=="), echo("no", "bg==")]}}]})
    assert state.state == pb.RUN_STATE_FAILED
    assert "no value reached the quorum of 2" in state.error


async def test_a_vote_by_judge_waits_for_every_branch_then_takes_its_pick(rig: Rig) -> None:
    bad = {"payload": "eA==", "delayMs": 90_000}  # refused INVALID_ARGUMENT
    # the judge (echo) answers with the last output's payload; the choice finds its index
    state = await rig.run({"steps": [{"id": "picked", "group": {
        "strategy": "STRATEGY_VOTE",
        "steps": [echo("quick", "cXVpY2s="), echo("slow", "c2xvdw==", delay_ms=500),
                  {"id": "broken", "onFailure": "ON_FAILURE_CONTINUE",
                   "call": {"method": ECHO, "request": bad}}],
        "judge": {"method": ECHO,
                  "requestExpr": '{"payload": outputs[size(outputs) - 1].payload}',
                  "choice": "output.payload == outputs[0].payload ? 0 : 1"}}}]})
    assert state.state == pb.RUN_STATE_SUCCEEDED, state.error
    assert state.output["payload"] == "c2xvdw==", "the slow branch, picked after it finished"
    assert state.steps["slow"].state == pb.STEP_STATE_SUCCEEDED
    assert state.steps["broken"].state == pb.STEP_STATE_FAILED

    out_of_range = await rig.run({"steps": [{"id": "picked", "group": {
        "strategy": "STRATEGY_VOTE", "steps": [echo("one"), echo("two")],
        "judge": {"method": ECHO, "request": {"payload": "aGk="}, "choice": "7"}}}]})
    assert out_of_range.state == pb.RUN_STATE_FAILED
    assert "the judge's choice is 7, not an index of the 2 outputs" in out_of_range.error


async def test_failures_fail_the_run_continue_or_fall_back(rig: Rig) -> None:
    bad = {"payload": "eA==", "delayMs": 90_000}  # refused INVALID_ARGUMENT: not retried
    failed = await rig.run({"steps": [{"id": "bad", "call": {"method": ECHO,
                                                              "request": bad}}]})
    assert failed.state == pb.RUN_STATE_FAILED
    assert failed.steps["bad"].attempt == 1
    assert "step bad failed: INVALID_ARGUMENT" in failed.error
    continued = await rig.run({"steps": [
        {"id": "bad", "onFailure": "ON_FAILURE_CONTINUE", "call": {"method": ECHO,
                                                                    "request": bad}},
        echo("after", needs=["bad"])]})
    assert continued.state == pb.RUN_STATE_SUCCEEDED
    assert continued.steps["after"].state == pb.STEP_STATE_SUCCEEDED
    fallen = await rig.run({"steps": [
        {"id": "bad", "onFailure": "ON_FAILURE_FALLBACK", "fallback": "spare",
         "call": {"method": ECHO, "request": bad}},
        echo("spare", "c3BhcmU=")], "output": "steps.bad.output.payload"})
    assert fallen.state == pb.RUN_STATE_SUCCEEDED
    assert fallen.output == "c3BhcmU="


async def test_a_step_that_times_out_is_retried_then_fails(rig: Rig) -> None:
    state = await rig.run({"steps": [echo("slow", delay_ms=5_000, timeout="0.2s",
                                          retry={"maxAttempts": 2})]})
    assert state.state == pb.RUN_STATE_FAILED
    assert state.steps["slow"].attempt == 2
    assert state.steps["slow"].code == "DEADLINE_EXCEEDED"


async def test_a_signal_wakes_a_waiting_step(rig: Rig) -> None:
    runner = rig.runner({"steps": [{"id": "approve", "waitSignal": {"name": "ok"}},
                                   echo("ship", needs=["approve"])],
                         "output": "steps.approve.output"})
    await rig.start(runner)
    running = asyncio.get_running_loop().create_task(runner.run())
    await wait_for(lambda: runner.state.step("approve").state == pb.STEP_STATE_WAITING, 10,
                   "the step waiting for its signal")
    assert runner.state.to_proto().state == pb.RUN_STATE_WAITING
    await _outside(rig, runner, signal_received=pb.SignalReceived(
        name="ok", payload=json_value({"by": "lead"})))
    await asyncio.wait_for(running, 20)
    assert runner.state.state == pb.RUN_STATE_SUCCEEDED
    assert runner.state.output == {"by": "lead"}


async def test_an_outside_event_whose_notice_was_lost_is_seen_by_a_later_look(
        rig: Rig) -> None:
    runner = rig.runner({"steps": [{"id": "approve", "waitSignal": {"name": "ok"}}]},
                        outside_poll_s=0.3)
    await rig.start(runner)
    running = asyncio.get_running_loop().create_task(runner.run())
    await wait_for(lambda: runner.state.step("approve").state == pb.STEP_STATE_WAITING, 10,
                   "the step waiting for its signal")
    await _outside(rig, runner, notify=False, signal_received=pb.SignalReceived(name="ok"))
    await asyncio.wait_for(running, 20)
    assert runner.state.state == pb.RUN_STATE_SUCCEEDED


async def test_a_signal_is_seen_at_once_through_its_notice(rig: Rig) -> None:
    runner = rig.runner({"steps": [{"id": "approve", "waitSignal": {"name": "ok"}}]},
                        outside_poll_s=3600.0)  # no periodic look within the test
    await rig.start(runner)
    running = asyncio.get_running_loop().create_task(runner.run())
    await wait_for(lambda: runner.state.step("approve").state == pb.STEP_STATE_WAITING, 10,
                   "the step waiting for its signal")
    await _outside(rig, runner, signal_received=pb.SignalReceived(name="ok"))
    await asyncio.wait_for(running, 20)
    assert runner.state.state == pb.RUN_STATE_SUCCEEDED


async def test_a_cancel_request_stops_the_running_steps(rig: Rig) -> None:
    runner = rig.runner({"steps": [echo("long", delay_ms=8_000)]})
    await rig.start(runner)
    running = asyncio.get_running_loop().create_task(runner.run())
    await wait_for(lambda: runner.state.step("long").state == pb.STEP_STATE_RUNNING, 10,
                   "the step running")
    await _outside(rig, runner, cancel_requested=pb.CancelRequested(requester="ada"))
    await asyncio.wait_for(running, 10)
    assert runner.state.state == pb.RUN_STATE_CANCELLED
    assert runner.state.error == "cancelled by ada"
    assert runner.state.steps["long"].state == pb.STEP_STATE_CANCELLED


async def test_another_node_continues_a_run_from_its_history(rig: Rig) -> None:
    workflow = {"steps": [echo("a"), echo("b", "Yg==", delay_ms=8_000, needs=["a"]),
                          echo("c", needs=["b"])]}
    first = rig.runner(workflow)
    await rig.start(first)
    running = asyncio.get_running_loop().create_task(first.run())
    await wait_for(lambda: first.state.step("b").state == pb.STEP_STATE_RUNNING, 10,
                   "step b running on the first node")
    running.cancel()  # the first node dies mid-step
    await asyncio.gather(running, return_exceptions=True)
    history = await rig.history.read(first.state.run_id)
    state = fold(first.state.run_id, history)
    assert state.steps["a"].state == pb.STEP_STATE_SUCCEEDED
    assert state.steps["b"].state == pb.STEP_STATE_RUNNING
    # the next owner: step b again (same key), without its delay this time
    workflow["steps"][1] = echo("b", "Yg==", needs=["a"])
    second = rig.runner(workflow, state)
    await asyncio.wait_for(second.run(), 20)
    assert second.state.state == pb.RUN_STATE_SUCCEEDED
    assert second.state.steps["a"].output == state.steps["a"].output, "not run again"
    assert second.state.steps["b"].attempt == 1, "the same attempt, continued"
    assert second.state.steps["b"].output["idempotencyKey"] == f"{state.run_id}/b"


async def test_two_owners_of_one_run_cannot_both_record(rig: Rig) -> None:
    workflow = {"steps": [echo("a", delay_ms=300), echo("b", needs=["a"])]}
    first = rig.runner(workflow)
    await rig.start(first)
    stale = fold(first.state.run_id, await rig.history.read(first.state.run_id))
    second = rig.runner(workflow, stale)
    outcomes = await asyncio.gather(asyncio.wait_for(first.run(), 20),
                                    asyncio.wait_for(second.run(), 20),
                                    return_exceptions=True)
    assert sum(isinstance(o, OwnershipLost) for o in outcomes) == 1, outcomes
    final = fold(first.state.run_id, await rig.history.read(first.state.run_id))
    assert final.state == pb.RUN_STATE_SUCCEEDED


async def _outside(rig: Rig, runner: Runner, notify: bool = True, **kind: Any) -> None:
    """Append an event as another node's Signal or CancelRun would (with its notice,
    unless ``notify`` is false: a lost one)."""
    last = await rig.history.last(runner.state.run_id)
    assert last is not None
    event = pb.RunEvent(run_id=runner.state.run_id, sequence=last.event.sequence + 1, **kind)
    event.time.GetCurrentTime()
    await rig.history.append(event, last.stream_sequence)
    if notify:
        await rig.history.notify(runner.state.run_id)
