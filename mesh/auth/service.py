"""``revo.auth.v1.AuthService`` and ``UserService``, served by every gateway.

API keys (``UserService.*ApiKey``): any signed-in user manages their own keys; admins list
and revoke anyone's. Only a signed-in user creates keys, never a caller holding a key: a
leaked key must not be able to mint keys that outlive its revocation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.auth.guard import Guard, Principal, current_principal
from mesh.auth.keys import ApiKey, key_expiry
from mesh.auth.passwords import verify_password
from mesh.auth.roles import MANAGE, ROLES, grants, role_message, role_name
from mesh.auth.tokens import ACCESS, REFRESH, Claims
from mesh.auth.users import _NAME, Accounts, User
from mesh.config import Limit
from mesh.errors import (
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    Reason,
    Unauthenticated,
    Unavailable,
)
from mesh.pagination import decode_page_token, encode_page_token, page_size, take_page
from mesh.v1 import auth_pb2, auth_pb2_grpc

__all__ = ["AuthServicer", "UserServicer"]

log = logging.getLogger(__name__)

ServicerContext = grpc.aio.ServicerContext[Any, Any]

_LOGIN_REFUSED = "wrong user name or password"


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1`` (the port changes per connection)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]%")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


def user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(username=user.username, role=role_message(user.role),
                         disabled=user.disabled,
                         created_at=_timestamp(user.created_at),
                         updated_at=_timestamp(user.updated_at))


def api_key_message(key: ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(id=key.id, name=key.name, owner=key.owner,
                              role=role_message(key.role),
                              created_at=_timestamp(key.created_at),
                              expires_at=_timestamp(key.expires_at), revoked=key.revoked)
    if key.last_used_at:
        message.last_used_at.CopyFrom(_timestamp(key.last_used_at))
    if key.revoked:
        message.revoked_at.CopyFrom(_timestamp(key.revoked_at))
    return message


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def _tokens(self, user: User) -> auth_pb2.Tokens:
        tokens = self._guard.tokens
        if tokens is None:
            raise Unavailable("sign-in is off on this gateway (auth.enabled = false)")
        access, access_claims = tokens.issue(user.username, user.role, ACCESS, user.generation)
        refresh, refresh_claims = tokens.issue(user.username, user.role, REFRESH,
                                               user.generation)
        return auth_pb2.Tokens(access_token=access,
                               access_expires_at=_timestamp(access_claims.expires_at),
                               refresh_token=refresh,
                               refresh_expires_at=_timestamp(refresh_claims.expires_at),
                               token_type="Bearer")

    async def _throttle(self, keys: list[tuple[str, Limit]], add: int) -> None:
        guard = self._guard
        try:
            counts = await asyncio.gather(*(guard.limiter.count(k, lim, add) for k, lim in keys))
        except Unavailable:
            if guard.config.auth.rate_limits.fail_open:
                return
            raise
        if add:
            return
        for (key, limit), (estimate, wait) in zip(keys, counts, strict=True):
            if estimate >= limit.burst:
                what = "user" if key.startswith("login.user.") else "address"
                raise RateLimited(f"too many failed sign-ins for this {what}; retry after "
                                  f"{wait:.0f} s", wait)

    async def Login(self, request: auth_pb2.LoginRequest,
                    context: ServicerContext) -> auth_pb2.LoginResponse:  # type: ignore[override]
        guard = self._guard
        if not request.username or not request.password:
            raise InvalidArgument("Login needs a username and a password")
        settings = guard.config.auth.login
        host = _peer_host(context.peer() or "")
        address = "a" + hashlib.sha256(host.encode()).hexdigest()[:24]
        name_key = "u" + hashlib.sha256(request.username.encode()).hexdigest()[:24]
        keys = [(f"login.user.{name_key}", Limit(rate=settings.per_user / settings.window_s,
                                                   burst=settings.per_user)),
                (f"login.addr.{address}", Limit(rate=settings.per_address / settings.window_s,
                                                  burst=settings.per_address))]
        if _NAME.match(request.username):  # the audit record names who tried
            current_principal.set(Principal(user=request.username))
        await self._throttle(keys, 0)
        user = await guard.users.get(request.username)
        ok = await asyncio.to_thread(verify_password, request.password,
                                     user.password_hash if user else None)
        if not ok or user is None or user.disabled:
            await self._throttle(keys, 1)
            log.info("sign-in refused for %r from %s", request.username[:64], host)
            raise Unauthenticated(_LOGIN_REFUSED if not (ok and user and user.disabled)
                                  else "this user is disabled; ask an admin")
        current_principal.set(Principal(user=user.username, role=user.role))
        return auth_pb2.LoginResponse(tokens=self._tokens(user))

    async def Refresh(self, request: auth_pb2.RefreshRequest,
                      context: ServicerContext) -> auth_pb2.RefreshResponse:  # type: ignore[override]
        guard = self._guard
        if guard.tokens is None:
            raise Unavailable("sign-in is off on this gateway (auth.enabled = false)")
        claims = guard.tokens.verify(request.refresh_token, REFRESH)
        reason = guard.revocations.reason(claims)
        if reason:
            raise Unauthenticated(reason.replace("token", "refresh token", 1),
                                  reason=Reason.TOKEN_REVOKED)
        user = await guard.users.get(claims.user)
        if user is None or user.disabled:
            raise Unauthenticated("this user no longer exists or is disabled")
        if not await guard.revocations.revoke_token(claims):  # one use only, even when raced
            raise Unauthenticated("the refresh token was already used; sign in again",
                                  reason=Reason.TOKEN_REVOKED)
        return auth_pb2.RefreshResponse(tokens=self._tokens(user))

    async def Logout(self, request: auth_pb2.LogoutRequest,
                     context: ServicerContext) -> auth_pb2.LogoutResponse:  # type: ignore[override]
        guard = self._guard
        principal = current_principal.get()
        revoke: list[Claims] = [principal.claims] if principal.claims else []
        if request.refresh_token and guard.tokens is not None:
            refresh = guard.tokens.verify(request.refresh_token, REFRESH)
            if refresh.user != principal.user:
                raise InvalidArgument("the refresh token belongs to another user")
            revoke.append(refresh)
        for claims in revoke:
            await guard.revocations.revoke_token(claims)
        return auth_pb2.LogoutResponse()

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest,
                     context: ServicerContext) -> auth_pb2.WhoAmIResponse:  # type: ignore[override]
        principal = current_principal.get()
        reply = auth_pb2.WhoAmIResponse(username=principal.user,
                                        role=role_message(principal.role),
                                        permissions=sorted(ROLES.get(principal.role, frozenset())))
        if principal.claims is not None:
            reply.expires_at.CopyFrom(_timestamp(principal.claims.expires_at))
        elif principal.key:
            key = self._guard.key_cache.get(principal.key)
            if key is not None:
                reply.expires_at.CopyFrom(_timestamp(key.expires_at))
        return reply


class _AuthOff:
    """Stands in for the user store when auth is off: every call says so."""

    def __getattr__(self, name: str) -> Any:
        raise Unavailable("users are not managed here: auth is off on this gateway "
                          "(auth.enabled = false)")


class UserServicer(auth_pb2_grpc.UserServiceServicer):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._accounts: Any = (Accounts(guard.users, guard.revocations.revoke_user)
                               if guard.enabled else _AuthOff())

    async def CreateUser(self, request: auth_pb2.CreateUserRequest,
                         context: ServicerContext) -> auth_pb2.CreateUserResponse:  # type: ignore[override]
        user = await self._accounts.create(request.username, role_name(request.role),
                                           request.password)
        log.info("user %s created (role %s) by %s", user.username, user.role,
                 current_principal.get().user)
        return auth_pb2.CreateUserResponse(user=user_message(user))

    async def ListUsers(self, request: auth_pb2.ListUsersRequest,
                        context: ServicerContext) -> auth_pb2.ListUsersResponse:  # type: ignore[override]
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token, "users", (str,))
        users, last = take_page(await self._accounts.users.list(), lambda u: u.username,
                                size, after and after[0])
        return auth_pb2.ListUsersResponse(
            users=[user_message(u) for u in users],
            next_page_token=encode_page_token((last,), "users") if last else "")

    async def SetRole(self, request: auth_pb2.SetRoleRequest,
                      context: ServicerContext) -> auth_pb2.SetRoleResponse:  # type: ignore[override]
        user = await self._accounts.set_role(request.username, role_name(request.role))
        return auth_pb2.SetRoleResponse(user=user_message(user))

    async def ResetPassword(self, request: auth_pb2.ResetPasswordRequest,
                            context: ServicerContext) -> auth_pb2.ResetPasswordResponse:  # type: ignore[override]
        user = await self._accounts.reset_password(request.username, request.password)
        return auth_pb2.ResetPasswordResponse(user=user_message(user))

    async def DisableUser(self, request: auth_pb2.DisableUserRequest,
                          context: ServicerContext) -> auth_pb2.DisableUserResponse:  # type: ignore[override]
        user = await self._accounts.set_disabled(request.username, request.disabled)
        return auth_pb2.DisableUserResponse(user=user_message(user))

    async def DeleteUser(self, request: auth_pb2.DeleteUserRequest,
                         context: ServicerContext) -> auth_pb2.DeleteUserResponse:  # type: ignore[override]
        await self._accounts.delete(request.username)
        return auth_pb2.DeleteUserResponse()

    # -- API keys ---------------------------------------------------------------------

    async def CreateApiKey(self, request: auth_pb2.CreateApiKeyRequest,
                           context: ServicerContext) -> auth_pb2.CreateApiKeyResponse:  # type: ignore[override]
        principal = current_principal.get()
        if principal.key:
            raise PermissionDenied("an API key cannot create API keys: sign in with a "
                                   "password (Login), or ask an operator (`revo keys create`)")
        owner = await self._accounts.users.get(principal.user)
        if owner is None:
            raise PermissionDenied(f"{principal.user!r} is not a user of this mesh (an "
                                   "operator token?): keys belong to users; use `revo keys "
                                   "create --user NAME`")
        now = time.time()
        expiry = key_expiry(
            self._guard.config.auth.api_keys, now,
            expires_in_s=request.expires_in_s if request.HasField("expires_in_s") else None,
            expires_at=(request.expires_at.ToNanoseconds() / 1e9
                        if request.HasField("expires_at") else None))
        key, secret = await self._accounts.keys.create(owner, request.name,
                                                       role_name(request.role,
                                                                 default=owner.role),
                                                       expiry, now)
        self._guard.key_cache.remember(key)
        log.info("API key %s (%r, role %s) created for %s", key.id, key.name, key.role,
                 key.owner)
        return auth_pb2.CreateApiKeyResponse(key=api_key_message(key), secret=secret)

    async def ListApiKeys(self, request: auth_pb2.ListApiKeysRequest,
                          context: ServicerContext) -> auth_pb2.ListApiKeysResponse:  # type: ignore[override]
        principal = current_principal.get()
        if request.all_users and request.owner:
            raise InvalidArgument(violations=[("owner", "must be empty with all_users")])
        owner = request.owner or principal.user
        if (request.all_users or owner != principal.user) and not grants(principal.role,
                                                                          MANAGE):
            raise PermissionDenied("only admins list other users' API keys; leave owner "
                                   "empty for your own")
        size = page_size(request.page_size)
        query = [None if request.all_users else owner]
        after = decode_page_token(request.page_token, query, (float, str))
        keys, last = take_page(await self._accounts.keys.list(query[0]),
                               lambda k: (k.created_at, k.id), size, after)
        return auth_pb2.ListApiKeysResponse(
            keys=[api_key_message(k) for k in keys],
            next_page_token=encode_page_token(last, query) if last else "")

    async def RevokeApiKey(self, request: auth_pb2.RevokeApiKeyRequest,
                           context: ServicerContext) -> auth_pb2.RevokeApiKeyResponse:  # type: ignore[override]
        principal = current_principal.get()
        key = await self._accounts.keys.require(request.id)
        if key.owner != principal.user and not grants(principal.role, MANAGE):
            raise PermissionDenied(f"API key {key.id} is not yours; only admins revoke other "
                                   "users' keys")
        revoked = await self._accounts.keys.revoke(key.id)
        self._guard.key_cache.remember(revoked)
        log.info("API key %s of %s revoked by %s", key.id, key.owner, principal.user)
        return auth_pb2.RevokeApiKeyResponse(key=api_key_message(revoked))
