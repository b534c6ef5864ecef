"""Where a client's credentials come from, and access tokens kept fresh.

A :class:`Session` holds one of:
- a fixed token: an API key (``revo_<id>_<secret>``, it does not expire until its owner
  says so) or an access token someone else refreshes;
- a sign-in: after :meth:`Session.login` (or with ``username`` and ``password`` given,
  at the first call) the session holds the access and refresh tokens. Before a call, an
  access token within its last fifth of life (at most 60 s before its end) is traded for a
  new pair; one refresh runs at a time however many calls wait on it. A refresh refused
  (the refresh token expired or revoked) signs in again when the password is known.

A token's lifetime is read from its own claims (``exp - iat``) and counted on this
machine's monotonic clock from when it arrived, so a clock that is off from the
gateway's does not make the client refresh too late.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import grpc
from grpc import StatusCode

from mesh.errors import RpcError
from mesh.v1 import auth_pb2, auth_pb2_grpc

__all__ = ["Session", "token_lifetime_s"]

log = logging.getLogger(__name__)

_NO_TOKEN = frozenset({"/revo.auth.v1.AuthService/Login", "/revo.auth.v1.AuthService/Refresh"})
"""Methods whose call needs no token, and must not wait on a refresh (a refresh is one)."""

REFRESH_SHARE = 0.2
"""Refresh when this share of the access token's life is left..."""
REFRESH_MAX_MARGIN_S = 60.0
"""...or this many seconds, whichever is less."""


def token_lifetime_s(token: str) -> float | None:
    """``exp - iat`` of a JWT, read without checking it (the gateway checks); None for
    anything else (an API key)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"]) - float(payload["iat"])
    except (ValueError, KeyError, TypeError):
        return None


class Session:
    """A client's credentials; see the module's documentation."""

    def __init__(self, token: str = "", *, username: str = "", password: str = "") -> None:
        self.current = token
        self.tokens: auth_pb2.Tokens | None = None
        self._username, self._password = username, password
        self._refresh_at: float | None = None
        """Monotonic time after which the access token is refreshed before a call."""
        self._lock: asyncio.Lock | None = None
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub | None = None
        self.refreshes = 0
        """Access tokens obtained by refreshing (counted for tests and metrics)."""

    def bind(self, channel: grpc.aio.Channel) -> None:
        """Sign in and refresh over ``channel`` (the client's own)."""
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)

    @property
    def can_refresh(self) -> bool:
        return self.tokens is not None or bool(self._username and self._password)

    def use_token(self, token: str) -> None:
        """Send ``token`` from now on, as a fixed token: no refresh, and no sign-in again
        with a password given before."""
        self.current, self.tokens, self._refresh_at = token, None, None
        self._username = self._password = ""

    async def token(self, method: str) -> str:
        """The token for a call of ``method``: refreshed first when it is due."""
        if method in _NO_TOKEN or not self.can_refresh:
            return self.current
        if self.tokens is None or (self._refresh_at is not None
                                   and time.monotonic() >= self._refresh_at):
            due = self._refresh_at
            async with self._guard():
                if self._refresh_at == due:  # no other call refreshed it meanwhile
                    await self._renew()
        return self.current

    async def expired(self) -> None:
        """The gateway said the access token expired: get a new one now."""
        due = self._refresh_at
        async with self._guard():
            if self._refresh_at == due:
                await self._renew()

    async def login(self, username: str, password: str) -> auth_pb2.Tokens:
        """Sign in; the session keeps the password to sign in again if a refresh is
        refused (use :meth:`forget_password` not to)."""
        response = await self._stub().Login(auth_pb2.LoginRequest(username=username,
                                                                   password=password))
        self._username, self._password = username, password
        self._took(response.tokens)
        return response.tokens

    def forget_password(self) -> None:
        self._password = ""

    async def refresh(self) -> auth_pb2.Tokens:
        """Trade the refresh token for a new pair now."""
        if self.tokens is None:
            raise RuntimeError("sign in first (login())")
        response = await self._stub().Refresh(auth_pb2.RefreshRequest(
            refresh_token=self.tokens.refresh_token))
        self.refreshes += 1
        self._took(response.tokens)
        return response.tokens

    async def logout(self) -> None:
        """Revoke both tokens on every gateway, and forget them."""
        refresh = self.tokens.refresh_token if self.tokens else ""
        await self._stub().Logout(auth_pb2.LogoutRequest(refresh_token=refresh))
        self.current, self.tokens, self._refresh_at = "", None, None
        self._username = self._password = ""

    async def _renew(self) -> None:
        if self.tokens is not None:
            try:
                await self.refresh()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAUTHENTICATED or not self._password:
                    raise _typed(exc) from None
                log.info("the refresh token was refused (%s); signing in again",
                         exc.details())
        if not (self._username and self._password):
            raise RuntimeError("sign in first (login())")
        try:
            await self.login(self._username, self._password)
        except grpc.aio.AioRpcError as exc:
            raise _typed(exc) from None

    def _took(self, tokens: auth_pb2.Tokens) -> None:
        self.tokens, self.current = tokens, tokens.access_token
        lifetime = token_lifetime_s(tokens.access_token)
        self._refresh_at = None if lifetime is None else time.monotonic() + lifetime - min(
            REFRESH_MAX_MARGIN_S, lifetime * REFRESH_SHARE)

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _stub(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        if self.auth is None:
            raise RuntimeError("the session is not bound to a client's channel")
        return self.auth


def _typed(exc: grpc.aio.AioRpcError) -> RpcError:
    from mesh.client.connection import rpc_error

    error = rpc_error(exc)
    if error.code is StatusCode.UNAUTHENTICATED:
        error.message = f"signing in again failed: {error.message}"
    return error
