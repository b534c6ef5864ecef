"""Engine failures through the gateway: bugs answer INTERNAL and restart the actor; plugins
that fail to load, configure or start are reported and the node serves the others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from mesh.client import MeshClient
from mesh.testing import wait_for
from mesh.v1 import mesh_pb2
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.plugins import crashy

CRASHY = {"only": ["crashy"], "extra": {"crashy": "tests.plugins.crashy"}}
FAULTY = {
    "broken_import": "tests.plugins.broken_import",
    "bad_config": "tests.plugins.bad_config",
    "bad_start": "tests.plugins.bad_start",
    "misnamed": "tests.plugins.misnamed",
}


async def _engine(target: str, name: str) -> mesh_pb2.Engine:
    async with MeshClient(target, timeout=5) as client:
        nodes = await client.list_nodes()
    return next(e for e in nodes[0].engines if e.name == name)


async def test_engine_bug_is_internal_then_actor_restarts_and_node_stays_healthy(mesh_harness):
    mesh = await mesh_harness(plugins=CRASHY)
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    assert (await stub.Echo(echo_pb2.EchoRequest(payload=b"a"), timeout=5)).payload == b"a"
    assert (await stub.Stats(echo_pb2.StatsRequest(), timeout=5)).answered == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(payload=crashy.CRASH), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = str(caught.value.details())
    assert "crashy" in details
    assert "RuntimeError: boom" in details

    async def restarted() -> bool:
        engine = await _engine(mesh.target, "crashy")
        return engine.restarts == 1 and engine.status == mesh_pb2.ENGINE_STATUS_RUNNING

    await wait_for(restarted, 10, "the crashed actor restarted")
    # a fresh actor: its state starts over, and it serves
    assert (await stub.Stats(echo_pb2.StatsRequest(), timeout=5)).answered == 0
    assert (await stub.Echo(echo_pb2.EchoRequest(payload=b"b"), timeout=5)).payload == b"b"


async def test_expected_engine_error_keeps_its_code_without_restart(mesh_harness):
    mesh = await mesh_harness(plugins=CRASHY)
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(payload=crashy.INVALID), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send anything else" in str(caught.value.details())
    assert (await _engine(mesh.target, "crashy")).restarts == 0


async def test_failing_plugins_are_reported_and_the_node_serves_the_others(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo", *FAULTY], "extra": FAULTY})
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    assert (await stub.Echo(echo_pb2.EchoRequest(payload=b"ok"), timeout=5)).payload == b"ok"

    async with MeshClient(mesh.target, timeout=5) as client:
        (node,) = await client.list_nodes()
    engines = {e.name: e for e in node.engines}
    expected = {
        "echo": mesh_pb2.ENGINE_STATUS_RUNNING,
        "broken_import": mesh_pb2.ENGINE_STATUS_LOAD_ERROR,
        "misnamed": mesh_pb2.ENGINE_STATUS_LOAD_ERROR,
        "bad_config": mesh_pb2.ENGINE_STATUS_CONFIG_ERROR,
        "bad_start": mesh_pb2.ENGINE_STATUS_START_ERROR,
        "creative": mesh_pb2.ENGINE_STATUS_DISABLED,  # installed, not in plugins.only
        "models": mesh_pb2.ENGINE_STATUS_DISABLED,
        "parallel": mesh_pb2.ENGINE_STATUS_DISABLED,
        "recall": mesh_pb2.ENGINE_STATUS_DISABLED,
        "workflows": mesh_pb2.ENGINE_STATUS_DISABLED,
    }
    assert {name: e.status for name, e in engines.items()} == expected
    for name in FAULTY:
        assert engines[name].status_message, f"{name} has no message a person can act on"
    assert "must equal the engine name" in engines["misnamed"].status_message


def test_revo_plugins_lists_statuses(tmp_path):
    env = {"REVO_PLUGINS__EXTRA__BAD_CONFIG": "tests.plugins.bad_config",
           "REVO_PLUGINS__EXTRA__BROKEN_IMPORT": "tests.plugins.broken_import",
           "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run([sys.executable, "-m", "mesh", "plugins"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, **env}, cwd=tmp_path)
    assert result.returncode == 1  # some plugin is broken
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "enabled" in lines["echo"]
    assert "config error" in lines["bad_config"]
    assert "load error" in lines["broken_import"]
