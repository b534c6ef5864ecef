"""Every role against every permission a method can declare, through a real gateway.

The test engine ``guarded`` (tests/plugins/guarded.py) has one method per permission and
one, ``Undeclared``, with no declaration at all, which only ``manage`` may call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh.testing import MeshHarness
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_auth import (
    AUTH,
    add_user,
    bearer,
    login,
    refused,
    remove_users_since,
)
from tests.plugins import guarded

PLUGINS = {"only": ["guarded", "echo"], "extra": {"guarded": "tests.plugins.guarded"}}

NEEDS = {"Read": "read", "Write": "write", "Execute": "execute", "Manage": "manage",
         "Public": "public", "Undeclared": "manage"}
"""The permission each method of ``guarded`` needs."""

GRANTS = {
    "admin": {"public", "read", "write", "execute", "manage"},
    "developer": {"public", "read", "write", "execute"},
    "analyst": {"public", "read", "execute"},
    "viewer": {"public", "read"},
}


@pytest.fixture
async def mesh(request, mesh_harness) -> AsyncIterator[MeshHarness]:
    """Engines on a node reached over NATS; ``colocated`` (indirect param): in the gateway."""
    colocate = getattr(request, "param", "nats") == "colocated"
    since = time.time()
    harness = await mesh_harness(plugins=PLUGINS, auth=AUTH, colocate=colocate)
    await harness.wait_for_service(guarded.SERVICE)
    yield harness
    await remove_users_since(harness, since)


def _call(mesh: MeshHarness, name: str) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    """Method ``name`` of the guarded service, as a callable on the gateway's channel."""
    return mesh.channel.unary_unary(
        guarded.path(name), request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=guarded.GuardedResponse.FromString)


@pytest.mark.parametrize("role", sorted(GRANTS))
async def test_each_role_calls_exactly_what_it_is_granted(mesh: MeshHarness, role: str) -> None:
    user = await add_user(mesh, role)
    metadata = bearer((await login(mesh.channel, user)).access_token)
    wrong = []
    for method, needs in NEEDS.items():
        allowed = needs in GRANTS[role]
        try:
            reply = await _call(mesh, method)(guarded.GuardedRequest(), metadata=metadata,
                                                   timeout=5)
        except grpc.aio.AioRpcError as error:
            details = str(error.details())
            if allowed:
                wrong.append(f"{role} {method}: refused {error.code().name} {details!r}")
            elif error.code() != grpc.StatusCode.PERMISSION_DENIED or (
                    f"'{needs}'" not in details or f"'{role}'" not in details
                    or guarded.path(method) not in details):
                wrong.append(f"{role} {method}: {error.code().name} {details!r}, expected "
                             f"PERMISSION_DENIED naming '{needs}'")
            continue
        if not allowed:
            wrong.append(f"{role} {method}: let in, but the role lacks '{needs}'")
        elif (reply.method, reply.caller, reply.role) != (guarded.path(method), user, role):
            wrong.append(f"{role} {method}: the engine saw {reply.method!r} "
                         f"{reply.caller!r} {reply.role!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("mesh", ["nats", "colocated"], indirect=True)
async def test_public_method_needs_no_token_and_others_do(mesh: MeshHarness) -> None:
    reply = await _call(mesh, "Public")(guarded.GuardedRequest(), timeout=5)
    assert (reply.caller, reply.role) == ("", "")
    for method in NEEDS.keys() - {"Public"}:
        error = await refused(_call(mesh, method)(guarded.GuardedRequest(), timeout=5))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert "needs a signed-in caller" in str(error.details()), method


async def test_public_method_with_a_token_sees_the_caller(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "viewer")
    metadata = bearer((await login(mesh.channel, user)).access_token)
    reply = await _call(mesh, "Public")(guarded.GuardedRequest(), metadata=metadata,
                                             timeout=5)
    assert (reply.caller, reply.role) == (user, "viewer")


async def test_streams_are_guarded_like_unary_calls(mesh: MeshHarness) -> None:
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    request = echo_pb2.CountRequest(count=3)

    async def count(metadata: tuple[tuple[str, str], ...] = ()) -> list[int]:
        return [m.index async for m in echo.Count(request, metadata=metadata, timeout=5)]

    error = await refused(count())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    viewer = bearer((await login(mesh.channel, await add_user(mesh, "viewer"))).access_token)
    error = await refused(count(viewer))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'execute'" in str(error.details())
    # Stats needs only read
    stats = await echo.Stats(echo_pb2.StatsRequest(), metadata=viewer, timeout=5)
    assert stats.node_id
    analyst = bearer((await login(mesh.channel, await add_user(mesh, "analyst"))).access_token)
    assert await count(analyst) == [0, 1, 2]
