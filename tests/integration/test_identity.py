"""The caller's identity from the gateway to the engine, and what a client that reaches
NATS directly can (not) do with it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import nats
import pytest

from mesh.auth.identity import IdentitySeal
from mesh.testing import MeshHarness
from mesh.transport import headers as h
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

ECHO_PATH = "/revo.echo.v1.EchoService/Echo"
ECHO_SUBJECT = "revo.rpc.revo.echo.v1.EchoService.Echo"
COUNT_SUBJECT = "revo.rpc.revo.echo.v1.EchoService.Count"
ONE_ACTOR = {"echo": {"pool_size": 1}}  # so Stats counts every call the engine ran
UNAUTHENTICATED = str(grpc.StatusCode.UNAUTHENTICATED.value[0])


@pytest.fixture
async def mesh(request, mesh_harness) -> AsyncIterator[MeshHarness]:
    """Auth on; echo on a node reached over NATS, or ``colocated`` (indirect param)."""
    colocate = getattr(request, "param", "nats") == "colocated"
    since = time.time()
    harness = await mesh_harness(plugins={"only": ["echo"]}, auth=AUTH, engines=ONE_ACTOR,
                                 colocate=colocate)
    yield harness
    await remove_users_since(harness, since)


@pytest.mark.parametrize("mesh", ["nats", "colocated"], indirect=True)
async def test_engine_sees_the_caller_and_role(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "analyst")
    tokens = await login(mesh.channel, user)
    reply = await echo_pb2_grpc.EchoServiceStub(mesh.channel).Echo(
        echo_pb2.EchoRequest(payload=b"who"), metadata=bearer(tokens.access_token), timeout=5)
    assert (reply.payload, reply.caller, reply.role) == (b"who", user, "analyst")


async def _answered(mesh: MeshHarness, metadata: tuple[tuple[str, str]]) -> int:
    stats = await echo_pb2_grpc.EchoServiceStub(mesh.channel).Stats(
        echo_pb2.StatsRequest(), metadata=metadata, timeout=5)
    return stats.answered


async def test_calls_straight_to_nats_need_a_gateways_seal(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    assert mesh.gateway.guard.seal is not None
    admin = bearer((await login(mesh.channel, await add_user(mesh, "admin"))).access_token)
    genuine = mesh.gateway.guard.seal
    soon = int((time.time() + 30) * 1000)
    claim = {h.CALLER: "admin", h.ROLE: "admin", h.TIMEOUT_MS: "5000"}
    forgeries = {
        "no seal": claim,
        "made-up seal": {**claim, h.IDENTITY: f"{soon}.bm90LWEtbWFj"},
        "seal not a number": {**claim, h.IDENTITY: "forever.bm90LWEtbWFj"},
        "sealed with another key": {
            h.TIMEOUT_MS: "5000",
            **IdentitySeal(b"m" * 48).headers("admin", "admin", ECHO_PATH, soon)},
        "genuine seal, other caller": {
            **genuine.headers("viewer-1", "viewer", ECHO_PATH, soon),
            h.CALLER: "admin", h.ROLE: "admin"},
        "genuine seal, expired": {
            h.TIMEOUT_MS: "5000",
            **genuine.headers("admin", "admin", ECHO_PATH,
                              int((time.time() - 1) * 1000))},
    }
    request = echo_pb2.EchoRequest(payload=b"let me in").SerializeToString()
    nc = await nats.connect(mesh.config.nats.url)
    try:
        wrong, messages = [], {}
        for case, headers in forgeries.items():
            for subject in (ECHO_SUBJECT, COUNT_SUBJECT):
                reply = await nc.request(subject, request if subject == ECHO_SUBJECT else
                                         echo_pb2.CountRequest(count=1).SerializeToString(),
                                         timeout=5, headers=headers)
                status = (reply.headers or {}).get(h.STATUS)
                if subject == ECHO_SUBJECT:  # seals are made for Echo's path
                    messages[case] = (reply.headers or {}).get(h.MESSAGE, "")
                if status != UNAUTHENTICATED:
                    wrong.append(f"{case} on {subject}: status {status!r}, "
                                 f"payload {reply.data[:40]!r}")
        assert not wrong, "forged identities were not refused:\n" + "\n".join(wrong)
        assert "only through a gateway" in messages["no seal"]
        assert "not sealed by a gateway" in messages["sealed with another key"]
        assert "expired" in messages["genuine seal, expired"]
    finally:
        await nc.close()
    assert await _answered(mesh, admin) == 0, "the engine ran a call with a forged identity"
    # the counter counts: a call through the gateway runs
    await echo_pb2_grpc.EchoServiceStub(mesh.channel).Echo(echo_pb2.EchoRequest(),
                                                           metadata=admin, timeout=5)
    assert await _answered(mesh, admin) == 1


async def test_identity_headers_are_ignored_when_auth_is_off(mesh_harness) -> None:
    mesh = await mesh_harness(plugins={"only": ["echo"]})  # auth off
    forged = {h.CALLER: "mallory", h.ROLE: "admin", h.IDENTITY: "99999999999999.x",
              h.TIMEOUT_MS: "5000"}
    nc = await nats.connect(mesh.config.nats.url)
    try:
        reply = await nc.request(ECHO_SUBJECT, echo_pb2.EchoRequest(payload=b"x")
                                 .SerializeToString(), timeout=5, headers=forged)
    finally:
        await nc.close()
    assert h.STATUS not in (reply.headers or {})
    answer = echo_pb2.EchoResponse.FromString(reply.data)
    assert (answer.payload, answer.caller, answer.role) == (b"x", "", "")
    # through the gateway: metadata that looks like identity is not identity either
    metadata = (("revo-caller", "mallory"), ("revo-role", "admin"),
                ("authorization", "Bearer forged"))
    answer = await echo_pb2_grpc.EchoServiceStub(mesh.channel).Echo(
        echo_pb2.EchoRequest(payload=b"y"), metadata=metadata, timeout=5)
    assert (answer.payload, answer.caller, answer.role) == (b"y", "", "")
