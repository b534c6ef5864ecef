"""Calls through the gateway to an engine and back, and every way a call can fail."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.errors import Unavailable
from mesh.transport.connection import connect
from mesh.transport.rpc import Requester
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "/revo.echo.v1.EchoService/Echo"
ONLY_ECHO = {"only": ["echo"]}


@pytest.fixture(params=["nats", "colocated"])
async def mesh(request, mesh_harness):
    return await mesh_harness(plugins=ONLY_ECHO, colocate=request.param == "colocated",
                              gateway={"max_message_bytes": 64 * 1024})


async def test_echo_round_trip(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"hello mesh"), timeout=5)
    assert reply.payload == b"hello mesh"
    expected_node = mesh.gateway.node.id if mesh.gateway.node else mesh.nodes[0].id
    assert reply.node_id == expected_node


async def test_the_callers_idempotency_key_reaches_the_engine(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    keyed = await stub.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5,
                            metadata=(("idempotency-key", "order-42/step-1"),))
    plain = await stub.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5)
    assert keyed.idempotency_key == "order-42/step-1"
    assert plain.idempotency_key == ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5,
                        metadata=(("idempotency-key", "has a space"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency key" in str(caught.value.details())


async def test_concurrent_streams_each_arrive_complete(mesh):
    """Streams of an actor engine end after their last message, even when another call's
    outcome is being delivered as they end (their end once overtook their messages)."""
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)

    async def count(n: int) -> list[int]:
        return [m.index async for m in stub.Count(echo_pb2.CountRequest(count=n), timeout=30)]

    for _ in range(10):  # bounded: 10 rounds of 12 concurrent streams
        counts = [1 + i % 3 for i in range(12)]
        got = await asyncio.gather(*(count(n) for n in counts))
        assert got == [list(range(n)) for n in counts]


async def test_request_bytes_reach_the_engine_unchanged(mesh):
    raw = echo_pb2.EchoRequest(payload=bytes(range(256)) * 10).SerializeToString()
    reply_bytes = await mesh.channel.unary_unary(ECHO)(raw, timeout=5)
    assert echo_pb2.EchoResponse.FromString(reply_bytes).payload == bytes(range(256)) * 10


async def test_malformed_request_is_invalid_argument(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.channel.unary_unary(ECHO)(b"\xff\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "revo.echo.v1.EchoRequest" in str(caught.value.details())


async def test_engine_validation_error_keeps_its_code(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(delay_ms=10**6), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "delay_ms" in str(caught.value.details())


async def test_unknown_service_is_unimplemented(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.channel.unary_unary("/acme.nope.v1.NopeService/Do")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "revo.echo.v1.EchoService" in str(caught.value.details())  # says what is served


async def test_unknown_method_of_known_service_is_unimplemented(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.channel.unary_unary("/revo.echo.v1.EchoService/Shout")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Echo, Count, Stats" in str(caught.value.details())


async def test_deadline_is_propagated_and_exceeded(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(delay_ms=5000), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the actor was released by the deadline: the next call is served at once
    reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"after"), timeout=2)
    assert reply.payload == b"after"


async def test_oversized_request_is_resource_exhausted(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(payload=b"x" * 100_000), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in str(caught.value.details())


async def test_stream_arrives_complete_and_in_order(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    # far more messages than the flow-control window (32): credit must keep coming back
    indexes = [r.index async for r in stub.Count(echo_pb2.CountRequest(count=500), timeout=20)]
    assert indexes == list(range(500))


async def test_stream_cancelled_by_the_client_frees_the_actor(mesh_harness):
    mesh = await mesh_harness(plugins=ONLY_ECHO, engines={"echo": {"pool_size": 1}})
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    call = stub.Count(echo_pb2.CountRequest(count=100_000, interval_ms=20), timeout=30)
    received = []
    async for reply in call:
        received.append(reply.index)
        if len(received) == 3:
            call.cancel()
            break
    assert received == [0, 1, 2]
    # the only actor stops streaming and serves the next call quickly
    reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"next"), timeout=3)
    assert reply.payload == b"next"


async def test_stream_errors_keep_their_code(mesh):
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Count(echo_pb2.CountRequest(count=0), timeout=5):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "count must be between" in str(caught.value.details())


async def test_subject_without_responders_is_unavailable(mesh_config):
    config = mesh_config()
    nc = await connect(config.nats, "test")
    try:
        requester = Requester(nc)
        await requester.start()
        with pytest.raises(Unavailable) as caught:
            await requester.call("revo.rpc.acme.nope.v1.NopeService.Do", b"", 2.0, {})
        assert "no node serves" in caught.value.message
    finally:
        await nc.close()


async def test_service_whose_nodes_all_left_is_unavailable(mesh_harness):
    mesh = await mesh_harness(plugins=ONLY_ECHO)
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    assert (await stub.Echo(echo_pb2.EchoRequest(payload=b"1"), timeout=5)).payload == b"1"
    await mesh.nodes[0].stop()
    mesh.nodes.clear()

    async def gone() -> bool:
        try:
            await stub.Echo(echo_pb2.EchoRequest(), timeout=2)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False

    from mesh.testing import wait_for

    await wait_for(gone, 10, "UNAVAILABLE once the only node left")


async def test_message_beyond_what_nats_carries_is_refused_and_gateway_keeps_serving(
        mesh_harness, nats_server):
    # the gateway's own limit is set above nats-server's max_payload: the gateway clamps it
    mesh = await mesh_harness(plugins=ONLY_ECHO,
                              gateway={"max_message_bytes": 2 * nats_server.max_payload})
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(payload=b"x" * (nats_server.max_payload + 10)),
                        timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"still here"), timeout=5)
    assert reply.payload == b"still here"
