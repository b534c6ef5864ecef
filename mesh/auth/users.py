"""Users, kept in JetStream KV (bucket ``revo_users``, key ``users.<name>``).

A record holds the user's role, a scrypt hash of the password (never the password), whether
the user is disabled, and a *generation*: a number that grows whenever the user's tokens
must stop working (role changed, password reset, disabled, deleted). Every gateway and
``revo users`` use this one store. The bucket also holds the users' API keys
(:mod:`mesh.auth.keys`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from mesh.auth.keys import ApiKeyStore
from mesh.auth.passwords import MIN_PASSWORD_LENGTH, hash_password
from mesh.auth.roles import ROLES
from mesh.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from mesh.transport import subjects
from mesh.transport.kv import KeyValue, open_bucket

__all__ = [
    "ADMIN_PASSWORD_ENV",
    "BUCKET",
    "USER_PREFIX",
    "Accounts",
    "User",
    "UserStore",
    "check_password",
    "check_role",
    "check_username",
]

BUCKET = subjects.USERS_BUCKET
ADMIN_PASSWORD_ENV = "REVO_ADMIN_PASSWORD"
_PREFIX = USER_PREFIX = "users."
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_PASSWORD = 1024


def check_username(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(f"user name {name[:80]!r} is not allowed: use 1 to 64 letters, "
                              "digits, '_' or '-'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role[:40]!r}; roles: {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD:
        raise InvalidArgument(f"a password needs {MIN_PASSWORD_LENGTH} to {_MAX_PASSWORD} "
                              "characters")
    return password


def _generation() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class User:
    username: str
    role: str
    password_hash: str
    disabled: bool = False
    generation: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    def __repr__(self) -> str:  # never print the hash
        return (f"User({self.username!r}, role={self.role!r}, disabled={self.disabled}, "
                f"generation={self.generation})")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> User:
        fields: dict[str, Any] = json.loads(data)
        return cls(**fields)


class UserStore:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._bucket: KeyValue | None = None

    async def start(self) -> None:
        self._bucket = await open_bucket(self._nc, BUCKET, history=1,
                                         description="revo: users and password hashes")

    @property
    def bucket(self) -> KeyValue:
        if self._bucket is None:
            raise RuntimeError("UserStore.start() first")
        return self._bucket

    async def get(self, username: str) -> User | None:
        if not _NAME.match(username):
            return None
        try:
            entry = await self.bucket.get(_PREFIX + username)
        except KeyNotFoundError:
            return None
        return User.decode(entry.value) if entry.value else None

    async def require(self, username: str) -> User:
        user = await self.get(username)
        if user is None:
            raise NotFound(f"no user {username[:80]!r}; `revo users list` shows them")
        return user

    async def list(self) -> list[User]:
        try:
            keys = await self.bucket.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return []
        users = [await self.get(k[len(_PREFIX):]) for k in keys if k.startswith(_PREFIX)]
        return sorted((u for u in users if u is not None), key=lambda u: u.username)

    async def create(self, username: str, role: str, password: str) -> User:
        check_username(username)
        check_role(role)
        check_password(password)
        now = time.time()
        user = User(username, role, await asyncio.to_thread(hash_password, password),
                    generation=_generation(), created_at=now, updated_at=now)
        try:
            await self.bucket.create(_PREFIX + username, user.encode())
        except KeyWrongLastSequenceError:
            raise AlreadyExists(f"user {username!r} already exists") from None
        return user

    async def update(self, username: str, *, role: str | None = None,
                     password: str | None = None, disabled: bool | None = None) -> User:
        """Change a user; every change that affects access starts a new generation."""
        check_username(username)
        if role is not None:
            check_role(role)
        password_hash = None
        if password is not None:
            password_hash = await asyncio.to_thread(hash_password, check_password(password))
        for _ in range(8):  # compare-and-set against concurrent changes
            try:
                entry = await self.bucket.get(_PREFIX + username)
            except KeyNotFoundError:
                raise NotFound(f"no user {username[:80]!r}") from None
            if not entry.value:
                raise NotFound(f"no user {username[:80]!r}")
            user = User.decode(entry.value)
            changed = replace(
                user, role=role if role is not None else user.role,
                password_hash=password_hash or user.password_hash,
                disabled=disabled if disabled is not None else user.disabled,
                generation=_generation(), updated_at=time.time())
            try:
                await self.bucket.update(_PREFIX + username, changed.encode(),
                                         last=entry.revision)
                return changed
            except KeyWrongLastSequenceError:
                continue
        raise Unavailable(f"user {username!r} is being changed concurrently; try again")

    async def delete(self, username: str) -> User:
        user = await self.require(username)
        await self.bucket.purge(_PREFIX + username)
        return replace(user, generation=_generation())

    async def ensure_admin(self, password: str) -> User | None:
        """Create user ``admin`` with ``password`` when no admin exists; the new user."""
        if any(u.role == "admin" for u in await self.list()):
            return None
        try:
            return await self.create("admin", "admin", password)
        except AlreadyExists:
            return None


class Accounts:
    """User changes together with the revocations they imply (gateway and ``revo users``)."""

    def __init__(self, users: UserStore, revoke_user: Callable[[str, int], Awaitable[None]]
                 ) -> None:
        self.users = users
        self.keys = ApiKeyStore(users)
        self._revoke_user = revoke_user

    async def create(self, username: str, role: str, password: str) -> User:
        return await self.users.create(username, role, password)

    async def set_role(self, username: str, role: str) -> User:
        return await self._revoked(await self.users.update(username, role=role))

    async def reset_password(self, username: str, password: str) -> User:
        return await self._revoked(await self.users.update(username, password=password))

    async def set_disabled(self, username: str, disabled: bool) -> User:
        user = await self.users.update(username, disabled=disabled)
        return await self._revoked(user) if disabled else user

    async def delete(self, username: str) -> User:
        """Remove a user; their tokens and API keys are revoked."""
        user = await self._revoked(await self.users.delete(username))
        await self.keys.revoke_owner(username)
        return user

    async def _revoked(self, user: User) -> User:
        await self._revoke_user(user.username, user.generation)
        return user
