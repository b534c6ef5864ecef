"""The gateway's copy of every API key and of each user's standing, kept by a KV watch.

Checking a key must not cost a NATS round trip per call, so each gateway mirrors the
users bucket (:mod:`mesh.auth.keys` describes its ``keys.`` entries): a key's record, and
of each user only the role, whether disabled, and when created (never the password hash).
A key created, revoked or whose owner is disabled on one gateway reaches every other
within milliseconds of the write (a second at worst).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from mesh.auth.keys import RECORD_PREFIX, ApiKey, ApiKeyStore, parse_api_key, secret_hash
from mesh.auth.roles import lower_role
from mesh.auth.users import USER_PREFIX, User
from mesh.errors import Reason, Unauthenticated
from mesh.transport.kv import Mirror

__all__ = ["ApiKeyCache"]

log = logging.getLogger(__name__)

_USED_EVERY_S = 60.0
"""How often a gateway records a key's last use (one KV write per key per minute)."""


@dataclass(frozen=True, slots=True)
class _Standing:
    role: str
    disabled: bool
    created_at: float


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class ApiKeyCache:
    def __init__(self, nc: NATS, store: ApiKeyStore) -> None:
        self._nc = nc
        self._store = store
        self._keys: dict[str, ApiKey] = {}
        self._users: dict[str, _Standing] = {}
        self._used: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._mirror: Mirror | None = None

    async def start(self) -> None:
        """Returns once the bucket's current keys and users are here."""
        self._mirror = Mirror(self._store.bucket, self._put, self._delete, nc=self._nc)
        await self._mirror.start()

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
        for task in list(self._writes):
            task.cancel()

    def _put(self, key: str, value: bytes) -> None:
        if key.startswith(RECORD_PREFIX):
            self.remember(ApiKey.decode(value))
        elif key.startswith(USER_PREFIX):
            user = User.decode(value)
            self._users[user.username] = _Standing(user.role, user.disabled, user.created_at)

    def _delete(self, key: str) -> None:
        if key.startswith(RECORD_PREFIX):
            self._keys.pop(key[len(RECORD_PREFIX):], None)
        elif key.startswith(USER_PREFIX):
            self._users.pop(key[len(USER_PREFIX):], None)

    def remember(self, key: ApiKey) -> None:
        """Take ``key`` as it is now (this gateway's own writes, before the watch echoes
        them)."""
        self._keys[key.id] = key

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def authenticate(self, token: str, now: float | None = None) -> tuple[ApiKey, str]:
        """The key ``token`` is and the role its calls get, or :class:`Unauthenticated`
        saying why not (malformed, unknown, revoked, expired, owner gone or disabled).
        Whether a key is revoked or expired is told only to who holds its secret."""
        key_id, secret = parse_api_key(token)
        key = self._keys.get(key_id)
        if key is None or not hmac.compare_digest(key.secret_sha256, secret_hash(secret)):
            raise Unauthenticated("unknown API key (never issued, or mistyped): create one "
                                  "with CreateApiKey or `revo keys create`")
        named = f"API key {key.id} ({key.name!r})"
        if key.revoked:
            raise Unauthenticated(f"{named} was revoked at {_when(key.revoked_at)}; create a "
                                  "new key", reason=Reason.TOKEN_REVOKED)
        now = time.time() if now is None else now
        if now >= key.expires_at:
            raise Unauthenticated(f"{named} expired at {_when(key.expires_at)}; create a new "
                                  "key", reason=Reason.TOKEN_EXPIRED)
        owner = self._users.get(key.owner)
        if owner is None or owner.created_at > key.created_at:
            raise Unauthenticated(f"{named}: its owner {key.owner!r} no longer exists",
                                  reason=Reason.TOKEN_REVOKED)
        if owner.disabled:
            raise Unauthenticated(f"{named}: its owner {key.owner!r} is disabled; ask an "
                                  "admin", reason=Reason.TOKEN_REVOKED)
        self._touch(key.id, now)
        return key, lower_role(key.role, owner.role)

    def _touch(self, key_id: str, now: float) -> None:
        if now - self._used.get(key_id, 0.0) < _USED_EVERY_S:
            return
        self._used[key_id] = now
        try:
            task = asyncio.get_running_loop().create_task(self._record_use(key_id, now))
        except RuntimeError:  # no loop (a check outside the gateway): nothing to record
            return
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record_use(self, key_id: str, now: float) -> None:
        try:
            await self._store.touch(key_id, now)
        except Exception as exc:  # a lost "last used" costs nothing but its display
            log.debug("could not record the use of API key %s: %s", key_id, exc)
