"""An engine written outside this repository, as a third-party author ships one.

The test writes a distribution (``acme-greet``: a pyproject, a proto, an engine module) into
a temporary directory, generates its code with ``python -m mesh.codegen --tree`` as
docs/plugins.md tells authors to, builds and installs it with pip into a directory of its
own (``--target``, offline, with the project's setuptools), and starts a real node process
with that directory on ``PYTHONPATH`` against a real nats-server and a gateway with auth on.
Nothing in ``mesh/`` knows the engine: it is found through its ``revo.engines`` entry point,
served with roles, measured on the node's ``/metrics`` and traced, for free.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.auth.tokens import operator_token
from mesh.client import MeshClient
from mesh.config import MeshConfig
from mesh.gateway import Gateway
from mesh.testing import spawn_node, stop_node, wait_for
from mesh.testing.traces import OtlpReceiver

SERVICE = "acme.greet.v1.GreetService"
NODE_ID = "outside"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-greet"
version = "1.2.0"
requires-python = ">=3.11"
dependencies = ["revo-mesh"]

[project.entry-points."revo.engines"]
greet = "acme_greet"

[tool.setuptools.packages.find]
where = ["src"]
"""

PROTO = """\
syntax = "proto3";

package acme.greet.v1;

import "revo/mesh/v1/options.proto";

service GreetService {
  rpc Greet(GreetRequest) returns (GreetResponse) {
    option (revo.mesh.v1.permission) = PERMISSION_EXECUTE;
  }
}

message GreetRequest {
  string name = 1;
}

message GreetResponse {
  string text = 1;
  string caller = 2;
}
"""

ENGINE = '''\
"""acme-greet: greets whoever asks."""

from pydantic import BaseModel

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from mesh.errors import InvalidArgument
from acme_greet._gen.acme.greet.v1 import greet_pb2 as pb


class GreetSettings(BaseModel):
    greeting: str = "Hello"


class GreetEngine(Engine):
    services = (pb.DESCRIPTOR.services_by_name["GreetService"],)
    settings: GreetSettings

    def greet(self, request: pb.GreetRequest, ctx: Context) -> pb.GreetResponse:
        if not request.name:
            raise InvalidArgument("name is empty: say whom to greet")
        return pb.GreetResponse(text=f"{self.settings.greeting}, {request.name}",
                                caller=ctx.caller)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="greet", engine=GreetEngine, settings=GreetSettings)
'''


def _run(*command: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


def build_and_install(tmp_path: Path) -> Path:
    """The acme-greet distribution, generated and installed into a directory of its own;
    returns that directory (what goes on ``PYTHONPATH``)."""
    source = tmp_path / "acme-greet"
    (source / "proto" / "acme" / "greet" / "v1").mkdir(parents=True)
    (source / "src" / "acme_greet").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (source / "proto" / "acme" / "greet" / "v1" / "greet.proto").write_text(PROTO,
                                                                            encoding="utf-8")
    (source / "src" / "acme_greet" / "__init__.py").write_text(ENGINE, encoding="utf-8")
    _run(sys.executable, "-m", "mesh.codegen", "--tree", "proto=src/acme_greet", cwd=source)
    site = tmp_path / "site"
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(source), cwd=tmp_path)
    return site


@dataclass
class OutsideMesh:
    config: MeshConfig
    gateway: Gateway
    receiver: OtlpReceiver
    greet_pb2: Any
    greet_pb2_grpc: Any

    def node(self) -> Any:
        assert self.gateway._view is not None
        return next(a.node for a in self.gateway._view.snapshot.nodes if a.node.id == NODE_ID)

    async def scrape(self) -> str:
        url = self.node().metrics_url
        assert url, "the node announces no metrics address"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        return await asyncio.to_thread(get)


