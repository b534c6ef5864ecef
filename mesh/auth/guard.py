"""The gate every call passes at the gateway: who, may they, how often, and the record.

:meth:`Guard.identify` authenticates the bearer token (an access token or an API key) and
checks revocation;
:meth:`Guard.authorize` checks the permission the method declares and takes one request
from the caller's rate limits;
:meth:`Guard.record` appends the audit record when the call ends (allowed or not).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from mesh.auth.audit import AuditLog, AuditRecord
from mesh.auth.identity import IdentitySeal
from mesh.auth.key_cache import ApiKeyCache
from mesh.auth.keys import ApiKeyStore, is_api_key
from mesh.auth.limiter import SharedLimiter
from mesh.auth.revocations import RevocationList
from mesh.auth.roles import PUBLIC, Permission, grants, permission_name
from mesh.auth.tokens import Claims, Keyring, TokenService
from mesh.auth.users import UserStore
from mesh.config import Limit, MeshConfig
from mesh.errors import PermissionDenied, RateLimited, Reason, RpcError, Unauthenticated
from mesh.transport import subjects
from mesh.transport.connection import MeshConnection

__all__ = ["ANONYMOUS", "AUTHORIZATION_METADATA", "Guard", "Principal", "current_principal"]

log = logging.getLogger(__name__)

AUTHORIZATION_METADATA = "authorization"
_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """Who is calling: a signed-in user, a program with an API key (acting as the key's
    owner, with the key's role), or anonymous (public methods, auth off)."""

    user: str = ""
    role: str = ""
    claims: Claims | None = None
    """The access token's claims (None for an API key, or anonymous)."""
    key: str = ""
    """The API key's id ('' for an access token, or anonymous)."""


ANONYMOUS = Principal()

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "current_principal", default=ANONYMOUS)
"""The caller of the call being served (the gateway's own services read it)."""


def bearer_token(authorization: str) -> str:
    """The token in an ``authorization`` metadata value ('' when there is none)."""
    if not authorization:
        return ""
    if authorization[:len(_BEARER)].lower() != _BEARER:
        raise Unauthenticated("the authorization metadata must be 'Bearer <access token>' "
                              "or 'Bearer <API key>'")
    return authorization[len(_BEARER):].strip()


class Guard:
    """Authentication, authorization, rate limits and audit for one gateway."""

    def __init__(self, config: MeshConfig, nc: MeshConnection, gateway_id: str,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        settings = config.auth
        self.enabled = settings.enabled
        self.gateway_id = gateway_id
        self.tokens = TokenService(settings, Keyring.from_settings(
            settings, Path(config.home), environ)) if self.enabled else None
        self.seal = IdentitySeal.from_config(config, environ) if self.enabled else None
        self.users = UserStore(nc)
        self.keys = ApiKeyStore(self.users)
        self.key_cache = ApiKeyCache(nc, self.keys)
        self.revocations = RevocationList(nc, keep_s=settings.refresh_ttl_s + settings.leeway_s)
        limits = settings.rate_limits
        windows = [lim.window_s for lim in [*limits.roles.values(), *limits.methods.values()]]
        self.limiter = SharedLimiter(
            nc, longest_window_s=max([settings.login.window_s, *windows]),
            fail_open=limits.fail_open)
        self.rate_limits = self.enabled and limits.enabled
        self.audit = AuditLog(nc, settings.audit, gateway_id) if settings.audit.enabled else None
        self.active = self.enabled or self.audit is not None
        """False when the guard has nothing to check or record (auth and audit off)."""
        self._nc: NATS = nc

    async def start(self) -> None:
        if self.enabled:
            await self.users.start()
            await self.key_cache.start()
            await self.revocations.start()
            await self.limiter.start()
        if self.audit is not None:
            await self.audit.start()

    async def stop(self) -> None:
        if self.audit is not None:
            await self.audit.stop()
        await self.limiter.stop()
        await self.revocations.stop()
        await self.key_cache.stop()

    # -- the checks -------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The caller an access token or API key (``revo_...``) names, or
        :class:`Unauthenticated` saying why it is refused."""
        if is_api_key(token):
            key, role = self.key_cache.authenticate(token)
            return Principal(key.owner, role, key=key.id)
        assert self.tokens is not None
        claims = self.tokens.verify(token)
        reason = self.revocations.reason(claims)
        if reason:
            raise Unauthenticated(reason, reason=Reason.TOKEN_REVOKED)
        return Principal(claims.user, claims.role, claims)

    def identify(self, path: str, permission: Permission, authorization: str) -> Principal:
        """Who calls (from the ``authorization`` metadata or HTTP header, '' when absent:
        ``Bearer <access token>`` or ``Bearer <API key>``), or :class:`Unauthenticated`
        when the method needs a signed-in caller and has none. Synchronous: tokens are
        checked against in-memory mirrors, never NATS."""
        if not self.enabled:
            return ANONYMOUS
        token = bearer_token(authorization)
        if permission == PUBLIC:
            try:
                return self.authenticate(token) if token else ANONYMOUS
            except Unauthenticated:  # a stale token must not keep anyone from signing in
                return ANONYMOUS
        if not token:
            raise Unauthenticated(
                f"{path} needs a signed-in caller: send metadata 'authorization: Bearer "
                "<access token>' (from /revo.auth.v1.AuthService/Login) or 'authorization: "
                "Bearer <API key>'",
                reason=Reason.TOKEN_MISSING)
        return self.authenticate(token)

    async def authorize(self, principal: Principal, path: str, permission: Permission) -> None:
        """Refuse with :class:`PermissionDenied` or :class:`RateLimited`, or return."""
        if not self.enabled or permission == PUBLIC:
            return
        if not grants(principal.role, permission):
            raise PermissionDenied(
                f"role '{principal.role}' lacks the '{permission_name(permission)}' "
                f"permission that {path} needs",
                metadata={"permission": permission_name(permission)})
        if self.rate_limits:
            await self._limit(principal, path)

    async def _limit(self, principal: Principal, path: str) -> None:
        limits = self.config.auth.rate_limits
        role_limit: Limit | None = limits.roles.get(principal.role)
        if role_limit is not None:
            await self.limiter.acquire(f"user.{principal.user}", role_limit)
        method_limit = limits.methods.get(path)
        if method_limit is not None:
            try:
                await self.limiter.acquire(
                    f"method.{principal.user}.{subjects.subject_token(path)}", method_limit)
            except RateLimited as refused:
                refused.metadata["method"] = path  # which limit: the method's, not the role's
                raise

    def identity_headers(self, principal: Principal, path: str,
                         expires_ms: int) -> dict[str, str]:
        """Sealed identity for the node (anonymous callers of public methods too)."""
        if self.seal is None:
            return {}
        return self.seal.headers(principal.user, principal.role, path, expires_ms)

    # -- the record -------------------------------------------------------------------

    def record(self, *, path: str, permission: Permission, principal: Principal | None,
               admitted: bool, error: RpcError | None, started: float, request_id: str,
               peer: str, status: str = "") -> None:
        """Append the call's audit record; ``admitted`` is False for a call the guard
        refused (it never ran)."""
        if self.audit is None:
            return
        denied = not admitted
        self.audit.record(AuditRecord(
            time=time.time(), request_id=request_id, gateway=self.gateway_id, peer=peer,
            user=principal.user if principal else "", role=principal.role if principal else "",
            method=path, permission=permission_name(permission),
            decision="deny" if denied else "allow",
            reason=error.message if denied and error is not None else "",
            status=status or (error.code.name if error is not None else "OK"),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            key=principal.key if principal else ""))
