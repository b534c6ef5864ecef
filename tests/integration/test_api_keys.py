"""API keys through real gateways on a real nats-server: create, use, list, revoke, the
refusals, what is stored, the audit record, and ``revo keys``.

Users live in the session's one NATS server, so each test names its users uniquely and
removes them afterwards (as in ``test_auth.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import pytest

from mesh.auth.audit import STREAM, read_audit
from mesh.client import MeshClient, rpc_error
from mesh.embedded.nats_server import NatsServer
from mesh.errors import Reason
from mesh.gateway import Gateway
from mesh.testing import MeshHarness, wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_auth import (
    AUTH,
    ECHO_ONLY,
    PASSWORD,
    add_user,
    bearer,
    login,
    refused,
    remove_users_since,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def mesh(mesh_harness: Any) -> AsyncIterator[MeshHarness]:
    since = time.time()
    harness: MeshHarness = await mesh_harness(plugins=ECHO_ONLY, auth=AUTH)
    yield harness
    await remove_users_since(harness, since)


def users_of(channel: grpc.aio.Channel) -> auth_pb2_grpc.UserServiceAsyncStub:
    return auth_pb2_grpc.UserServiceStub(channel)


async def signed_in(mesh: MeshHarness, role: str) -> tuple[str, str]:
    """A new user of ``role`` and an access token of theirs."""
    user = await add_user(mesh, role)
    return user, (await login(mesh.channel, user)).access_token


async def create_key(channel: grpc.aio.Channel, token: str, name: str = "ci",
                     **fields: Any) -> auth_pb2.CreateApiKeyResponse:
    reply: auth_pb2.CreateApiKeyResponse = await users_of(channel).CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name=name, **fields), metadata=bearer(token), timeout=5)
    return reply


async def echo_as(channel: grpc.aio.Channel, credential: str) -> echo_pb2.EchoResponse:
    reply: echo_pb2.EchoResponse = await echo_pb2_grpc.EchoServiceStub(channel).Echo(
        echo_pb2.EchoRequest(payload=b"k"), metadata=bearer(credential), timeout=5)
    return reply


async def refusal(channel: grpc.aio.Channel, credential: str) -> grpc.aio.AioRpcError | None:
    """Why a call with ``credential`` is refused; None when it is accepted."""
    try:
        await echo_as(channel, credential)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def is_refused(channel: grpc.aio.Channel, credential: str, words: str) -> bool:
    error = await refusal(channel, credential)
    return error is not None and error.code() == UNAUTHENTICATED and words in str(
        error.details())


# -- create, use, list, revoke ----------------------------------------------------------


async def test_a_key_acts_as_its_owner_with_its_role_until_revoked(mesh: MeshHarness) -> None:
    user, token = await signed_in(mesh, "developer")
    created = await create_key(mesh.channel, token, name="ci", role=auth_pb2.ROLE_ANALYST,
                               expires_in_s=3600)
    key, secret = created.key, created.secret
    assert (key.name, key.owner, key.role, key.revoked) == ("ci", user, auth_pb2.ROLE_ANALYST,
                                                            False)
    assert secret.startswith(f"revo_{key.id}_")
    assert len(secret) == len("revo_") + 16 + 1 + 43
    assert abs(key.expires_at.seconds - (key.created_at.seconds + 3600)) <= 1

    reply = await echo_as(mesh.channel, secret)
    assert (reply.caller, reply.role) == (user, "analyst")
    me = await auth_pb2_grpc.AuthServiceStub(mesh.channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=bearer(secret), timeout=5)
    assert (me.username, me.role, me.expires_at.seconds) == (user, auth_pb2.ROLE_ANALYST,
                                                             key.expires_at.seconds)

    listed = (await users_of(mesh.channel).ListApiKeys(
        auth_pb2.ListApiKeysRequest(), metadata=bearer(token), timeout=5)).keys
    assert [(k.id, k.name, k.role, k.revoked) for k in listed] == [
        (key.id, "ci", auth_pb2.ROLE_ANALYST, False)]
    assert secret.split("_", 2)[2] not in str(listed)  # listing never shows a secret

    revoked = (await users_of(mesh.channel).RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=key.id), metadata=bearer(token), timeout=5)).key
    assert revoked.revoked
    assert revoked.revoked_at.seconds >= key.created_at.seconds
    error = await refusal(mesh.channel, secret)
    assert error is not None
    assert error.code() == UNAUTHENTICATED
    assert f"API key {key.id} ('ci') was revoked" in str(error.details())
    assert rpc_error(error).reason == Reason.TOKEN_REVOKED
    listed = (await users_of(mesh.channel).ListApiKeys(
        auth_pb2.ListApiKeysRequest(), metadata=bearer(token), timeout=5)).keys
    assert [k.revoked for k in listed] == [True]
    # revoking again is not an error
    await users_of(mesh.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=key.id),
                                              metadata=bearer(token), timeout=5)


async def test_mesh_client_takes_a_key_as_its_token(mesh: MeshHarness) -> None:
    user, token = await signed_in(mesh, "developer")
    secret = (await create_key(mesh.channel, token)).secret
    async with MeshClient(mesh.target, token=secret, timeout=5) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"x"))).caller == user
        streamed = [r.index async for r in echo.Count(echo_pb2.CountRequest(count=2))]
        assert streamed == [0, 1]


async def test_only_the_secrets_hash_is_stored(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    _, token = await signed_in(mesh, "developer")
    created = await create_key(mesh.channel, token)
    key_secret = created.secret.split("_", 2)[2]
    entry = await mesh.gateway.guard.users.bucket.get(f"keys.{created.key.id}")
    assert entry.value is not None
    stored = entry.value.decode()
    assert key_secret not in stored
    assert created.secret not in stored
    assert json.loads(stored)["secret_sha256"] == hashlib.sha256(key_secret.encode()).hexdigest()


async def test_users_manage_their_own_keys_and_admins_everyones(mesh: MeshHarness) -> None:
    alice, alice_token = await signed_in(mesh, "developer")
    _, bob_token = await signed_in(mesh, "developer")
    _, admin_token = await signed_in(mesh, "admin")
    alices = await create_key(mesh.channel, alice_token, name="alice's")
    users = users_of(mesh.channel)

    for request in (auth_pb2.ListApiKeysRequest(owner=alice),
                    auth_pb2.ListApiKeysRequest(all_users=True)):
        error = await refused(users.ListApiKeys(request, metadata=bearer(bob_token), timeout=5))
        assert error.code() == PERMISSION_DENIED
        assert "only admins" in str(error.details())
    error = await refused(users.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=alices.key.id),
                                             metadata=bearer(bob_token), timeout=5))
    assert error.code() == PERMISSION_DENIED
    assert "not yours" in str(error.details())
    assert (await echo_as(mesh.channel, alices.secret)).caller == alice

    listed = await users.ListApiKeys(auth_pb2.ListApiKeysRequest(owner=alice),
                                     metadata=bearer(admin_token), timeout=5)
    assert [k.id for k in listed.keys] == [alices.key.id]
    everyone = await users.ListApiKeys(auth_pb2.ListApiKeysRequest(all_users=True),
                                       metadata=bearer(admin_token), timeout=5)
    assert alices.key.id in [k.id for k in everyone.keys]
    paged: list[str] = []
    token = ""
    while True:  # a page at a time, oldest first, while keys are made: each once
        await create_key(mesh.channel, admin_token, name="while paging")
        page = await users.ListApiKeys(auth_pb2.ListApiKeysRequest(
            all_users=True, page_size=2, page_token=token), metadata=bearer(admin_token),
            timeout=5)
        paged += [k.id for k in page.keys]
        if not (token := page.next_page_token):
            break
    assert len(paged) == len(set(paged))
    assert {k.id for k in everyone.keys} <= set(paged)
    first = await users.ListApiKeys(auth_pb2.ListApiKeysRequest(all_users=True, page_size=1),
                                    metadata=bearer(admin_token), timeout=5)
    error = await refused(users.ListApiKeys(auth_pb2.ListApiKeysRequest(
        owner=alice, page_token=first.next_page_token), metadata=bearer(admin_token),
        timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in str(error.details())
    await users.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=alices.key.id),
                             metadata=bearer(admin_token), timeout=5)
    assert await is_refused(mesh.channel, alices.secret, "revoked")


async def test_a_key_cannot_create_keys(mesh: MeshHarness) -> None:
    _, token = await signed_in(mesh, "admin")
    secret = (await create_key(mesh.channel, token)).secret
    error = await refused(create_key(mesh.channel, secret, name="child"))
    assert error.code() == PERMISSION_DENIED
    assert "an API key cannot create API keys" in str(error.details())


# -- what is refused at creation --------------------------------------------------------


async def test_a_role_above_the_owners_is_refused(mesh: MeshHarness) -> None:
    _, token = await signed_in(mesh, "analyst")
    for role, name in ((auth_pb2.ROLE_DEVELOPER, "developer"), (auth_pb2.ROLE_ADMIN, "admin")):
        error = await refused(create_key(mesh.channel, token, role=role))
        assert error.code() == PERMISSION_DENIED
        assert f"ask for analyst or lower, not {name}" in str(error.details())
    assert (await create_key(mesh.channel, token, role=auth_pb2.ROLE_VIEWER)).key.role == \
        auth_pb2.ROLE_VIEWER
    # unspecified: the caller's own role
    assert (await create_key(mesh.channel, token)).key.role == auth_pb2.ROLE_ANALYST


async def test_bad_requests_say_what_to_fix(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    _, token = await signed_in(mesh, "developer")
    most = mesh.gateway.guard.config.auth.api_keys.max_ttl_s
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "name must be 1 to 64 printable characters"),
        ({"name": "x" * 65}, "name must be 1 to 64 printable characters"),
        ({"role": 9}, "role must be one of ROLE_ADMIN, ROLE_DEVELOPER, ROLE_ANALYST, "
                       "ROLE_VIEWER, got 9"),
        ({"expires_in_s": 0}, "expires_in_s must be at least 1 s"),
        ({"expires_in_s": most + 60}, "expires_in_s must be at most"),
        ({"expires_at": {"seconds": int(time.time()) - 10}}, "expires_at must be at least"),
    ]
    for fields, words in cases:
        request = {"name": "ok", **fields}
        error = await refused(create_key(mesh.channel, token, **request))
        assert error.code() == INVALID_ARGUMENT, (fields, error.details())
        assert words in str(error.details()), (fields, error.details())
    error = await refused(users_of(mesh.channel).RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id="nope"), metadata=bearer(token), timeout=5))
    assert error.code() == INVALID_ARGUMENT
    assert "16 hex digits" in str(error.details())
    error = await refused(users_of(mesh.channel).RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id="0" * 16), metadata=bearer(token), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_key_without_expiry_gets_the_default(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    _, token = await signed_in(mesh, "developer")
    key = (await create_key(mesh.channel, token)).key
    default = mesh.gateway.guard.config.auth.api_keys.default_ttl_s
    assert abs(key.expires_at.seconds - key.created_at.seconds - default) <= 1


# -- what is refused at use -------------------------------------------------------------


async def test_an_expired_key_is_refused(mesh: MeshHarness) -> None:
    user, token = await signed_in(mesh, "developer")
    created = await create_key(mesh.channel, token, expires_in_s=3)
    assert (await echo_as(mesh.channel, created.secret)).caller == user
    await wait_for(lambda: is_refused(mesh.channel, created.secret, "expired at"), 15,
                   "the key to expire")
    error = await refusal(mesh.channel, created.secret)
    assert error is not None
    assert rpc_error(error).reason == Reason.TOKEN_EXPIRED
    assert "create a new key" in str(error.details())


@pytest.mark.parametrize(("value", "words"), [
    ("revo_", "the API key is malformed"),
    ("revo_abc", "the API key is malformed"),
    ("revo_0123456789abcdef", "the API key is malformed"),
    ("revo_0123456789abcdef_short", "the API key is malformed"),
    ("revo_0123456789ABCDEF_" + "a" * 43, "the API key is malformed"),
    ("revo_0123456789abcdef_" + "a" * 42 + "!", "the API key is malformed"),
    ("revo_0123456789abcdef_" + "a" * 43, "unknown API key"),
])
async def test_malformed_or_unknown_keys_are_unauthenticated(mesh: MeshHarness, value: str,
                                                             words: str) -> None:
    error = await refusal(mesh.channel, value)
    assert error is not None
    assert error.code() == UNAUTHENTICATED, error
    assert words in str(error.details())
    assert value[len("revo_"):] not in str(error.details()) or value == "revo_"


async def test_a_disabled_or_deleted_owners_keys_are_refused(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    user, token = await signed_in(mesh, "developer")
    secret = (await create_key(mesh.channel, token)).secret
    assert (await echo_as(mesh.channel, secret)).caller == user
    users = mesh.gateway.guard.users
    await users.update(user, disabled=True)
    await wait_for(lambda: is_refused(mesh.channel, secret, "is disabled"), 5,
                   "the disabled owner's key to be refused")
    await users.update(user, disabled=False)
    await wait_for(lambda: _accepted(mesh.channel, secret), 5, "the key to work again")
    # deleted, then a user of the same name created: the old key stays refused
    await users.delete(user)
    await wait_for(lambda: is_refused(mesh.channel, secret, "no longer exists"), 5,
                   "the deleted owner's key to be refused")
    await users.create(user, "developer", PASSWORD)
    new_token = (await login(mesh.channel, user)).access_token
    new_secret = (await create_key(mesh.channel, new_token)).secret
    await wait_for(lambda: _accepted(mesh.channel, new_secret), 5,
                   "the gateway to see the new user of that name")
    assert await is_refused(mesh.channel, secret, "no longer exists")


async def test_deleting_a_user_through_the_api_revokes_their_keys(mesh: MeshHarness) -> None:
    user, token = await signed_in(mesh, "developer")
    _, admin_token = await signed_in(mesh, "admin")
    key = (await create_key(mesh.channel, token)).key
    users = users_of(mesh.channel)
    await users.DeleteUser(auth_pb2.DeleteUserRequest(username=user),
                           metadata=bearer(admin_token), timeout=5)
    listed = await users.ListApiKeys(auth_pb2.ListApiKeysRequest(owner=user),
                                     metadata=bearer(admin_token), timeout=5)
    assert [(k.id, k.revoked) for k in listed.keys] == [(key.id, True)]


async def _accepted(channel: grpc.aio.Channel, credential: str) -> bool:
    return await refusal(channel, credential) is None


async def test_revocation_on_one_gateway_is_seen_by_another_through_its_watch(
        mesh: MeshHarness) -> None:
    """Gateway B learns of the revocation from its watch of the users bucket (pushed, in
    milliseconds: it has no other way to learn, no poll and no cache expiry, so a broken
    watch fails this test). The wait is generous so that a loaded machine cannot fail it."""
    second = Gateway(mesh.config)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as other:
            user, token = await signed_in(mesh, "developer")
            created = await create_key(mesh.channel, token)  # on gateway A
            await wait_for(lambda: _accepted(other, created.secret), 5,
                           "gateway B to accept the new key")
            assert (await echo_as(other, created.secret)).caller == user
            await users_of(mesh.channel).RevokeApiKey(
                auth_pb2.RevokeApiKeyRequest(id=created.key.id), metadata=bearer(token),
                timeout=5)
            await wait_for(lambda: is_refused(other, created.secret, "revoked"), 10.0,
                           "gateway B to refuse the key revoked on A")
    finally:
        await second.stop(grace=1.0)


async def test_a_key_works_on_the_http_door_as_on_grpc(mesh: MeshHarness) -> None:
    assert mesh.gateway.http is not None
    user, token = await signed_in(mesh, "developer")
    created = await create_key(mesh.channel, token)
    url = mesh.gateway.http.url + "/revo.echo.v1.EchoService/Echo"

    async def echo(credential: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(
                url, data=json.dumps({"payload": "aGk="}), headers={
                    "content-type": "application/json",
                    "authorization": f"Bearer {credential}"}) as response:
            return response.status, await response.json(content_type=None)

    status, body = await echo(created.secret)
    assert status == 200, body
    assert body["caller"] == user
    await users_of(mesh.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.key.id),
                                              metadata=bearer(token), timeout=5)
    status, body = await echo(created.secret)
    assert status == 401, body
    assert "was revoked" in body["message"]
    status, body = await echo("revo_not-a-key")
    assert status == 401, body
    assert "the API key is malformed" in body["message"]


# -- the audit record -------------------------------------------------------------------


@pytest.fixture
def nats_private(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


async def test_the_audit_record_names_the_key(mesh_harness: Any,
                                              nats_private: NatsServer) -> None:
    mesh: MeshHarness = await mesh_harness(plugins=ECHO_ONLY, nats={"url": nats_private.url},
                                           auth={**AUTH, "audit": {"enabled": True}})
    user, token = await signed_in(mesh, "developer")
    created = await create_key(mesh.channel, token)
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with_key, with_token = f"key-{uuid.uuid4().hex[:8]}", f"tok-{uuid.uuid4().hex[:8]}"
    for request_id, credential in ((with_key, created.secret), (with_token, token)):
        await stub.Echo(echo_pb2.EchoRequest(payload=b"a"), timeout=5, metadata=[
            ("authorization", f"Bearer {credential}"), ("x-request-id", request_id)])
    nc = await nats.connect(nats_private.url)
    try:
        # a record written before keys existed has no "key": it reads as ''
        old = {"time": time.time(), "request_id": "old-record", "gateway": "gw-old",
               "peer": "", "user": user, "role": "developer", "method": "/x.Y/Z",
               "permission": "read", "decision": "allow", "reason": "", "status": "OK",
               "latency_ms": 1.0}
        await nc.jetstream().publish(f"revo.audit.allow.{user}", json.dumps(old).encode(),
                                     stream=STREAM)
        found: dict[str, dict[str, Any]] = {}

        async def arrived() -> bool:
            async for record in read_audit(nc, user=user, idle_s=0.3):
                found[record["request_id"]] = record
            return {with_key, with_token, "old-record"} <= set(found)

        await wait_for(arrived, 10, "the audit records of both calls")
    finally:
        await nc.close()
    assert (found[with_key]["key"], found[with_key]["user"]) == (created.key.id, user)
    assert found[with_token]["key"] == ""
    assert found["old-record"]["key"] == ""
    for record in found.values():
        assert created.secret.split("_", 2)[2] not in json.dumps(record)


# -- revo keys --------------------------------------------------------------------------


async def _revo_keys(mesh: MeshHarness, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REVO_NATS__URL=mesh.config.nats.url, REVO_HOME=str(mesh.config.home))
    env.pop("REVO_CONFIG", None)
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mesh", "keys", *args], capture_output=True,
        text=True, timeout=60, check=False, env=env, cwd=cwd)


async def test_revo_keys_create_list_revoke(mesh: MeshHarness, tmp_path: Path) -> None:
    user = await add_user(mesh, "developer")
    made = await _revo_keys(mesh, tmp_path, "create", "--name", "from-cli", "--user", user,
                            "--role", "analyst", "--expires", "2d")
    assert made.returncode == 0, made.stderr
    secret = next(line for line in made.stdout.splitlines() if line.startswith("revo_"))
    assert "will not be shown again" in made.stderr
    key_id = secret.split("_")[1]
    await wait_for(lambda: _accepted(mesh.channel, secret), 5, "the gateway to see the key")
    reply = await echo_as(mesh.channel, secret)
    assert (reply.caller, reply.role) == (user, "analyst")

    listed = await _revo_keys(mesh, tmp_path, "list", "--user", user)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (key_id, "from-cli", user, "analyst", "active")]
    assert secret.split("_", 2)[2] not in listed.stdout

    too_high = await _revo_keys(mesh, tmp_path, "create", "--name", "x", "--user", user,
                                "--role", "admin")
    assert too_high.returncode == 1
    assert "ask for developer or lower" in too_high.stderr
    bad_expiry = await _revo_keys(mesh, tmp_path, "create", "--name", "x", "--user", user,
                                  "--expires", "soon")
    assert bad_expiry.returncode == 1
    assert "--expires takes a lifetime" in bad_expiry.stderr

    gone = await _revo_keys(mesh, tmp_path, "revoke", key_id)
    assert gone.returncode == 0, gone.stderr
    await wait_for(lambda: is_refused(mesh.channel, secret, "revoked"), 5,
                   "the key revoked by `revo keys revoke` to be refused")
    listed = await _revo_keys(mesh, tmp_path, "list", "--user", user)
    assert "revoked" in listed.stdout
