"""Password hashes: scrypt with a random salt per password, never the password itself.

The stored form is ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so the cost can be
raised later while older hashes still verify. Hashing takes tens of milliseconds on
purpose; callers on an event loop run it in a thread.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

__all__ = ["MIN_PASSWORD_LENGTH", "hash_password", "verify_password"]

MIN_PASSWORD_LENGTH = 8
_LOG2_N, _R, _P = 15, 8, 1  # 32 MiB, ~0.1 s: the cost OWASP suggests for scrypt
_SALT_BYTES, _HASH_BYTES = 16, 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=r, p=p,
                          maxmem=(1 << log2_n) * r * 256, dklen=_HASH_BYTES)


def hash_password(password: str) -> str:
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, _LOG2_N, _R, _P)
    return f"scrypt${_LOG2_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


@functools.cache
def _dummy() -> str:
    """A hash of nothing: unknown users are checked against it, so a miss costs as a hit."""
    return hash_password(os.urandom(8).hex())


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; ``None`` (no such user) costs the same."""
    try:
        scheme, log2_n, r, p, salt, digest = (stored or _dummy()).split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected) and stored is not None
