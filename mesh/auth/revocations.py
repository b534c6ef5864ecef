"""Revoked tokens, shared by every gateway through a JetStream KV bucket.

Two kinds of entries:

``jti.<id>``
    one token (a logout, a used refresh token); the entry expires with the token.
``user.<name>``
    every token of a user issued before the user's current generation (role change,
    password reset, disabling, deletion); tokens carry the generation they were issued in.

Each gateway mirrors the bucket in memory through a watch, so checking a token costs a
dictionary lookup and a revocation written by one gateway reaches the others within
milliseconds.
"""

from __future__ import annotations

import logging
import math
import time

from nats.aio.client import Client as NATS
from nats.js.errors import KeyWrongLastSequenceError

from mesh.auth.tokens import Claims
from mesh.transport import subjects
from mesh.transport.kv import KeyValue, Mirror, open_bucket

__all__ = ["BUCKET", "RevocationList"]

log = logging.getLogger(__name__)

BUCKET = subjects.REVOCATIONS_BUCKET
_JTI = "jti."
_USER = "user."


class RevocationList:
    def __init__(self, nc: NATS, keep_s: float) -> None:
        """``keep_s``: how long a user entry is kept (the longest token lifetime)."""
        self._nc = nc
        self._keep_s = keep_s
        self._tokens: dict[str, float] = {}
        self._generations: dict[str, int] = {}
        self._bucket: KeyValue | None = None
        self._mirror: Mirror | None = None

    async def open(self) -> None:
        """Open the bucket for writing only (``revo users``)."""
        self._bucket = await open_bucket(self._nc, BUCKET, ttl=self._keep_s,
                                         description="revo: revoked tokens and users")

    async def start(self) -> None:
        await self.open()
        assert self._bucket is not None
        self._mirror = Mirror(self._bucket, self._put, self._delete, nc=self._nc)
        await self._mirror.start()

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    def _put(self, key: str, value: bytes) -> None:
        if key.startswith(_JTI):
            if len(self._tokens) > 100_000:
                self.forget_expired()
            self._tokens[key[len(_JTI):]] = float(value)
        elif key.startswith(_USER):
            self._generations[key[len(_USER):]] = int(value)

    def _delete(self, key: str) -> None:
        if key.startswith(_JTI):
            self._tokens.pop(key[len(_JTI):], None)
        elif key.startswith(_USER):
            self._generations.pop(key[len(_USER):], None)

    def reason(self, claims: Claims) -> str:
        """Why the token is revoked; '' when it is not."""
        if claims.jti in self._tokens:
            return "the token was revoked (signed out); sign in again"
        if claims.generation < self._generations.get(claims.user, 0):
            return ("the user's tokens were revoked (role, password or status changed); "
                    "sign in again")
        return ""

    async def revoke_token(self, claims: Claims) -> bool:
        """Revoke one token; False when it was revoked already (a refresh token raced)."""
        assert self._bucket is not None
        ttl = max(1, math.ceil(claims.expires_at - time.time()) + 1)
        self._tokens[claims.jti] = claims.expires_at
        try:
            await self._bucket.create(_JTI + claims.jti, str(claims.expires_at).encode(),
                                      msg_ttl=ttl)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def revoke_user(self, user: str, generation: int) -> None:
        """Revoke every token of ``user`` issued in a generation before ``generation``."""
        assert self._bucket is not None
        self._generations[user] = generation
        await self._bucket.put(_USER + user, str(generation).encode())

    def forget_expired(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for jti in [j for j, exp in self._tokens.items() if exp < now]:
            del self._tokens[jti]
