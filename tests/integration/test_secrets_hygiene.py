"""Passwords and their hashes stay where they belong: the plain password nowhere, the hash
only in the users bucket, never in logs, audit records, answers or a ``repr``."""

from __future__ import annotations

import logging
import uuid

import grpc
import nats
import pytest
from nats.aio.client import Client as NATS

from mesh.auth.audit import STREAM as AUDIT_STREAM
from mesh.auth.users import BUCKET
from mesh.embedded.nats_server import NatsServer
from mesh.testing import wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc


@pytest.fixture
async def nats_private(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


def _password(who: str) -> str:
    return f"{who}-secret-{uuid.uuid4().hex}"


async def _login(channel: grpc.aio.Channel, user: str,
                 password: str) -> auth_pb2.Tokens | grpc.StatusCode:
    """The tokens, or the status of the refusal."""
    try:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username=user, password=password), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return reply.tokens


async def _audit_raw(nc: NATS) -> list[str]:
    js = nc.jetstream()
    state = (await js.stream_info(AUDIT_STREAM)).state
    return [((await js.get_msg(AUDIT_STREAM, seq)).data or b"").decode()
            for seq in range(state.first_seq, state.last_seq + 1)]


async def test_no_password_or_hash_leaks(nats_private, mesh_harness, caplog):
    caplog.set_level(logging.DEBUG)
    mesh = await mesh_harness(plugins={"only": ["echo"]}, nats={"url": nats_private.url},
                              auth={"enabled": True, "audit": {"enabled": True}})
    users = mesh.gateway.guard.users
    passwords = {"admin": _password("admin"), "alice": _password("alice"),
                 "bob": _password("bob"), "alice-new": _password("alice-new")}
    wrong = [_password("wrong"), _password("typo")]
    await users.create("admin", "admin", passwords["admin"])
    alice = await users.create("alice", "developer", passwords["alice"])

    refused = grpc.StatusCode.UNAUTHENTICATED
    assert await _login(mesh.channel, "alice", wrong[0]) == refused
    assert await _login(mesh.channel, "nobody", wrong[1]) == refused
    admin_tokens = await _login(mesh.channel, "admin", passwords["admin"])
    assert isinstance(admin_tokens, auth_pb2.Tokens)
    assert isinstance(await _login(mesh.channel, "alice", passwords["alice"]), auth_pb2.Tokens)
    admin = (("authorization", f"Bearer {admin_tokens.access_token}"),)
    manage = auth_pb2_grpc.UserServiceStub(mesh.channel)
    await manage.CreateUser(auth_pb2.CreateUserRequest(
        username="bob", role=auth_pb2.ROLE_VIEWER, password=passwords["bob"]), metadata=admin,
        timeout=5)
    assert isinstance(await _login(mesh.channel, "bob", passwords["bob"]), auth_pb2.Tokens)
    await manage.ResetPassword(auth_pb2.ResetPasswordRequest(
        username="alice", password=passwords["alice-new"]), metadata=admin, timeout=5)
    assert isinstance(await _login(mesh.channel, "alice", passwords["alice-new"]),
                      auth_pb2.Tokens)
    listed = await manage.ListUsers(auth_pb2.ListUsersRequest(), metadata=admin, timeout=5)

    stored = {name: await users.get(name) for name in ("admin", "alice", "bob")}
    hashes = [user.password_hash for user in stored.values() if user is not None]
    hashes.append(alice.password_hash)  # alice's first hash, replaced by the reset
    assert len(hashes) == 4
    assert all(h.startswith("scrypt$") for h in hashes)
    # a hash, or its salt or digest alone
    hash_parts = [*hashes, *(part for h in hashes for part in h.split("$")[4:])]
    plain = [*passwords.values(), *wrong]

    nc = await nats.connect(nats_private.url)
    try:
        bucket = await nc.jetstream().key_value(BUCKET)
        raw_users = [(await bucket.get(key)).value or b"" for key in await bucket.keys()]
        audit: list[str] = []

        async def audited() -> bool:
            audit[:] = await _audit_raw(nc)
            return len(audit) >= 9  # 6 sign-ins and 3 user calls

        await wait_for(audited, 10, "the audit records")
    finally:
        await nc.close()

    assert len(raw_users) == 3
    assert any(b"scrypt$" in value for value in raw_users)  # hashes are what the bucket holds
    for value in raw_users:
        for secret in plain:
            assert secret.encode() not in value

    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "sign-in refused" in logs  # the logs were captured
    for token in (admin_tokens.access_token, admin_tokens.refresh_token):
        assert token not in logs
    for secret in [*plain, *hash_parts]:
        assert secret not in logs
        for record in audit:
            assert secret not in record

    answer = str(listed) + listed.SerializeToString().decode(errors="replace")
    assert {u.username for u in listed.users} == {"admin", "alice", "bob"}
    for secret in hash_parts:
        assert secret not in answer

    for user in stored.values():
        assert user is not None
        for text in (repr(user), str(user), repr([user]), f"{user}"):
            assert user.password_hash not in text
            assert "scrypt" not in text
