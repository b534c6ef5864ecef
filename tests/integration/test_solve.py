"""The built-in ``solve`` workflow end to end, through a real gateway and node: Perfect
Recall (milvus-lite), Creative and the model router on a real Triton embedder, Parallel
Mind running the evaluators, the Coordinator running the run; generations and judges from
a loopback OpenAI-compatible server scripted per perspective and per rubric."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from mesh.embedded.triton import TritonServer
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer
from revo_engine_parallel.v1 import tasks_pb2, tasks_pb2_grpc
from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc
from revo_engine_workflows.state import json_value
from revo_engine_workflows.v1 import workflows_pb2 as pb
from revo_engine_workflows.v1 import workflows_pb2_grpc
from tests.integration.creative_support import (
    KEY,
    KEY_ENV,
    PROBLEM,
    SOLUTIONS,
    ScriptedModel,
    catalog,
)
from tests.integration.recall_support import collection
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

WORKFLOWS = "revo.workflows.v1.WorkflowService"
ENGINES = ["workflows", "creative", "models", "recall", "parallel"]
PERSPECTIVES = ["pragmatist", "minimalist", "reliability"]


def _judge(system: str, user: str) -> str:
    """Correctness and simplicity favour the minimalist's answer, risk the reliability
    engineer's: two of the three evaluators agree."""
    favourite = "reliability" if "Risk and cost" in system else "minimalist"
    if SOLUTIONS[favourite] in user:
        return "The best of them.\nScore: 9/10"
    return "Workable.\nScore: 5/10"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    model = ScriptedModel(judge=_judge)
    with FakeLLMServer(api_key=KEY) as server:
        server.respond_with(model)
        yield server


async def _mesh(mesh_harness: Any, triton: TritonServer, models: dict[str, Any],
                engines: list[str]) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(
        plugins={"only": engines}, auth=AUTH,
        models={"retries": 0, "timeout_s": 10.0, "triton_url": triton.grpc_url, **models},
        engines={"recall": {"collection": collection()}})
    await harness.wait_for_service(WORKFLOWS)
    if "recall" in engines:
        await harness.wait_for_service("revo.recall.v1.RecallService")
        pool: Any = harness.nodes[0].pools["recall"]
        await wait_for(lambda: pool.engine.replica.index is not None, 30, "the memory index")
    return harness


async def _solve(harness: MeshHarness, who: Any, problem: str) -> pb.Run:
    stub = workflows_pb2_grpc.WorkflowServiceStub(harness.channel)
    started = await stub.StartRun(pb.StartRunRequest(workflow="solve", input=json_value({
        "problem": problem, "n": 3, "constraints": ["no new paid services"],
        "options": {"perspectives": PERSPECTIVES}})), metadata=who, timeout=30)
    events = [r.event async for r in stub.WatchRun(pb.WatchRunRequest(run_id=started.run.id),
                                                   metadata=who, timeout=120)]
    assert events[-1].WhichOneof("event") == "run_finished"
    run: pb.Run = (await stub.GetRun(pb.GetRunRequest(run_id=started.run.id), metadata=who,
                                     timeout=10)).run
    return run


