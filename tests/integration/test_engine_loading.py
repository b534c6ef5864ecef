"""An engine still loading at start: its node announces ``ENGINE_STATUS_LOADING`` with the
figures the engine reports, ``revo status`` prints them, and the status turns to running
when the load is over (tests/plugins/loading.py holds the load on a gate)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import grpc
import pytest

from mesh.testing import MeshHarness, wait_for
from mesh.v1 import mesh_pb2, mesh_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.plugins import loading

PLUGINS = {"only": ["loading"], "extra": {"loading": "tests.plugins.loading"}}


async def _engine(mesh: MeshHarness) -> mesh_pb2.Engine:
    reply = await mesh_pb2_grpc.MeshServiceStub(mesh.channel).ListNodes(
        mesh_pb2.ListNodesRequest(), timeout=5)
    (node,) = reply.nodes
    return next(engine for engine in node.engines if engine.name == "loading")


async def test_a_loading_engine_is_announced_with_its_progress_until_it_is_loaded(
        mesh_harness: Any) -> None:
    mesh: MeshHarness = await mesh_harness(plugins=PLUGINS)
    seen: list[mesh_pb2.Engine] = []

    async def reports_progress() -> bool:
        seen.append(await _engine(mesh))
        return seen[-1].progress.done == loading.BEFORE_GATE

    await wait_for(reports_progress, 10, "the engine's progress in ListNodes")
    engine = seen[-1]
    assert engine.status == mesh_pb2.ENGINE_STATUS_LOADING
    assert (engine.progress.total, engine.progress.unit) == (loading.TOTAL, "items")
    # it is routed while loading, and answers what it cannot serve yet as UNAVAILABLE
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await echo.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    # `revo status`, as a person runs it, prints the figures
    env = dict(os.environ, REVO_HOME=str(mesh.config.home), REVO_AUTH__ENABLED="false",
               REVO_CONFIG=os.devnull)
    # (not subprocess.run: the gateway answers on this test's loop)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "status", "--address", mesh.target, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    stdout = out.decode()
    assert process.returncode == 0, stdout + err.decode()
    line = next(x for x in stdout.splitlines() if x.strip().startswith("loading "))
    assert " loading " in line, stdout
    assert line.endswith(f"{loading.BEFORE_GATE} of {loading.TOTAL} items (40 %)"), line

    mesh.nodes[0].pools["loading"].engine.gate.set()  # type: ignore[union-attr]

    async def running() -> bool:
        seen.append(await _engine(mesh))
        return seen[-1].status == mesh_pb2.ENGINE_STATUS_RUNNING

    await wait_for(running, 10, "the engine running once loaded")
    assert seen[-1].progress.done == loading.TOTAL  # the last figures stay
    reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5)
    assert reply.payload == b"x"
