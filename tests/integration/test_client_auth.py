"""``MeshClient`` with auth on: sign-in, tokens on unary and streaming calls, sign-out."""

from __future__ import annotations

import grpc
import pytest

from mesh.auth.tokens import operator_token
from mesh.client import MeshClient
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc


async def test_token_goes_with_unary_and_streaming_calls(mesh_harness) -> None:
    mesh = await mesh_harness(auth={"enabled": True}, plugins={"only": ["echo"]})
    async with MeshClient(mesh.target, token=operator_token(mesh.config), timeout=5) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))
        assert (reply.caller, reply.role) == ("operator", "admin")
        streamed = [r.index async for r in echo.Count(echo_pb2.CountRequest(count=3))]
        assert streamed == [0, 1, 2]


async def test_login_refresh_logout(mesh_harness) -> None:
    mesh = await mesh_harness(auth={"enabled": True}, plugins={"only": ["echo"]})
    await mesh.gateway.guard.users.create("carol", "analyst", "carol-password")
    async with MeshClient(mesh.target, timeout=5) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

        await client.login("carol", "carol-password")
        assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))).caller == "carol"
        first = client.token
        await client.refresh()
        assert client.token != first
        assert client.token
        assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))).caller == "carol"

        kept = client.token
        await client.logout()
        client.token = kept  # the revoked token is refused
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))
        assert revoked.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (revoked.value.details() or "")


async def test_user_management_says_auth_is_off(mesh_harness) -> None:
    from mesh.v1 import auth_pb2, auth_pb2_grpc

    mesh = await mesh_harness(plugins={"only": ["echo"]})  # auth off
    users = auth_pb2_grpc.UserServiceStub(mesh.channel)
    for call in (users.ListUsers(auth_pb2.ListUsersRequest()),
                 users.DisableUser(auth_pb2.DisableUserRequest(username="bob"))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "auth is off" in (refused.value.details() or "")


def test_a_node_without_nats_exits_with_the_reason(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, REVO_HOME=str(tmp_path), REVO_NATS__URL="nats://127.0.0.1:1",
               REVO_NATS__CONNECT_TIMEOUT_S="1", REVO_PLUGINS__ONLY="echo")
    done = subprocess.run([sys.executable, "-m", "mesh", "node"], env=env, timeout=30,
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "cannot connect to NATS" in done.stderr