async def test_solve_recalls_generates_evaluates_votes_and_remembers(
        mesh_harness: Any, triton: TritonServer, fake: FakeLLMServer) -> None:
    harness = await _mesh(mesh_harness, triton, {"catalog": catalog(fake)}, ENGINES)
    try:
        alice = bearer((await login(harness.channel, await add_user(harness, "developer")))
                       .access_token)
        run = await _solve(harness, alice, PROBLEM)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        output = json_format.MessageToDict(run.output)
        assert output["agreed"] is True, "two of the three evaluators agree"
        chosen = output["chosen"]
        assert chosen["strategy"]["perspective"] == "minimalist"
        assert chosen["text"] == SOLUTIONS["minimalist"]
        assert output["recalled"] == 0, "nothing was remembered before"
        steps = {s.id: s for s in run.steps}
        assert [steps[s].state for s in ("recall", "alternatives", "evaluate", "remember")] \
            == [pb.STEP_STATE_SUCCEEDED] * 4
        judges = ("judge_correctness", "judge_simplicity", "judge_risk")
        candidates = [c["strategy"]["perspective"] for c in
                      json_format.MessageToDict(steps["alternatives"].output)["candidates"]]
        votes = {j: candidates[int(json_format.MessageToDict(steps[j].output)["best"])]
                 for j in judges if steps[j].state == pb.STEP_STATE_SUCCEEDED}
        assert votes["judge_correctness"] == votes["judge_simplicity"] == "minimalist"
        # the risk evaluator disagrees, or was cancelled once the other two agreed
        assert votes.get("judge_risk", "reliability") == "reliability"
        assert steps["judge_risk"].state in (pb.STEP_STATE_SUCCEEDED, pb.STEP_STATE_CANCELLED)

        # the evaluators ran on Parallel Mind, as alice, each once
        tasks = (await tasks_pb2_grpc.TaskServiceStub(harness.channel).List(
            tasks_pb2.ListRequest(), metadata=alice, timeout=10)).tasks
        judged = [t for t in tasks if t.spec.call.method.endswith("/Judge")]
        assert len(judged) == 3
        assert {t.state for t in judged} <= {tasks_pb2.TASK_STATE_SUCCEEDED,
                                             tasks_pb2.TASK_STATE_CANCELLED}
        assert {t.spec.idempotency_key for t in judged} == {
            f"{run.id}/{j}#0" for j in judges}

        # the choice is in alice's memory, and the next solve of a like problem recalls it
        recall = recall_pb2_grpc.RecallServiceStub(harness.channel)
        memory = (await recall.Get(recall_pb2.GetRequest(ids=[output["memoryId"]]),
                                   metadata=alice, timeout=10)).memories[0]
        assert SOLUTIONS["minimalist"] in memory.text
        again = await _solve(harness, alice, PROBLEM.replace("six", "seven"))
        assert again.state == pb.RUN_STATE_SUCCEEDED, again.error
        assert json_format.MessageToDict(again.output)["recalled"] >= 1
        context = json_format.MessageToDict(
            next(s for s in again.steps if s.id == "alternatives").output)
        assert context["candidates"], "a set was generated with the recalled context"
        asked = [r.body for r in fake.requests if r.body
                 and "Perspective: " in json.dumps(r.body)]
        assert any(SOLUTIONS["minimalist"] in json.dumps(b) for b in asked[-3:]), \
            "the recalled choice reached the generations as context"
    finally:
        await remove_users_since(harness, 0)


async def test_solve_without_a_generating_model_fails_saying_what_to_configure(
        mesh_harness: Any, triton: TritonServer) -> None:
    harness = await _mesh(mesh_harness, triton, {"catalog": []}, ENGINES)
    try:
        bob = bearer((await login(harness.channel, await add_user(harness, "developer")))
                     .access_token)
        run = await _solve(harness, bob, PROBLEM)
        assert run.state == pb.RUN_STATE_FAILED
        assert "step alternatives failed: FAILED_PRECONDITION" in run.error
        assert "no model can generate" in run.error
        assert "[[models.catalog]]" in run.error
        assert "generator_checkpoint" in run.error
    finally:
        await remove_users_since(harness, 0)


async def test_solve_on_a_mesh_without_its_engines_says_which_to_enable(
        mesh_harness: Any, triton: TritonServer) -> None:
    harness = await _mesh(mesh_harness, triton, {}, ["workflows", "parallel"])
    stub = workflows_pb2_grpc.WorkflowServiceStub(harness.channel)
    try:
        admin = bearer((await login(harness.channel, await add_user(harness, "admin")))
                       .access_token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StartRun(pb.StartRunRequest(workflow="solve"), metadata=admin,
                                timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = str(caught.value.details())
        assert "the built-in workflow solve cannot run on this mesh now" in details
        assert "RecallService/Search" in details
        assert "enable the recall, creative, parallel and models engines" in details
        assert "RecallService/Search" in details.rsplit("Not served now:", 1)[1]
    finally:
        await remove_users_since(harness, 0)
