"""A unary call its caller gives up on is stopped at its engine, across the NATS hop.

The node accepts a call that runs longer than ``ACCEPT_AFTER_S`` (``Revo-Accepted``); a
caller that then cancels it sends a cancel to that node, whose pool answers ``CANCELLED``
and cuts the engine's work short (``ctx.cancelled``; an async engine's task is
cancelled). The engine here is ``crashy`` with one actor: until its 30 s Echo is cut short
it cannot answer anything else, so a prompt answer to the next call proves the cancel
reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from mesh.testing import MeshHarness, wait_for
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from revo_engine_workflows.v1 import workflows_pb2 as pb
from revo_engine_workflows.v1 import workflows_pb2_grpc
from tests.plugins import crashy

PLUGINS = {"only": ["crashy", "workflows"], "extra": {"crashy": "tests.plugins.crashy"}}
LONG_MS = 30_000


@pytest.fixture
async def mesh(mesh_harness: Callable[..., Any]) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(plugins=PLUGINS)
    await harness.wait_for_service("revo.workflows.v1.WorkflowService")
    return harness


def _accepted(mesh: MeshHarness) -> bool:
    """A call is in flight on the node, past the moment it is accepted."""
    responder: Any = mesh.nodes[0]._responder
    return bool(responder._calls) and not responder._unaccepted


async def _calls_cancelled(stub: Any) -> int:
    reply = await stub.Echo(echo_pb2.EchoRequest(payload=crashy.CALLS_CANCELLED), timeout=3)
    return int(reply.payload)


async def test_a_grpc_client_cancelling_a_unary_call_stops_it_at_the_engine(
        mesh: MeshHarness) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    assert await _calls_cancelled(stub) == 0
    call = stub.Echo(echo_pb2.EchoRequest(payload=b"long", delay_ms=LONG_MS), timeout=60)
    await wait_for(lambda: _accepted(mesh), 10, "the call accepted by the node")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # the one actor is free again at once, and says it was cut short by the cancel
    assert await _calls_cancelled(stub) == 1


async def test_cancelling_a_run_stops_its_running_unary_step_at_the_engine(
        mesh: MeshHarness) -> None:
    workflows = workflows_pb2_grpc.WorkflowServiceStub(mesh.channel)
    await workflows.CreateWorkflow(pb.CreateWorkflowRequest(workflow=json_format.ParseDict(
        {"name": "held", "steps": [{"id": "long", "call": {
            "method": "/revo.echo.v1.EchoService/Echo",
            "request": {"payload": "bG9uZw==", "delayMs": LONG_MS}}}]}, pb.Workflow())),
        timeout=10)
    run = (await workflows.StartRun(pb.StartRunRequest(workflow="held"), timeout=10)).run
    await wait_for(lambda: _accepted(mesh), 10, "the step's call accepted by the node")
    await workflows.CancelRun(pb.CancelRunRequest(run_id=run.id), timeout=10)
    events = [r.event async for r in workflows.WatchRun(pb.WatchRunRequest(run_id=run.id),
                                                        timeout=30)]
    assert events[-1].run_finished.state == pb.RUN_STATE_CANCELLED
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    assert await _calls_cancelled(stub) == 1, "the engine's call was cut short"
