"""An engine calling another engine's method as its own caller (``mesh.calls.MeshCalls``,
and the generated stubs on a ``MeshChannel``): the callee sees that caller, the caller's
role must grant the method's permission, and the caller's deadline bounds the call.
Real gateway, node and nats-server; auth on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.calls import MeshCalls, MeshChannel
from mesh.errors import DeadlineExceeded, InvalidArgument, PermissionDenied, RpcError
from mesh.testing import MeshHarness, spawn_node, wait_for
from mesh.transport.connection import connect
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_auth import AUTH, remove_users_since

ECHO = "/revo.echo.v1.EchoService/Echo"


@pytest.fixture
async def calls(mesh_harness) -> AsyncIterator[MeshCalls]:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(plugins={"only": ["echo"]}, auth=AUTH)
    nc = await connect(mesh.config.nats, "test-mesh-calls")
    calls = MeshCalls(nc, mesh.config)
    await calls.start()
    assert calls.route(ECHO) is not None  # the node announced itself before the harness returned
    try:
        yield calls
    finally:
        await calls.stop()
        await nc.close()
        await remove_users_since(mesh, since)


async def _echo(calls: MeshCalls, caller: str, role: str) -> echo_pb2.EchoResponse:
    reply = await calls.call(ECHO, echo_pb2.EchoRequest(payload=b"hi").SerializeToString(),
                             caller=caller, role=role, request_id="req-1", timeout=5.0)
    return echo_pb2.EchoResponse.FromString(reply)


async def test_the_callee_sees_the_original_caller_and_role(calls: MeshCalls) -> None:
    reply = await _echo(calls, "ada", "analyst")
    assert (reply.payload, reply.caller, reply.role) == (b"hi", "ada", "analyst")


async def test_the_original_callers_role_must_grant_the_permission(calls: MeshCalls) -> None:
    with pytest.raises(RpcError) as refused:
        await _echo(calls, "vic", "viewer")  # Echo needs EXECUTE; a viewer only reads
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "execute" in refused.value.message.lower()
    assert "viewer" in refused.value.message


async def test_a_method_nobody_serves_is_unavailable(calls: MeshCalls) -> None:
    with pytest.raises(RpcError) as missing:
        await calls.call("/revo.nothing.v1.Nothing/Never", b"", caller="ada", role="admin",
                         request_id="req-2", timeout=1.0)
    assert missing.value.code == grpc.StatusCode.UNAVAILABLE
    assert "/revo.nothing.v1.Nothing/Never" in missing.value.message


async def test_a_call_whose_node_dies_fails_unavailable_before_its_deadline(
        mesh_config: Any, tmp_path: Path) -> None:
    config = mesh_config(gateway={"accept_timeout_s": 1.0})
    node = spawn_node(config, tmp_path / "node.log",
                      extra_env={"REVO_PLUGINS__ONLY": "echo", "REVO_NODE__ID": "doomed"})
    nc = await connect(config.nats, "test-mesh-calls-gone")
    calls = MeshCalls(nc, config)
    await calls.start()
    try:
        await wait_for(lambda: calls.route(ECHO) is not None, 30, "the node serving echo")
        slow = asyncio.create_task(calls.call(  # accepted, then its node is killed
            ECHO, echo_pb2.EchoRequest(payload=b"x", delay_ms=60_000).SerializeToString(),
            caller="ada", role="admin", request_id="req-3", timeout=60.0))
        await wait_for(lambda: calls.requester.accepted_by("doomed") == 1, 30,
                       "the node to accept the call")
        # the guarantee is about time here: an accepted call outlives the accept timeout
        await asyncio.sleep(config.gateway.accept_timeout_s * 1.5)
        assert not slow.done()
        assert calls.requester.accepted_by("doomed") == 1
        node.send_signal(signal.SIGKILL)
        with pytest.raises(RpcError) as gone:
            await asyncio.wait_for(slow, 50)  # not the 60 s deadline
        assert gone.value.code == grpc.StatusCode.UNAVAILABLE
        assert "doomed stopped while serving the call" in gone.value.message
    finally:
        await calls.stop()
        await nc.close()
        if node.poll() is None:
            node.kill()
        node.wait(10)


# -- typed calls: the generated stub on a MeshChannel ------------------------------------

def _channel(calls: MeshCalls, caller: str = "ada", role: str = "analyst",
             seconds: float = 10.0, traceparent: str = "") -> MeshChannel:
    return MeshChannel(calls, caller=caller, role=role, request_id="req-typed",
                       deadline=time.monotonic() + seconds, traceparent=traceparent)


async def test_a_generated_stub_on_the_channel_calls_as_the_original_caller(
        calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls))

    reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"typed"), timeout=5)

    assert isinstance(reply, echo_pb2.EchoResponse)
    assert (reply.payload, reply.caller, reply.role) == (b"typed", "ada", "analyst")


async def test_an_idempotency_key_in_a_calls_metadata_reaches_the_callee(
        calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls))

    keyed = await stub.Echo(echo_pb2.EchoRequest(payload=b"k"), timeout=5,
                            metadata=(("idempotency-key", "run-7/remember"),))
    plain = await stub.Echo(echo_pb2.EchoRequest(payload=b"k"), timeout=5)

    assert keyed.idempotency_key == "run-7/remember"
    assert plain.idempotency_key == "", "a key is per call, not per channel"


async def test_a_server_stream_through_the_channel_yields_typed_messages(
        calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls))

    indexes = [m.index async for m in stub.Count(echo_pb2.CountRequest(count=5), timeout=5)]

    assert indexes == [0, 1, 2, 3, 4]


async def test_the_channel_refuses_a_role_without_the_permission(calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls, caller="vic", role="viewer"))

    with pytest.raises(PermissionDenied) as refused:
        await stub.Echo(echo_pb2.EchoRequest(payload=b"x"), timeout=5)

    assert "viewer" in refused.value.message


async def test_the_callees_error_comes_back_as_its_own_class(calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls))

    with pytest.raises(InvalidArgument) as invalid:
        await stub.Echo(echo_pb2.EchoRequest(delay_ms=60_001), timeout=5)

    assert "delay_ms must be at most 60000" in invalid.value.message


async def test_the_callers_deadline_bounds_a_call_with_a_longer_timeout(
        calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls, seconds=0.5))
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded):
        await stub.Echo(echo_pb2.EchoRequest(delay_ms=30_000), timeout=30)

    assert time.monotonic() - started < 30  # the caller's 0.5 s, not the stub's 30 s


async def test_a_call_after_the_callers_deadline_is_not_sent(calls: MeshCalls) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(_channel(calls, seconds=-1))

    with pytest.raises(DeadlineExceeded):
        await stub.Echo(echo_pb2.EchoRequest(payload=b"late"), timeout=5)


async def test_the_channel_says_whether_a_stubs_method_is_served(calls: MeshCalls) -> None:
    channel = _channel(calls)

    assert channel.serves(echo_pb2_grpc.EchoServiceStub(channel).Echo)
    assert not channel.serves(channel.unary_unary("/revo.nothing.v1.Nothing/Never"))
