"""API keys: long-lived credentials for programs, stored hashed beside the users.

A key reads ``revo_<id>_<secret>``: ``id`` is 16 hex digits, ``secret`` 32 random bytes in
URL-safe base64 (43 characters). Bucket ``revo_users`` holds, for each key:

``keys.<id>``
    JSON: name, owner, role, created_at, expires_at, revoked_at (0: not revoked) and
    ``secret_sha256``, the SHA-256 of the secret. A 256-bit random secret needs no slow
    hash (there is nothing to guess), and the secret itself is never stored or logged.
``keyuse.<id>``
    when a gateway last admitted a call made with the key (each gateway writes it at most
    once a minute per key).

A call made with a key acts as the key's owner with the key's role (the owner's, when the
owner has been moved to a lower role since). Gateways check keys against a mirror of this
bucket (:mod:`mesh.auth.key_cache`); :class:`ApiKeyStore` is the writing side, used by
``UserService`` and ``revo keys``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from mesh.auth.roles import ROLES, role_within
from mesh.config import ApiKeySettings
from mesh.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from mesh.transport.kv import snapshot

if TYPE_CHECKING:
    from mesh.auth.users import User, UserStore
    from mesh.transport.kv import KeyValue

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeyStore", "check_key_id", "check_key_name", "is_api_key",
           "key_expiry", "parse_api_key", "secret_hash"]

KEY_PREFIX = "revo_"
RECORD_PREFIX = "keys."
USED_PREFIX = "keyuse."
_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")
_NAME_MAX = 64
_MALFORMED = ("the API key is malformed: expected revo_<16 hex digits>_<43-character "
              "secret>, exactly as CreateApiKey or `revo keys create` printed it")


def is_api_key(token: str) -> bool:
    """Whether a bearer value is meant as an API key (access tokens are JWTs: ``eyJ...``)."""
    return token.startswith(KEY_PREFIX)


def parse_api_key(token: str) -> tuple[str, str]:
    """A key's id and secret, or :class:`Unauthenticated` saying what shape is expected
    (never repeating the value, which may be a secret)."""
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if not token.startswith(KEY_PREFIX) or not sep or not _ID.match(key_id) or (
            not _SECRET.match(secret)):
        raise Unauthenticated(_MALFORMED)
    return key_id, secret


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_key_name(name: str) -> str:
    if not 1 <= len(name) <= _NAME_MAX or not name.isprintable() or not name.strip():
        raise InvalidArgument(violations=[("name", f"must be 1 to {_NAME_MAX} printable "
                                           "characters, not blank (e.g. 'ci' or 'editor')")])
    return name


def key_expiry(settings: ApiKeySettings, now: float, *, expires_in_s: int | None = None,
               expires_at: float | None = None) -> float:
    """When a key asked for with this expiry (or none: the default) stops working."""
    if expires_in_s is None and expires_at is None:
        return now + settings.default_ttl_s
    if expires_at is None:
        what, ttl = "expires_in_s", float(expires_in_s or 0)
    else:
        what, ttl = "expires_at", expires_at - now
    if ttl < 1:
        raise InvalidArgument(violations=[(what, "must be at least 1 s in the future")])
    if ttl > settings.max_ttl_s:
        raise InvalidArgument(violations=[(what, (
            f"must be at most {settings.max_ttl_s} s ({settings.max_ttl_s / 86400:g} days, "
            f"auth.api_keys.max_ttl_s) from now, got {ttl:.0f} s"))])
    return now + ttl


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (``last_used_at`` comes from its ``keyuse.`` entry)."""

    id: str
    name: str
    owner: str
    role: str
    created_at: float
    expires_at: float
    secret_sha256: str = field(repr=False)
    revoked_at: float = 0.0
    last_used_at: float = 0.0

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0

    def encode(self) -> bytes:
        stored = asdict(self)
        del stored["last_used_at"]
        return json.dumps(stored, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ApiKey:
        stored: dict[str, Any] = json.loads(data)
        known = {f.name for f in fields(cls)}  # records written by a later version load
        return cls(**{k: v for k, v in stored.items() if k in known})


def check_key_id(key_id: str) -> str:
    if not _ID.match(key_id):
        raise InvalidArgument(violations=[("id", "must be a key's id: 16 hex digits, as "
                                           "ListApiKeys or `revo keys list` shows it")])
    return key_id


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"no API key {key_id!r}; ListApiKeys or `revo keys list` shows them")


