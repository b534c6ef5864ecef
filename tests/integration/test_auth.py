"""Signing in and out through a real gateway: tokens, refusals, and managing users.

Users live in the session's one NATS server, so each test names its users uniquely and
removes them afterwards (:func:`remove_users_since`); each test's home has its own signing
secret, so no token crosses tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.auth.tokens import REFRESH, TokenService
from mesh.client import MeshClient
from mesh.gateway import Gateway
from mesh.testing import MeshHarness, wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc, options_pb2
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

AUTH: dict[str, Any] = {
    "enabled": True,
    "audit": {"enabled": False},
    # failed sign-ins from 127.0.0.1 add up over the whole session's NATS server
    "login": {"per_user": 1000, "per_address": 100_000},
}
ECHO_ONLY = {"only": ["echo"]}
PASSWORD = "correct horse battery"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def add_user(mesh: MeshHarness, role: str, prefix: str = "") -> str:
    """A new user of ``role`` with password PASSWORD; its name."""
    assert mesh.gateway.guard is not None
    name = unique(prefix or role)
    await mesh.gateway.guard.users.create(name, role, PASSWORD)
    return name


async def login(channel: grpc.aio.Channel, user: str,
                password: str = PASSWORD) -> auth_pb2.Tokens:
    reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(
        auth_pb2.LoginRequest(username=user, password=password), timeout=10)
    return reply.tokens


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def remove_users_since(mesh: MeshHarness, since: float) -> None:
    """Delete the users created since ``since``, so that no later test of the session
    finds them in the shared bucket (an admin there would stop ``REVO_ADMIN_PASSWORD``
    from creating one, for example)."""
    assert mesh.gateway.guard is not None
    for user in await mesh.gateway.guard.users.list():
        if user.created_at >= since:
            await mesh.gateway.guard.users.delete(user.username)


def tokens_of(mesh: MeshHarness) -> TokenService:
    assert mesh.gateway.guard is not None
    assert mesh.gateway.guard.tokens is not None
    return mesh.gateway.guard.tokens


@pytest.fixture
async def mesh(mesh_harness) -> AsyncIterator[MeshHarness]:
    since = time.time()
    harness = await mesh_harness(plugins=ECHO_ONLY, auth=AUTH)
    yield harness
    await remove_users_since(harness, since)


# -- sign in, who am I, refresh, sign out -----------------------------------------------


async def test_login_then_calls_carry_the_user(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "developer")
    tokens = await login(mesh.channel, user)
    assert tokens.token_type == "Bearer"
    assert tokens.access_expires_at.seconds > time.time()
    assert tokens.refresh_expires_at.seconds > tokens.access_expires_at.seconds
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel)
    me = await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(tokens.access_token),
                           timeout=5)
    assert (me.username, me.role) == (user, auth_pb2.ROLE_DEVELOPER)
    assert list(me.permissions) == [options_pb2.PERMISSION_READ, options_pb2.PERMISSION_WRITE,
                                    options_pb2.PERMISSION_EXECUTE]
    assert me.expires_at.seconds == tokens.access_expires_at.seconds
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hi"),
                            metadata=bearer(tokens.access_token), timeout=5)
    assert (reply.payload, reply.caller, reply.role) == (b"hi", user, "developer")


async def test_mesh_client_signs_in_refreshes_and_signs_out(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "viewer")
    async with MeshClient(mesh.target, timeout=10) as client:
        first = await client.login(user, PASSWORD)
        assert client.token == first.access_token
        assert await client.list_nodes()  # read: a viewer may
        second = await client.refresh()
        assert second.access_token != first.access_token
        assert client.token == second.access_token
        assert await client.list_services()
        await client.logout()
        assert client.token == ""
    refresh = auth_pb2_grpc.AuthServiceStub(mesh.channel).Refresh
    for token in (first.refresh_token, second.refresh_token):  # used, then signed out
        error = await refused(refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=5))
        assert error.code() == UNAUTHENTICATED
        assert "revoked" in str(error.details())
    error = await refused(auth_pb2_grpc.AuthServiceStub(mesh.channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=bearer(second.access_token), timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "signed out" in str(error.details())


async def test_refresh_rotates_the_refresh_token(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "analyst")
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel)
    old = await login(mesh.channel, user)
    new = (await auth.Refresh(auth_pb2.RefreshRequest(refresh_token=old.refresh_token),
                              timeout=5)).tokens
    assert new.refresh_token != old.refresh_token
    me = await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(new.access_token),
                           timeout=5)
    assert (me.username, me.role) == (user, auth_pb2.ROLE_ANALYST)
    # the old refresh token was used up
    error = await refused(auth.Refresh(auth_pb2.RefreshRequest(refresh_token=old.refresh_token),
                                       timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "refresh token was revoked" in str(error.details())
    # the new one works once
    newer = (await auth.Refresh(auth_pb2.RefreshRequest(refresh_token=new.refresh_token),
                                timeout=5)).tokens
    assert newer.access_token
    # an access token is not a refresh token, nor the other way round
    error = await refused(auth.Refresh(auth_pb2.RefreshRequest(
        refresh_token=newer.access_token), timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "access token" in str(error.details())
    error = await refused(auth.WhoAmI(auth_pb2.WhoAmIRequest(),
                                      metadata=bearer(newer.refresh_token), timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "this is a refresh token; send an access token" in str(error.details())


async def test_logout_refuses_the_access_token_afterwards(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "developer")
    tokens = await login(mesh.channel, user)
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel)
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    await echo.Echo(echo_pb2.EchoRequest(), metadata=bearer(tokens.access_token), timeout=5)
    await auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(tokens.access_token), timeout=5)
    error = await refused(echo.Echo(echo_pb2.EchoRequest(), metadata=bearer(tokens.access_token),
                                    timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "signed out" in str(error.details())
    # a second sign-in is not affected
    again = await login(mesh.channel, user)
    await echo.Echo(echo_pb2.EchoRequest(), metadata=bearer(again.access_token), timeout=5)


async def test_logout_cannot_revoke_someone_elses_refresh_token(mesh: MeshHarness) -> None:
    alice, bob = await add_user(mesh, "viewer", "alice"), await add_user(mesh, "viewer", "bob")
    alice_tokens, bob_tokens = await login(mesh.channel, alice), await login(mesh.channel, bob)
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel)
    error = await refused(auth.Logout(
        auth_pb2.LogoutRequest(refresh_token=bob_tokens.refresh_token),
        metadata=bearer(alice_tokens.access_token), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another user" in str(error.details())
    refreshed = await auth.Refresh(auth_pb2.RefreshRequest(
        refresh_token=bob_tokens.refresh_token), timeout=5)
    assert refreshed.tokens.access_token


async def test_refresh_works_once_the_access_token_has_expired(mesh: MeshHarness) -> None:
    """Refreshing is what a client does when its access token expired; the client still
    sends that token with every call, Refresh included. The client library refreshes by
    itself when the gateway says the token expired, and repeats the refused call."""
    user = await add_user(mesh, "developer")
    async with MeshClient(mesh.target, timeout=10) as client:
        await client.login(user, PASSWORD)
        client.session.forget_password()  # a refresh, not a new sign-in, must mend it
        assert mesh.gateway.guard is not None
        generation = (await mesh.gateway.guard.users.require(user)).generation
        expired, _ = tokens_of(mesh).issue(user, "developer", generation=generation,
                                           now=time.time() - 3600, ttl_s=60)
        error = await refused(auth_pb2_grpc.AuthServiceStub(mesh.channel).WhoAmI(
            auth_pb2.WhoAmIRequest(), metadata=bearer(expired), timeout=5))
        assert "expired" in str(error.details())  # the situation a refresh is for
        client.session.current = expired  # as if it had expired in the client's hands
        assert (await client.auth.WhoAmI(auth_pb2.WhoAmIRequest())).username == user
        assert client.session.refreshes == 1
        assert client.token != expired
        fresh = await client.refresh()
        assert (await _who(mesh, fresh)).username == user


async def test_sign_in_again_after_the_tokens_were_revoked(mesh: MeshHarness) -> None:
    """A client whose tokens were revoked (role changed) is told to sign in again: it can."""
    assert mesh.gateway.guard is not None
    user = await add_user(mesh, "developer")
    async with MeshClient(mesh.target, timeout=10) as client:
        await client.login(user, PASSWORD)
        await mesh.gateway.guard.revocations.revoke_user(
            user, (await mesh.gateway.guard.users.update(user, role="analyst")).generation)
        error = await refused(client.list_nodes())
        assert "sign in again" in str(error.details())
        await client.login(user, PASSWORD)
        assert (await client.auth.WhoAmI(auth_pb2.WhoAmIRequest())).role == \
            auth_pb2.ROLE_ANALYST


async def test_a_refresh_token_is_good_for_one_refresh_even_when_raced(
        mesh: MeshHarness) -> None:
    """Rotation detects a stolen refresh token only if two uses can never both succeed."""
    user = await add_user(mesh, "developer")
    tokens = await login(mesh.channel, user)
    refresh = auth_pb2_grpc.AuthServiceStub(mesh.channel).Refresh
    request = auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token)
    results = await asyncio.gather(*(refresh(request, timeout=5) for _ in range(4)),
                                   return_exceptions=True)
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 1, (
        f"{len(succeeded)} of 4 concurrent refreshes with one refresh token got new tokens")
    assert {e.code() for e in failed} == {UNAUTHENTICATED}


# -- refused sign-ins -------------------------------------------------------------------


async def test_wrong_password_and_unknown_user_are_refused_alike(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "developer")
    wrong_password = await refused(login(mesh.channel, user, "not the password"))
    unknown_user = await refused(login(mesh.channel, unique("nobody")))
    assert wrong_password.code() == unknown_user.code() == UNAUTHENTICATED
    assert wrong_password.details() == unknown_user.details()
    assert "wrong user name or password" in str(wrong_password.details())
    assert user not in str(wrong_password.details())


async def test_login_without_name_or_password_is_invalid(mesh: MeshHarness) -> None:
    error = await refused(login(mesh.channel, "", PASSWORD))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "username and a password" in str(error.details())
    error = await refused(login(mesh.channel, "someone", ""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_disabled_user_cannot_log_in(mesh: MeshHarness) -> None:
    assert mesh.gateway.guard is not None
    user = await add_user(mesh, "developer")
    await mesh.gateway.guard.users.update(user, disabled=True)
    error = await refused(login(mesh.channel, user))
    assert error.code() == UNAUTHENTICATED
    assert "disabled" in str(error.details())
    # the wrong password tells nothing about the account
    error = await refused(login(mesh.channel, user, "not the password"))
    assert "wrong user name or password" in str(error.details())


# -- refused tokens ---------------------------------------------------------------------


def _bad_tokens(tokens: TokenService, user: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """A good token made by hand, and tokens the gateway must refuse, by case:
    (authorization value, words of the reason)."""
    settings, key = tokens.settings, tokens.keyring.signing
    now = int(time.time())
    good = {"iss": settings.issuer, "aud": settings.audience, "sub": user, "role": "admin",
            "typ": "access", "gen": 1 << 62, "jti": uuid.uuid4().hex, "iat": now, "nbf": now,
            "exp": now + 600}

    def signed(kid: str = key.kid, **changes: Any) -> str:
        payload = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return jwt.encode(payload, key.sign, algorithm="HS256", headers={"kid": kid})

    valid = signed()
    head, body, signature = valid.split(".")
    none_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    tampered_body = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b'"admin"', b'"admln"')).decode()
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    expired, _ = tokens.issue(user, "admin", now=time.time() - 3600, ttl_s=60)
    refresh, _ = tokens.issue(user, "admin", REFRESH)
    return valid, {
        "alg none": (f"Bearer {none_header}.{body}.", "alg 'none'"),
        "expired": (f"Bearer {expired}", "expired"),
        "tampered payload": (f"Bearer {head}.{tampered_body}.{signature}", "signature"),
        "tampered signature": (f"Bearer {head}.{body}.{flipped}", "signature"),
        "wrong audience": (f"Bearer {signed(aud='elsewhere')}", "audience"),
        "wrong issuer": (f"Bearer {signed(iss='mallory')}", "not issued by"),
        "not valid yet": (f"Bearer {signed(nbf=now + 3600)}", "not valid yet"),
        "no jti": (f"Bearer {signed(jti=None)}", "'jti'"),
        "unknown kid": (f"Bearer {signed(kid='retired')}", "'retired'"),
        "refresh as access": (f"Bearer {refresh}", "refresh token"),
        "garbage": ("Bearer not-a-jwt", "not a JWT"),
        "not bearer": (f"Basic {valid}", "Bearer <access token>"),
    }


async def test_every_bad_token_is_unauthenticated(mesh: MeshHarness) -> None:
    user = await add_user(mesh, "admin")
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    valid, cases = _bad_tokens(tokens_of(mesh), user)
    # the forgeries start from a token the gateway accepts
    reply = await echo.Echo(echo_pb2.EchoRequest(), metadata=bearer(valid), timeout=5)
    assert reply.role == "admin"
    wrong = []
    for case, (authorization, reason) in cases.items():
        try:
            await echo.Echo(echo_pb2.EchoRequest(), metadata=(("authorization", authorization),),
                            timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() != UNAUTHENTICATED or reason not in str(error.details()):
                wrong.append(f"{case}: {error.code().name} {error.details()!r}")
        else:
            wrong.append(f"{case}: the call was let in")
    assert not wrong, "bad tokens not refused as expected:\n" + "\n".join(wrong)


async def test_rs256_mesh_refuses_hs256_signed_with_its_public_key(
        mesh_harness, tmp_path: Path) -> None:
    """Algorithm confusion at the gateway: the public key must not work as an HMAC secret."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "signing.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    since = time.time()
    mesh = await mesh_harness(plugins=ECHO_ONLY, auth={
        **AUTH, "algorithm": "RS256", "signing_key_file": str(private)})
    try:
        user = await add_user(mesh, "viewer")
        tokens = await login(mesh.channel, user)
        header = jwt.get_unverified_header(tokens.access_token)
        assert header["alg"] == "RS256"
        payload = jwt.decode(tokens.access_token, options={"verify_signature": False})
        payload["role"] = "admin"
        signing_input = (jwt.utils.base64url_encode(json.dumps(
            {"alg": "HS256", "typ": "JWT", "kid": header["kid"]}).encode()) + b"." +
            jwt.utils.base64url_encode(json.dumps(payload).encode()))
        mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
        forged = (signing_input + b"." + jwt.utils.base64url_encode(mac)).decode()
        echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
        error = await refused(echo.Echo(echo_pb2.EchoRequest(), metadata=bearer(forged),
                                        timeout=5))
        assert error.code() == UNAUTHENTICATED
        assert "'HS256'" in str(error.details())
        # the genuine RS256 token works (and a viewer may not execute)
        error = await refused(echo.Echo(echo_pb2.EchoRequest(),
                                        metadata=bearer(tokens.access_token), timeout=5))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await remove_users_since(mesh, since)


