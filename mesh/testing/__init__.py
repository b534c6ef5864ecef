"""A pytest plugin for engine authors (and the mesh's own tests): real servers, real nodes.

Installed with ``revo-mesh`` (entry point ``pytest11``), so an engine's test suite gets:

``nats_server``
    a real nats-server with JetStream on free loopback ports, one per test session.
``mesh_config``
    a factory of :class:`~mesh.config.MeshConfig` pointing at that server, with a private
    ``home``, a gateway on a free port and fast heartbeats; keyword arguments override
    sections (``mesh_config(engines={"echo": {"pool_size": 1}})``).
``mesh_harness``
    an async factory that starts nodes and a gateway in the test's own process::

        async def test_echo(mesh_harness):
            mesh = await mesh_harness(plugins={"only": ["echo"]})
            stub = EchoServiceStub(mesh.channel)
            assert (await stub.Echo(EchoRequest(payload=b"x"))).payload == b"x"

Processes that a test must kill (``revo node`` under SIGKILL) are started with
:func:`spawn_node`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.config import MeshConfig, load_config
from mesh.embedded.nats_server import NatsServer
from mesh.embedded.processes import spawn, stop_process
from mesh.gateway import Gateway
from mesh.runtime.node import Node

__all__ = ["MeshHarness", "spawn_node", "stop_node", "wait_for"]



def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def mesh_config(nats_server: NatsServer, tmp_path: Path) -> Callable[..., MeshConfig]:
    def make(**sections: Any) -> MeshConfig:
        base: dict[str, Any] = {
            "home": str(tmp_path / "home"),
            "nats": {"url": nats_server.url},
            # metrics on, as by default, on free ports (9464 may be taken)
            "gateway": {"address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0",
                        "http_address": "127.0.0.1:0"},
            "node": {"heartbeat_s": 0.25, "shutdown_grace_s": 5.0,
                     "restart_backoff_s": 0.05},
            # off unless a test asks: auth=dict(enabled=True) (see tests/integration/auth)
            "auth": {"enabled": False, "audit": {"enabled": False}},
        }
        return load_config(environ={}, read_file=False, **_merge(base, sections))

    return make


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class MeshHarness:
    """Nodes and a gateway running in the test's process, and a channel to the gateway."""

    config: MeshConfig
    gateway: Gateway
    nodes: list[Node]
    channel: grpc.aio.Channel

    @property
    def target(self) -> str:
        return self.gateway.address

    async def wait_for_service(self, service: str, nodes: int = 1, timeout: float = 10.0) -> None:
        def ready() -> bool:
            view = self.gateway._view
            return view is not None and len(view.snapshot.service_nodes.get(service, [])) >= nodes

        await wait_for(ready, timeout, f"{nodes} node(s) serving {service}")


@pytest.fixture
async def mesh_harness(
    mesh_config: Callable[..., MeshConfig],
) -> AsyncIterator[Callable[..., Awaitable[MeshHarness]]]:
    harnesses: list[MeshHarness] = []

    async def start(*, nodes: int = 1, colocate: bool = False, wait: bool = True,
                    **sections: Any) -> MeshHarness:
        config = mesh_config(**sections)
        started = []
        for _ in range(0 if colocate else nodes):
            node = Node(config)
            await node.start()
            started.append(node)
        gateway = Gateway(config, node=Node(config) if colocate else None)
        await gateway.start()
        harness = MeshHarness(config, gateway, started,
                              grpc.aio.insecure_channel(gateway.address))
        harnesses.append(harness)
        if wait:
            served = {b.service for n in [*started, *( [gateway.node] if gateway.node else [])]
                      for _, b in n.routes.values()}
            for service in served:
                await harness.wait_for_service(service, nodes=1)
        return harness

    yield start
    # Stop everything even when a part fails to stop, then fail the test with what failed:
    # a node that cannot shut down cleanly is a bug the test must report, not hide.
    errors: list[Exception] = []
    for harness in reversed(harnesses):
        stops: list[Awaitable[None]] = [harness.channel.close(None),
                                        harness.gateway.stop(grace=1.0)]
        for stopping in stops:
            try:
                await stopping
            except Exception as exc:
                errors.append(exc)
        for node in harness.nodes:
            try:
                await node.stop()
            except Exception as exc:
                errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup("mesh_harness: stopping the mesh failed", errors)


def spawn_node(config: MeshConfig, log_file: Path, *, extra_env: dict[str, str] | None = None,
               command: str = "node") -> subprocess.Popen[bytes]:
    """Start ``revo node`` (or another ``revo`` command) as a child process for ``config``."""
    env = dict(os.environ)
    env.update({
        "REVO_HOME": str(config.home),
        "REVO_NATS__URL": config.nats.url,
        "REVO_NODE__HEARTBEAT_S": str(config.node.heartbeat_s),
        "REVO_NODE__SHUTDOWN_GRACE_S": str(config.node.shutdown_grace_s),
        "REVO_NODE__METRICS_ADDRESS": config.node.metrics_address,
        "REVO_GATEWAY__METRICS_ADDRESS": config.gateway.metrics_address,
        "REVO_GATEWAY__HTTP_ADDRESS": config.gateway.http_address,
        "REVO_AUTH__ENABLED": str(config.auth.enabled).lower(),
        "REVO_AUTH__AUDIT__ENABLED": str(config.auth.audit.enabled).lower(),
    })
    env.update(extra_env or {})
    return spawn([sys.executable, "-m", "mesh", command], log_file=log_file, env=env)


def stop_node(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM a spawned node and return its exit code."""
    return stop_process(process, timeout)