class ApiKeyStore:
    """Creates, lists and revokes keys in the users bucket (open it with the UserStore)."""

    def __init__(self, users: UserStore) -> None:
        self._users = users

    @property
    def bucket(self) -> KeyValue:
        return self._users.bucket

    async def create(self, owner: User, name: str, role: str, expires_at: float,
                     now: float | None = None) -> tuple[ApiKey, str]:
        """A new key of ``owner`` and the whole key text (``revo_<id>_<secret>``), which
        the caller must show once and forget."""
        check_key_name(name)
        if role not in ROLES:
            raise InvalidArgument(violations=[("role", f"unknown role {role[:40]!r}; roles: "
                                               f"{', '.join(ROLES)}")])
        if not role_within(role, owner.role):
            raise PermissionDenied(
                f"a key's role may be at most its owner's: {owner.username} is "
                f"{owner.role}, so ask for {owner.role} or lower, not {role}",
                metadata={"role": role, "owner_role": owner.role})
        if owner.disabled:
            raise PermissionDenied(f"user {owner.username} is disabled and cannot hold keys")
        now = time.time() if now is None else now
        for _ in range(4):  # 64-bit ids: a clash is astronomically rare, but harmless
            key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
            key = ApiKey(key_id, name, owner.username, role, now, expires_at,
                         secret_hash(secret))
            try:
                await self.bucket.create(RECORD_PREFIX + key_id, key.encode())
            except KeyWrongLastSequenceError:
                continue
            return key, f"{KEY_PREFIX}{key_id}_{secret}"
        raise Unavailable("could not pick a free key id; try again")

    async def get(self, key_id: str) -> ApiKey | None:
        if not _ID.match(key_id):
            return None
        try:
            entry = await self.bucket.get(RECORD_PREFIX + key_id)
        except KeyNotFoundError:
            return None
        return ApiKey.decode(entry.value) if entry.value else None

    async def require(self, key_id: str) -> ApiKey:
        key = await self.get(check_key_id(key_id))
        if key is None:
            raise _not_found(key_id)
        return key

    async def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (of ``owner``), oldest first, with when each was last used."""
        keys: list[ApiKey] = []
        used: dict[str, float] = {}
        for _name, value in await snapshot(self.bucket, f"{RECORD_PREFIX}>"):
            key = ApiKey.decode(value)
            if owner is None or key.owner == owner:
                keys.append(key)
        for name, value in await snapshot(self.bucket, f"{USED_PREFIX}>"):
            used[name[len(USED_PREFIX):]] = float(value)
        return sorted((replace(k, last_used_at=used.get(k.id, 0.0)) for k in keys),
                      key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, now: float | None = None) -> ApiKey:
        """Revoke a key (every gateway refuses it within a second); a revoked key is
        returned as it is."""
        check_key_id(key_id)
        for _ in range(8):  # compare-and-set against a concurrent revocation
            try:
                entry = await self.bucket.get(RECORD_PREFIX + key_id)
            except KeyNotFoundError:
                raise _not_found(key_id) from None
            if not entry.value:
                raise _not_found(key_id)
            key = ApiKey.decode(entry.value)
            if key.revoked:
                return key
            revoked = replace(key, revoked_at=time.time() if now is None else now)
            try:
                await self.bucket.update(RECORD_PREFIX + key_id, revoked.encode(),
                                         last=entry.revision)
                return revoked
            except KeyWrongLastSequenceError:
                continue
        raise Unavailable(f"API key {key_id} is being changed concurrently; try again")

    async def revoke_owner(self, owner: str) -> builtins.list[ApiKey]:
        """Revoke every key of ``owner`` (the user is being deleted)."""
        return [await self.revoke(k.id) for k in await self.list(owner) if not k.revoked]

    async def touch(self, key_id: str, when: float) -> None:
        """Record that a call made with the key was admitted at ``when``."""
        await self.bucket.put(USED_PREFIX + key_id, f"{when:.3f}".encode())