async def test_no_token_says_how_to_sign_in(mesh: MeshHarness) -> None:
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    error = await refused(echo.Echo(echo_pb2.EchoRequest(), timeout=5))
    assert error.code() == UNAUTHENTICATED
    details = str(error.details())
    assert "/revo.echo.v1.EchoService/Echo" in details
    assert "authorization: Bearer" in details
    assert "AuthService/Login" in details
    # the gateway's own services too
    error = await refused(auth_pb2_grpc.AuthServiceStub(mesh.channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), timeout=5))
    assert error.code() == UNAUTHENTICATED


async def test_unknown_method_tells_nothing_before_sign_in(mesh: MeshHarness) -> None:
    unknown = mesh.channel.unary_unary("/acme.secret.v1.VaultService/Open",
                                       request_serializer=None, response_deserializer=None)
    error = await refused(unknown(b"", timeout=5))
    assert error.code() == UNAUTHENTICATED
    assert "revo.echo.v1.EchoService" not in str(error.details())
    tokens = await login(mesh.channel, await add_user(mesh, "viewer"))
    error = await refused(unknown(b"", metadata=bearer(tokens.access_token), timeout=5))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "revo.echo.v1.EchoService" in str(error.details())


async def test_health_and_reflection_need_no_token(mesh: MeshHarness) -> None:
    health = health_pb2_grpc.HealthStub(mesh.channel)
    for service in ("", "revo.echo.v1.EchoService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    reflection = reflection_pb2_grpc.ServerReflectionStub(mesh.channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    responses = [response async for response in call]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"revo.echo.v1.EchoService", "revo.auth.v1.AuthService"} <= names


# -- UserService ------------------------------------------------------------------------


async def _admin(mesh: MeshHarness) -> tuple[auth_pb2_grpc.UserServiceAsyncStub, Any]:
    """A UserService stub and the metadata of a signed-in admin."""
    tokens = await login(mesh.channel, await add_user(mesh, "admin"))
    return auth_pb2_grpc.UserServiceStub(mesh.channel), bearer(tokens.access_token)


async def _who(mesh: MeshHarness, tokens: auth_pb2.Tokens) -> auth_pb2.WhoAmIResponse:
    return await auth_pb2_grpc.AuthServiceStub(mesh.channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=bearer(tokens.access_token), timeout=5)


async def test_admin_creates_and_lists_users_without_hashes(mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    name = unique("carol")
    created = await users.CreateUser(auth_pb2.CreateUserRequest(
        username=name, role=auth_pb2.ROLE_ANALYST, password=PASSWORD), metadata=admin,
        timeout=10)
    assert (created.user.username, created.user.role, created.user.disabled) == (
        name, auth_pb2.ROLE_ANALYST, False)
    assert created.user.created_at.seconds > 0
    listed = await users.ListUsers(auth_pb2.ListUsersRequest(), metadata=admin, timeout=5)
    by_name = {u.username: u for u in listed.users}
    assert by_name[name].role == auth_pb2.ROLE_ANALYST
    wire = listed.SerializeToString() + created.SerializeToString()
    assert b"scrypt" not in wire
    assert PASSWORD.encode() not in wire
    tokens = await login(mesh.channel, name)
    assert (await _who(mesh, tokens)).role == auth_pb2.ROLE_ANALYST

    # a page at a time, by name, while users are added: each user there at the start once
    seen: list[str] = []
    token = ""
    while True:
        await users.CreateUser(auth_pb2.CreateUserRequest(
            username=unique("paging"), role=auth_pb2.ROLE_VIEWER, password=PASSWORD),
            metadata=admin, timeout=10)
        page = await users.ListUsers(auth_pb2.ListUsersRequest(page_size=1, page_token=token),
                                     metadata=admin, timeout=5)
        assert len(page.users) == 1
        seen += [u.username for u in page.users]
        if not (token := page.next_page_token):
            break
    assert seen == sorted(set(seen))
    assert set(by_name) <= set(seen)
    for request in (auth_pb2.ListUsersRequest(page_token="x"),
                    auth_pb2.ListUsersRequest(page_size=-5)):
        error = await refused(users.ListUsers(request, metadata=admin, timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_" in str(error.details())


async def test_set_role_revokes_the_users_tokens(mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    name = await add_user(mesh, "developer", "dave")
    before = await login(mesh.channel, name)
    reply = await users.SetRole(auth_pb2.SetRoleRequest(
        username=name, role=auth_pb2.ROLE_VIEWER), metadata=admin, timeout=5)
    assert reply.user.role == auth_pb2.ROLE_VIEWER
    error = await refused(_who(mesh, before))
    assert error.code() == UNAUTHENTICATED
    assert "role, password or status changed" in str(error.details())
    error = await refused(auth_pb2_grpc.AuthServiceStub(mesh.channel).Refresh(
        auth_pb2.RefreshRequest(refresh_token=before.refresh_token), timeout=5))
    assert error.code() == UNAUTHENTICATED
    after = await login(mesh.channel, name)
    assert (await _who(mesh, after)).role == auth_pb2.ROLE_VIEWER
    error = await refused(echo_pb2_grpc.EchoServiceStub(mesh.channel).Echo(
        echo_pb2.EchoRequest(), metadata=bearer(after.access_token), timeout=5))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_reset_password_revokes_tokens_and_changes_the_password(
        mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    name = await add_user(mesh, "developer", "erin")
    before = await login(mesh.channel, name)
    await users.ResetPassword(auth_pb2.ResetPasswordRequest(
        username=name, password="a new long password"), metadata=admin, timeout=10)
    assert (await refused(_who(mesh, before))).code() == UNAUTHENTICATED
    assert (await refused(login(mesh.channel, name))).code() == UNAUTHENTICATED
    after = await login(mesh.channel, name, "a new long password")
    assert (await _who(mesh, after)).username == name


async def test_disable_revokes_and_enable_lets_back_in(mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    name = await add_user(mesh, "developer", "frank")
    before = await login(mesh.channel, name)
    reply = await users.DisableUser(auth_pb2.DisableUserRequest(username=name, disabled=True),
                                    metadata=admin, timeout=5)
    assert reply.user.disabled
    assert (await refused(_who(mesh, before))).code() == UNAUTHENTICATED
    error = await refused(login(mesh.channel, name))
    assert "disabled" in str(error.details())
    reply = await users.DisableUser(auth_pb2.DisableUserRequest(username=name, disabled=False),
                                    metadata=admin, timeout=5)
    assert not reply.user.disabled
    after = await login(mesh.channel, name)
    assert (await _who(mesh, after)).username == name


async def test_delete_revokes_and_removes_the_user(mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    name = await add_user(mesh, "developer", "gina")
    before = await login(mesh.channel, name)
    await users.DeleteUser(auth_pb2.DeleteUserRequest(username=name), metadata=admin, timeout=5)
    assert (await refused(_who(mesh, before))).code() == UNAUTHENTICATED
    error = await refused(login(mesh.channel, name))
    assert "wrong user name or password" in str(error.details())
    listed = await users.ListUsers(auth_pb2.ListUsersRequest(), metadata=admin, timeout=5)
    assert name not in {u.username for u in listed.users}


async def test_developer_may_not_manage_users(mesh: MeshHarness) -> None:
    tokens = await login(mesh.channel, await add_user(mesh, "developer"))
    users = auth_pb2_grpc.UserServiceStub(mesh.channel)
    for call in (users.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(
                     tokens.access_token), timeout=5),
                 users.CreateUser(auth_pb2.CreateUserRequest(
                     username=unique("eve"), role=auth_pb2.ROLE_ADMIN, password=PASSWORD),
                     metadata=bearer(tokens.access_token), timeout=5)):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'manage'" in str(error.details())
        assert "'developer'" in str(error.details())


async def test_user_service_explains_bad_requests(mesh: MeshHarness) -> None:
    users, admin = await _admin(mesh)
    taken = await add_user(mesh, "viewer", "taken")
    missing = unique("missing")

    def create(username: str, role: auth_pb2.Role.ValueType = auth_pb2.ROLE_VIEWER,
               password: str = PASSWORD) -> Any:
        return users.CreateUser(auth_pb2.CreateUserRequest(
            username=username, role=role, password=password), metadata=admin, timeout=10)

    cases: list[tuple[str, Any, grpc.StatusCode, str]] = [
        ("existing name", create(taken), grpc.StatusCode.ALREADY_EXISTS, "already exists"),
        ("no role", create(unique("h"), role=auth_pb2.ROLE_UNSPECIFIED),
         grpc.StatusCode.INVALID_ARGUMENT, "role is required: one of ROLE_ADMIN"),
        ("bad role", create(unique("h"), role=auth_pb2.Role.ValueType(42)),
         grpc.StatusCode.INVALID_ARGUMENT, "must be one of ROLE_ADMIN, ROLE_DEVELOPER, "
         "ROLE_ANALYST, ROLE_VIEWER, got 42"),
        ("short password", create(unique("h"), password="short"),
         grpc.StatusCode.INVALID_ARGUMENT, "8 to"),
        ("bad name", create("no spaces/allowed"), grpc.StatusCode.INVALID_ARGUMENT,
         "letters, digits"),
        ("empty name", create(""), grpc.StatusCode.INVALID_ARGUMENT, "is not allowed"),
        ("set role of nobody", users.SetRole(auth_pb2.SetRoleRequest(
            username=missing, role=auth_pb2.ROLE_VIEWER), metadata=admin, timeout=5),
         grpc.StatusCode.NOT_FOUND, missing),
        ("set a bad role", users.SetRole(auth_pb2.SetRoleRequest(
            username=taken), metadata=admin, timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "role is required"),
        ("reset a short password", users.ResetPassword(auth_pb2.ResetPasswordRequest(
            username=taken, password="1234"), metadata=admin, timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "8 to"),
        ("reset password of nobody", users.ResetPassword(auth_pb2.ResetPasswordRequest(
            username=missing, password=PASSWORD), metadata=admin, timeout=10),
         grpc.StatusCode.NOT_FOUND, missing),
        ("disable nobody", users.DisableUser(auth_pb2.DisableUserRequest(
            username=missing, disabled=True), metadata=admin, timeout=5),
         grpc.StatusCode.NOT_FOUND, missing),
        ("delete nobody", users.DeleteUser(auth_pb2.DeleteUserRequest(username=missing),
                                           metadata=admin, timeout=5),
         grpc.StatusCode.NOT_FOUND, missing),
    ]
    wrong = []
    for case, call, code, words in cases:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            if error.code() != code or words not in str(error.details()):
                wrong.append(f"{case}: {error.code().name} {error.details()!r}")
        else:
            wrong.append(f"{case}: succeeded")
    assert not wrong, "UserService answered unexpectedly:\n" + "\n".join(wrong)


# -- two gateways -----------------------------------------------------------------------


async def test_sign_out_on_one_gateway_is_honoured_by_another(mesh: MeshHarness) -> None:
    second = Gateway(mesh.config)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as other:
            user = await add_user(mesh, "developer")
            tokens = await login(mesh.channel, user)  # on gateway A
            echo_b = echo_pb2_grpc.EchoServiceStub(other)
            await wait_for(lambda: "revo.echo.v1.EchoService" in (
                second._view.snapshot.services if second._view else {}), 5,
                "gateway B to see the echo service")
            reply = await echo_b.Echo(echo_pb2.EchoRequest(payload=b"b"),
                                      metadata=bearer(tokens.access_token), timeout=5)
            assert reply.caller == user
            # a refresh token used on A is used up on B too
            rotated = (await auth_pb2_grpc.AuthServiceStub(mesh.channel).Refresh(
                auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token), timeout=5)).tokens
            await auth_pb2_grpc.AuthServiceStub(mesh.channel).Logout(
                auth_pb2.LogoutRequest(refresh_token=rotated.refresh_token),
                metadata=bearer(tokens.access_token), timeout=5)

            async def refused_on_b(token: str) -> bool:
                try:
                    await echo_b.Echo(echo_pb2.EchoRequest(), metadata=bearer(token), timeout=5)
                except grpc.aio.AioRpcError as error:
                    if error.code() != UNAUTHENTICATED:
                        raise
                    return True
                return False

            await wait_for(lambda: refused_on_b(tokens.access_token), 5,
                           "gateway B to refuse the signed-out access token")
            auth_b = auth_pb2_grpc.AuthServiceStub(other)
            for token in (tokens.refresh_token, rotated.refresh_token):
                error = await refused(auth_b.Refresh(auth_pb2.RefreshRequest(
                    refresh_token=token), timeout=5))
                assert error.code() == UNAUTHENTICATED
            # the rotated access token was not signed out: still good on B
            reply = await echo_b.Echo(echo_pb2.EchoRequest(), timeout=5,
                                      metadata=bearer(rotated.access_token))
            assert reply.caller == user
    finally:
        await second.stop(grace=1.0)
