"""Stock gRPC tooling sees the mesh: health, reflection, and the mesh's own MeshService."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from mesh.client import MeshClient
from mesh.testing import wait_for
from mesh.v1 import mesh_pb2
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ECHO_SERVICE = "revo.echo.v1.EchoService"


async def test_health_reports_each_served_service(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo"]})
    health = health_pb2_grpc.HealthStub(mesh.channel)
    overall = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    echo = await health.Check(health_pb2.HealthCheckRequest(service=ECHO_SERVICE), timeout=5)
    assert echo.status == health_pb2.HealthCheckResponse.SERVING

    await mesh.nodes[0].stop()
    mesh.nodes.clear()

    async def not_serving() -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=ECHO_SERVICE),
                                   timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

    await wait_for(not_serving, 10, "echo NOT_SERVING after its node left")


def _reflect_and_call(target: str) -> tuple[list[str], bytes]:
    """What a stock tool (grpcurl-like) does: list services, resolve types, call a method."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(ECHO_SERVICE)
        method = service.FindMethodByName("Echo")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(f"/{ECHO_SERVICE}/Echo",
                                   request_serializer=request_type.SerializeToString,
                                   response_deserializer=response_type.FromString)
        # the request from JSON by field name, as grpcurl's -d does
        request = json_format.ParseDict(
            {"payload": base64.b64encode(b"reflected").decode()}, request_type())
        reply = call(request, timeout=5)
        return services, reply.payload


async def test_reflection_lists_and_describes_every_service(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo"]})
    services, payload = await asyncio.to_thread(_reflect_and_call, mesh.target)
    assert {ECHO_SERVICE, "revo.mesh.v1.MeshService", "grpc.health.v1.Health"} <= set(services)
    assert payload == b"reflected"


async def test_mesh_service_lists_nodes_engines_and_methods(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo"]}, nodes=2)
    await mesh.wait_for_service(ECHO_SERVICE, nodes=2)
    async with MeshClient(mesh.target, timeout=5) as client:
        nodes = await client.list_nodes()
        services = {s.name: s for s in await client.list_services()}
    assert sorted(n.id for n in nodes) == sorted(n.id for n in mesh.nodes)
    [engine] = [e for e in nodes[0].engines if e.name == "echo"]
    assert (engine.name, engine.status, engine.version) == (
        "echo", mesh_pb2.ENGINE_STATUS_RUNNING, "0.1.0")
    assert engine.actors_alive == engine.pool_size == 2
    assert list(engine.services) == [ECHO_SERVICE]
    echo = services[ECHO_SERVICE]
    assert echo.engine == "echo"
    assert sorted(echo.node_ids) == sorted(n.id for n in mesh.nodes)
    assert [(m.name, m.server_streaming) for m in echo.methods] == [
        ("Echo", False), ("Count", True), ("Stats", False)]


async def test_client_applies_default_timeout_and_metadata(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo"]})
    async with MeshClient(mesh.target, timeout=0.2, metadata=[("x-request-id", "abc")]) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # no timeout given: 0.2 s applies
            await echo.Echo(echo_pb2.EchoRequest(delay_ms=3000))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"ok"), timeout=5)
        assert reply.payload == b"ok"
        assert (await client.mesh.ListNodes(mesh_pb2.ListNodesRequest())).nodes


async def test_a_node_leaves_the_registry_even_when_a_heartbeat_swallows_its_cancel(
        nats_server):
    """nats-py (on Python 3.11) can turn a cancel that lands inside a request into its own
    TimeoutError; the heartbeat loop catches that and must still end when the node stops
    (it once looped on, and the node's stop waited forever)."""
    import nats
    import nats.errors

    from mesh._gen.revo.mesh.v1 import registry_pb2
    from mesh.registry import RegistryWriter

    nc = await nats.connect(nats_server.url)
    writer = RegistryWriter(nc, "swallower", 0.01,
                            lambda: registry_pb2.NodeAnnouncement())
    in_request = asyncio.Event()
    swallowed = 0

    async def publish() -> None:
        nonlocal swallowed
        if swallowed:  # later beats are quick, so a loop that missed its stop spins on
            return
        in_request.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed += 1
            raise nats.errors.TimeoutError from None

    try:
        await writer.start()
        writer.publish = publish  # type: ignore[method-assign]
        await asyncio.wait_for(in_request.wait(), 10)
        stopping = asyncio.create_task(writer.stop())
        await asyncio.wait([stopping], timeout=10)
        assert swallowed == 1  # the cancel landed in the request, and was swallowed there
        assert stopping.done(), "the heartbeat loop went on after its cancel was swallowed"
    finally:
        if writer._task is not None:
            writer._task.cancel()  # a second cancel lands in the sleep
        await nc.close()
