"""The audit trail: one record per call (allowed or refused, and why), kept by JetStream
across a NATS restart, and never holding a token, a password or a password hash."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.aio.client import Client as NATS

from mesh.auth.audit import STREAM, read_audit
from mesh.embedded.nats_server import NatsServer
from mesh.testing import wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ONLY_ECHO = {"only": ["echo"]}
ECHO = "/revo.echo.v1.EchoService/Echo"
LOGIN = "/revo.auth.v1.AuthService/Login"
PASSWORD = "audit password 123"
WRONG_PASSWORD = "not the audit password"
BURST = 2


@dataclass
class Scenario:
    """The calls one test made, by kind, and what must never be recorded."""

    server: NatsServer
    mesh: Any
    developer: str
    viewer: str
    request_ids: dict[str, str] = field(default_factory=dict)
    """kind -> the x-request-id sent with that call"""
    codes: dict[str, grpc.StatusCode] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


@pytest.fixture
async def nats_private(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


async def _call(scenario: Scenario, kind: str, token: str | None,
                request: echo_pb2.EchoRequest | None = None) -> grpc.StatusCode:
    request_id = f"audit-{kind}-{uuid.uuid4().hex[:12]}"
    metadata = [("x-request-id", request_id)]
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    stub = echo_pb2_grpc.EchoServiceStub(scenario.mesh.channel)
    try:
        await stub.Echo(request or echo_pb2.EchoRequest(payload=b"audited"),
                        metadata=metadata, timeout=5)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    scenario.request_ids[kind] = request_id
    scenario.codes[kind] = code
    return code


async def _login(scenario: Scenario, kind: str, user: str, password: str) -> str:
    request_id = f"audit-{kind}-{uuid.uuid4().hex[:12]}"
    stub = auth_pb2_grpc.AuthServiceStub(scenario.mesh.channel)
    scenario.request_ids[kind] = request_id
    try:
        reply = await stub.Login(auth_pb2.LoginRequest(username=user, password=password),
                                 metadata=[("x-request-id", request_id)], timeout=5)
    except grpc.aio.AioRpcError as exc:
        scenario.codes[kind] = exc.code()
        return ""
    scenario.codes[kind] = grpc.StatusCode.OK
    tokens: auth_pb2.Tokens = reply.tokens
    scenario.secrets += [tokens.access_token, tokens.refresh_token]
    return tokens.access_token


async def _scenario(mesh_harness, server: NatsServer) -> Scenario:
    mesh = await mesh_harness(plugins=ONLY_ECHO, nats={"url": server.url}, auth={
        "enabled": True, "audit": {"enabled": True},
        "rate_limits": {"roles": {"developer": {"rate": 0.1, "burst": BURST}}}})
    suffix = uuid.uuid4().hex[:8]
    scenario = Scenario(server, mesh, f"dev-{suffix}", f"viewer-{suffix}", started=time.time())
    users = mesh.gateway.guard.users
    for name, role in ((scenario.developer, "developer"), (scenario.viewer, "viewer")):
        user = await users.create(name, role, PASSWORD)
        scenario.secrets.append(user.password_hash)
    scenario.secrets += [PASSWORD, WRONG_PASSWORD]

    await _login(scenario, "login-refused", scenario.developer, WRONG_PASSWORD)
    developer = await _login(scenario, "login", scenario.developer, PASSWORD)
    viewer = await _login(scenario, "login-viewer", scenario.viewer, PASSWORD)
    assert await _call(scenario, "allowed", developer) == grpc.StatusCode.OK
    assert await _call(scenario, "anonymous", None) == grpc.StatusCode.UNAUTHENTICATED
    assert await _call(scenario, "forbidden", viewer) == grpc.StatusCode.PERMISSION_DENIED
    for _ in range(BURST + 3):  # the developer's limit: BURST calls, then refusals
        if await _call(scenario, "limited", developer) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
    assert scenario.codes["limited"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    scenario.ended = time.time()
    return scenario


async def _all_records(nc: NATS) -> list[dict[str, Any]]:
    return [record async for record in read_audit(nc, idle_s=0.3)]


async def _records_of(nc: NATS, scenario: Scenario) -> dict[str, list[dict[str, Any]]]:
    """Every record of each call the scenario made, by kind, once all have arrived."""
    found: dict[str, list[dict[str, Any]]] = {}

    async def arrived() -> bool:
        by_id: dict[str, list[dict[str, Any]]] = {}
        for record in await _all_records(nc):
            by_id.setdefault(record["request_id"], []).append(record)
        found.clear()
        found.update({kind: by_id.get(rid, []) for kind, rid in scenario.request_ids.items()})
        return all(found.values())

    await wait_for(arrived, 10, "an audit record of every call")
    return found


def _check_record(record: dict[str, Any], scenario: Scenario, *, user: str, role: str,
                  method: str, permission: str, decision: str | None, status: str) -> None:
    assert record["user"] == user, record
    assert record["role"] == role, record
    assert record["method"] == method, record
    assert record["permission"] == permission, record
    assert record["decision"] in ({decision} if decision else {"allow", "deny"}), record
    assert record["status"] == status, record
    assert record["gateway"] == scenario.mesh.gateway.guard.gateway_id
    assert record["peer"].startswith("ipv4:127.0.0.1:") or record["peer"].startswith("ipv6:")
    assert scenario.started - 1 <= record["time"] <= scenario.ended + 1
    assert isinstance(record["latency_ms"], int | float)
    # milliseconds, and no longer than the scenario that made the call (wrong units fail)
    assert 0 <= record["latency_ms"] <= (scenario.ended - scenario.started + 1) * 1000, record
    if decision == "deny":
        assert record["reason"], "a refusal says why"


async def test_every_call_leaves_one_record_with_who_what_and_why(nats_private, mesh_harness):
    scenario = await _scenario(mesh_harness, nats_private)
    nc = await nats.connect(nats_private.url)
    try:
        records = await _records_of(nc, scenario)
        for kind, found in records.items():
            assert len(found) == 1, f"{kind}: {found}"
        one = {kind: found[0] for kind, found in records.items()}
        for kind, record in one.items():
            assert record["request_id"] == scenario.request_ids[kind]

        dev, viewer = scenario.developer, scenario.viewer
        _check_record(one["allowed"], scenario, user=dev, role="developer", method=ECHO,
                      permission="execute", decision="allow", status="OK")
        _check_record(one["anonymous"], scenario, user="", role="", method=ECHO,
                      permission="execute", decision="deny", status="UNAUTHENTICATED")
        # sign-ins name who tried (and, once in, the role)
        _check_record(one["login"], scenario, user=dev, role="developer", method=LOGIN,
                      permission="public", decision="allow", status="OK")
        _check_record(one["login-refused"], scenario, user=dev, role="", method=LOGIN,
                      permission="public", decision=None, status="UNAUTHENTICATED")
        # the caller is known once the token verified: a refusal names who was refused
        _check_record(one["forbidden"], scenario, user=viewer, role="viewer", method=ECHO,
                      permission="execute", decision="deny", status="PERMISSION_DENIED")
        _check_record(one["limited"], scenario, user=dev, role="developer", method=ECHO,
                      permission="execute", decision="deny", status="RESOURCE_EXHAUSTED")

        # the subjects filter by decision and user
        denied_viewer = [r async for r in read_audit(nc, decision="deny", user=viewer,
                                                     idle_s=0.3)]
        assert [r["request_id"] for r in denied_viewer] == [scenario.request_ids["forbidden"]]
        anonymous = [r async for r in read_audit(nc, decision="deny", user="-", idle_s=0.3)]
        assert scenario.request_ids["anonymous"] in {r["request_id"] for r in anonymous}
        allowed = [r async for r in read_audit(nc, decision="allow", user=dev, idle_s=0.3)]
        assert all(r["decision"] == "allow" and r["user"] == dev for r in allowed)
        assert scenario.request_ids["allowed"] in {r["request_id"] for r in allowed}
    finally:
        await nc.close()


async def test_records_survive_a_nats_restart(nats_private, mesh_harness):
    scenario = await _scenario(mesh_harness, nats_private)
    nc = await nats.connect(nats_private.url)
    try:
        before = await _records_of(nc, scenario)
    finally:
        await nc.close()
    await scenario.mesh.gateway.stop(grace=1.0)  # flushes what JetStream has not acknowledged
    for node in scenario.mesh.nodes:
        await node.stop()

    port = nats_private.port
    nats_private.stop()
    nats_private.start()  # the same store and port
    assert nats_private.port == port

    nc = await nats.connect(nats_private.url)
    try:
        after = await _records_of(nc, scenario)
    finally:
        await nc.close()
    assert after == before


async def test_records_hold_no_token_password_or_hash(nats_private, mesh_harness):
    scenario = await _scenario(mesh_harness, nats_private)
    nc = await nats.connect(nats_private.url)
    try:
        await _records_of(nc, scenario)
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        assert info.state.messages >= 1
        raw = [(await js.get_msg(STREAM, seq)).data or b""
               for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()
    secrets = [s for s in scenario.secrets if s]
    assert len(secrets) >= 8  # two hashes, two passwords, two pairs of tokens
    for data in raw:
        text = data.decode()
        for line in text.splitlines():  # a batch: one JSON record per line
            json.loads(line)
        for secret in secrets:
            assert secret not in text
        for hash_ in scenario.secrets[:2]:  # nor any part of a hash (salt, digest)
            for part in hash_.split("$")[4:]:
                assert part not in text


async def _revo_audit(scenario: Scenario, cwd: Path, *args: str) -> str:
    env = dict(os.environ, REVO_NATS__URL=scenario.server.url,
               REVO_HOME=str(Path(scenario.mesh.config.home)))
    env.pop("REVO_CONFIG", None)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mesh", "audit", *args], capture_output=True,
        text=True, timeout=30, check=False, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    for secret in scenario.secrets:
        assert secret not in done.stdout
    return done.stdout


async def test_revo_audit_command_lists_and_filters_records(nats_private, mesh_harness,
                                                            tmp_path):
    probe = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mesh", "audit", "--help"],
        capture_output=True, text=True, timeout=30, check=False)
    # a broken `revo audit` is a failure, not a skip
    assert probe.returncode == 0, f"`revo audit --help` failed: {probe.stderr or probe.stdout}"
    assert "--decision" in probe.stdout
    scenario = await _scenario(mesh_harness, nats_private)
    nc = await nats.connect(nats_private.url)
    try:
        records = await _records_of(nc, scenario)
    finally:
        await nc.close()

    listed = [json.loads(line) for line in
              (await _revo_audit(scenario, tmp_path, "--json", "--limit", "0")).splitlines()]
    assert {r["request_id"] for r in listed} >= set(scenario.request_ids.values())
    assert [r for r in listed if r["request_id"] == scenario.request_ids["allowed"]] == \
        records["allowed"]

    mine = [json.loads(line) for line in (await _revo_audit(
        scenario, tmp_path, "--json", "--user", scenario.developer, "--decision", "allow",
        "--limit", "0")).splitlines()]
    assert mine
    assert all(r["user"] == scenario.developer and r["decision"] == "allow" for r in mine)
    assert scenario.request_ids["allowed"] in {r["request_id"] for r in mine}

    refused = [json.loads(line) for line in (await _revo_audit(
        scenario, tmp_path, "--json", "--status", "PERMISSION_DENIED")).splitlines()]
    assert [r["request_id"] for r in refused] == [scenario.request_ids["forbidden"]]

    text = await _revo_audit(scenario, tmp_path)  # the table people read
    assert scenario.developer in text
    assert scenario.request_ids["allowed"] in text


async def test_a_stream_the_caller_left_is_audited_cancelled(nats_private, mesh_harness):
    """docs/security.md: ``status`` is CANCELLED for a stream the caller left (one that
    had more to send: a stream the gateway finished before the caller left is OK)."""
    mesh = await mesh_harness(plugins=ONLY_ECHO, nats={"url": nats_private.url},
                              auth={"enabled": True, "audit": {"enabled": True}})
    user = f"dev-{uuid.uuid4().hex[:8]}"
    await mesh.gateway.guard.users.create(user, "developer", PASSWORD)
    token = mesh.gateway.guard.tokens.issue(user, "developer")[0]
    request_id = f"audit-left-{uuid.uuid4().hex[:12]}"
    call = echo_pb2_grpc.EchoServiceStub(mesh.channel).Count(
        echo_pb2.CountRequest(count=100_000, interval_ms=1), timeout=60,
        metadata=[("x-request-id", request_id), ("authorization", f"Bearer {token}")])
    first = await call.read()
    assert first.index == 0  # the stream was delivering when its caller left
    call.cancel()
    nc = await nats.connect(nats_private.url)
    found: list[dict[str, Any]] = []
    try:
        async def recorded() -> bool:
            found[:] = [r for r in await _all_records(nc) if r["request_id"] == request_id]
            return bool(found)

        await wait_for(recorded, 10, "the stream's audit record")
    finally:
        await nc.close()
    [record] = found
    assert (record["method"], record["user"]) == ("/revo.echo.v1.EchoService/Count", user)
    assert record["status"] == "CANCELLED", record


async def test_two_gateways_of_one_process_each_keep_their_records(mesh_harness, nats_server):
    """Each gateway's audit batches are deduplicated by its id and batch number: two gateways
    in one process (tests, co-located deployments) must not share an id, or the second one's
    batches are dropped as duplicates of the first's."""
    from mesh.gateway import Gateway

    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "audit": {"enabled": True}})
    second = Gateway(mesh.config)
    await second.start()
    nc = await nats.connect(nats_server.url)
    try:
        assert second.guard is not None
        assert mesh.gateway.guard is not None
        assert second.guard.gateway_id != mesh.gateway.guard.gateway_id
        wanted = {}
        for name, address in (("first", mesh.gateway.address), ("second", second.address)):
            request_id = f"{name}-{uuid.uuid4().hex[:8]}"
            wanted[request_id] = name
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError):  # no token: refused, and recorded
                    await echo_pb2_grpc.EchoServiceStub(channel).Echo(
                        echo_pb2.EchoRequest(), timeout=5,
                        metadata=(("x-request-id", request_id),))

        async def both() -> bool:
            seen = {r["request_id"] for r in await _all_records(nc)}
            return wanted.keys() <= seen

        await wait_for(both, 15, "a record from each gateway")
    finally:
        await nc.close()
        await second.stop(grace=1.0)
