"""A node's grpc.health.v1 endpoint (node.health_address), as Kubernetes probes ask it:
readiness follows NATS and draining, liveness stays up through both."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer
from mesh.errors import ConfigError
from mesh.runtime.health import LIVENESS, READINESS
from mesh.runtime.node import Node
from mesh.testing import wait_for
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "revo.echo.v1.EchoService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Probe:
    """What a kubelet's ``grpc:`` probe asks, by service name."""

    def __init__(self, node: Node) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{node.health.port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def status(self, service: str) -> int:
        reply = await self.stub.Check(health_pb2.HealthCheckRequest(service=service),
                                      timeout=5)
        return int(reply.status)

    async def is_(self, service: str, status: int) -> bool:
        return await self.status(service) == status


def node_config(nats_url: str, tmp_path, **node: object):
    return load_config(environ={}, read_file=False, home=str(tmp_path / "home"),
                       nats={"url": nats_url}, plugins={"only": ["echo"]},
                       auth={"enabled": False, "audit": {"enabled": False}},
                       node={"heartbeat_s": 0.25, "metrics_address": "",
                             "health_address": "127.0.0.1:0", **node})


async def test_readiness_follows_nats_while_liveness_stays_up(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    node = Node(node_config(server.url, tmp_path))
    try:
        await node.start()
        probe = Probe(node)
        for service in (LIVENESS, ECHO, READINESS):
            assert await probe.status(service) == SERVING, service

        port = server.port
        server.kill()
        await wait_for(lambda: probe.is_(READINESS, NOT_SERVING), 10, "readiness to drop")
        assert await probe.status(ECHO) == NOT_SERVING
        assert await probe.status(LIVENESS) == SERVING  # a restart would not bring NATS back

        server = NatsServer(tmp_path / "nats", port=port).start()
        await wait_for(lambda: probe.is_(READINESS, SERVING), 15, "readiness to come back")
        assert await probe.status(ECHO) == SERVING
        await probe.channel.close(None)
    finally:
        await node.stop()
        server.stop()


async def test_a_draining_node_is_not_ready_and_still_alive(mesh_harness, mesh_config):
    config = mesh_config(plugins={"only": ["echo"]},
                         node={"health_address": "127.0.0.1:0", "shutdown_grace_s": 60})
    node = Node(config)
    await node.start()
    stopping: asyncio.Task[None] | None = None
    try:
        mesh = await mesh_harness(nodes=0, wait=False, plugins={"only": ["echo"]})
        await mesh.wait_for_service(ECHO)
        probe = Probe(node)
        assert await probe.status(READINESS) == SERVING
        # a stream in flight keeps the node draining (up to its 60 s grace) until cancelled
        call = echo_pb2_grpc.EchoServiceStub(mesh.channel).Count(
            echo_pb2.CountRequest(count=2, interval_ms=60_000), timeout=90)
        assert (await call.read()).index == 0
        stopping = asyncio.ensure_future(node.stop())

        await wait_for(lambda: probe.is_(READINESS, NOT_SERVING), 10, "readiness to drop")
        assert await probe.status(ECHO) == NOT_SERVING
        assert await probe.status(LIVENESS) == SERVING
        assert not stopping.done()

        call.cancel()  # the node's stream is cancelled, its drain ends, and it stops
        await asyncio.wait_for(stopping, 30)
        with pytest.raises(grpc.aio.AioRpcError):
            await probe.status(LIVENESS)  # gone once stopped, not before
        await probe.channel.close(None)
    finally:
        if stopping is None:
            await node.stop()


def test_a_bad_health_address_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"node\.health_address must be host:port"):
        Node(node_config("nats://127.0.0.1:1", tmp_path, health_address="8081"))