@pytest.fixture
async def outside(mesh_config: Callable[..., MeshConfig], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OutsideMesh]:
    site = await asyncio.to_thread(build_and_install, tmp_path)
    monkeypatch.syspath_prepend(str(site))  # the client side: the author's generated stubs
    greet_pb2 = importlib.import_module("acme_greet._gen.acme.greet.v1.greet_pb2")
    greet_pb2_grpc = importlib.import_module("acme_greet._gen.acme.greet.v1.greet_pb2_grpc")
    config = mesh_config(auth={"enabled": True})
    gateway = Gateway(config)
    await gateway.start()
    async with OtlpReceiver() as receiver:
        node = spawn_node(config, tmp_path / "node.log", extra_env={
            "PYTHONPATH": str(site),
            "REVO_PLUGINS__ONLY": "greet",
            "REVO_NODE__ID": NODE_ID,
            "REVO_ENGINES__GREET__GREETING": "Hi",
            "REVO_TRACING__ENABLED": "true",
            "REVO_TRACING__ENDPOINT": receiver.grpc_endpoint,
            "REVO_TRACING__SERVICE_NAME": "revo-node",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        })
        try:
            def serving() -> bool:
                assert gateway._view is not None
                return NODE_ID in gateway._view.snapshot.service_nodes.get(SERVICE, [])

            await wait_for(serving, 60, f"the node process serving {SERVICE}")
            yield OutsideMesh(config, gateway, receiver, greet_pb2, greet_pb2_grpc)
        finally:
            stop_node(node)
            await gateway.stop(grace=1.0)


async def test_an_engine_from_outside_the_repository_is_served_with_its_settings(
        outside: OutsideMesh) -> None:
    engine = next(e for e in outside.node().engines if e.name == "greet")
    assert (engine.distribution, engine.version) == ("acme-greet", "1.2.0")
    async with MeshClient(outside.gateway.address, token=operator_token(outside.config),
                          timeout=10) as client:
        stub = outside.greet_pb2_grpc.GreetServiceStub(client.channel)
        reply = await stub.Greet(outside.greet_pb2.GreetRequest(name="Ada"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Greet(outside.greet_pb2.GreetRequest())

    assert (reply.text, reply.caller) == ("Hi, Ada", "operator")  # REVO_ENGINES__GREET__...
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "say whom to greet" in (refused.value.details() or "")


async def test_an_outside_engine_is_guarded_by_the_permission_its_proto_declares(
        outside: OutsideMesh) -> None:
    name, password = f"vera-{uuid.uuid4().hex[:8]}", "a long password"
    assert outside.gateway.guard is not None  # auth is on
    await outside.gateway.guard.users.create(name, "viewer", password)
    async with MeshClient(outside.gateway.address, timeout=10) as client:
        await client.login(name, password)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await outside.greet_pb2_grpc.GreetServiceStub(client.channel).Greet(
                outside.greet_pb2.GreetRequest(name="Ada"))

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # viewers cannot execute
    assert "execute" in (caught.value.details() or "")


async def test_an_outside_engine_is_measured_and_traced_without_code_of_its_own(
        outside: OutsideMesh) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with MeshClient(outside.gateway.address, token=operator_token(outside.config),
                          timeout=10) as client:
        await outside.greet_pb2_grpc.GreetServiceStub(client.channel).Greet(
            outside.greet_pb2.GreetRequest(name="Ada"), metadata=(("traceparent", traceparent),))

    scraped: list[str] = []

    async def greet_counted() -> bool:  # the node process counts the call as it answers it
        scraped[:] = (await outside.scrape()).splitlines()
        return any(line.startswith("revo_engine_calls_total{") and 'engine="greet"' in line
                   for line in scraped)

    await wait_for(greet_counted, 20, "the greet engine's calls on the node's /metrics")
    calls = [line for line in scraped
             if line.startswith("revo_engine_calls_total{") and 'engine="greet"' in line]
    assert len(calls) == 1, calls
    assert 'method="Greet"' in calls[0]
    assert calls[0].endswith(" 1.0")
    health = [line for line in scraped
              if line.startswith("engine_health_status{") and 'engine="greet"' in line]
    assert health == [line for line in health if line.endswith(" 1.0")] != []

    await wait_for(lambda: any(s.name == "greet/Greet" for s in outside.receiver.trace(trace_id)),
                   20, "the node's span of the engine call")
    engine_span = next(s for s in outside.receiver.trace(trace_id) if s.name == "greet/Greet")
    assert engine_span.service == "revo-node"
    assert engine_span.attributes["revo.engine.name"] == "greet"
