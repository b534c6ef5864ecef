"""Access and refresh tokens: JWTs signed by the gateway, verified by every gateway.

HS256 with a shared secret by default (``REVO_JWT_SECRET``, else ``auth.secret_file``, else
``<home>/secrets/jwt.secret``, created once); RS256 or EdDSA with a private key file. Every
token names its key in ``kid``; ``auth.verify_keys`` keeps older keys verifying until their
tokens expire, so keys rotate without signing anyone out.

Each key accepts exactly one algorithm, chosen by the key's type, never by the token: a
token that says ``alg: none``, or HS256 signed with an RSA public key, is refused.
Issuer, audience, expiry, not-before, issue time, subject and ``jti`` are required.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mesh.auth.secrets import load_secret
from mesh.config import AuthSettings, MeshConfig
from mesh.errors import ConfigError, Reason, Unauthenticated

__all__ = ["ACCESS", "REFRESH", "Claims", "Keyring", "TokenService", "operator_token"]

ACCESS = "access"
REFRESH = "refresh"
JWT_SECRET_ENV = "REVO_JWT_SECRET"
_REQUIRED = ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]
_CACHE_LIMIT = 8192


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    user: str
    role: str
    jti: str
    kind: str
    issued_at: float
    expires_at: float
    generation: int = 0
    """The user's generation when issued; tokens of older generations are revoked."""


@dataclass(frozen=True)
class _Key:
    kid: str
    algorithm: str
    verify: Any
    sign: Any = None


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _algorithm_of(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ConfigError(f"unsupported key type {type(key).__name__}: use RSA or Ed25519")


def _load_pem(path: Path) -> Any:
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_pem_public_key(data)


class Keyring:
    """The key that signs new tokens and every key that still verifies old ones."""

    def __init__(self, signing: _Key, others: list[_Key]) -> None:
        self.signing = signing
        self.by_kid = {k.kid: k for k in [*others, signing]}

    @classmethod
    def from_settings(cls, settings: AuthSettings, home: Path,
                      environ: Mapping[str, str] | None = None) -> Keyring:
        try:
            if settings.algorithm == "HS256":
                secret = load_secret(JWT_SECRET_ENV,
                                     settings.secret_file or home / "secrets" / "jwt.secret",
                                     environ)
                kid = settings.key_id or f"hs-{_fingerprint(secret)}"
                signing = _Key(kid, "HS256", secret, secret)
            else:
                if settings.signing_key_file is None:
                    raise ConfigError(f"auth.algorithm = {settings.algorithm} needs "
                                      "auth.signing_key_file (a PEM private key)")
                private = _load_pem(settings.signing_key_file)
                algorithm = _algorithm_of(private)
                if algorithm != settings.algorithm or not hasattr(private, "sign"):
                    kind = "RSA" if settings.algorithm == "RS256" else "Ed25519"
                    raise ConfigError(f"auth.signing_key_file must hold a {settings.algorithm} "
                                      f"private key ({kind})")
                public = private.public_key()
                kid = settings.key_id or f"{algorithm.lower()}-{_fingerprint(_public_der(public))}"
                signing = _Key(kid, algorithm, public, private)
            others = []
            for kid, path in settings.verify_keys.items():
                data = path.read_bytes()
                if b"-----BEGIN" in data:
                    key = _load_pem(path)
                    public = key.public_key() if hasattr(key, "public_key") else key
                    others.append(_Key(kid, _algorithm_of(public), public))
                else:
                    others.append(_Key(kid, "HS256", data.strip()))
        except OSError as exc:
            raise ConfigError(f"cannot read a key for auth: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"a key for auth is not usable: {exc}") from exc
        return cls(signing, others)


class TokenService:
    """Issues and verifies tokens; verified tokens are cached until they expire."""

    def __init__(self, settings: AuthSettings, keyring: Keyring) -> None:
        self.settings = settings
        self.keyring = keyring
        self._cache: dict[str, Claims] = {}

    def issue(self, user: str, role: str, kind: str = ACCESS, generation: int = 0,
              now: float | None = None, ttl_s: float | None = None) -> tuple[str, Claims]:
        now = float(int(time.time() if now is None else now))
        ttl = ttl_s if ttl_s is not None else (
            self.settings.access_ttl_s if kind == ACCESS else self.settings.refresh_ttl_s)
        claims = Claims(user=user, role=role, jti=uuid.uuid4().hex, kind=kind,
                        issued_at=now, expires_at=now + ttl, generation=generation)
        key = self.keyring.signing
        token = jwt.encode(
            {"iss": self.settings.issuer, "aud": self.settings.audience, "sub": user,
             "role": role, "typ": kind, "gen": generation, "jti": claims.jti, "iat": int(now),
             "nbf": int(now),
             "exp": int(claims.expires_at)},
            key.sign, algorithm=key.algorithm, headers={"kid": key.kid})
        return token, claims

    def verify(self, token: str, kind: str = ACCESS) -> Claims:
        """The token's claims; :class:`Unauthenticated` says why a token is refused."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = claims
        if claims.kind != kind:
            raise Unauthenticated(f"this is {'an' if claims.kind == ACCESS else 'a'} "
                                  f"{claims.kind} token; send {'an' if kind == ACCESS else 'a'} "
                                  f"{kind} token")
        if time.time() > claims.expires_at + self.settings.leeway_s:
            self._cache.pop(token, None)
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.expires_at))
            hint = "refresh it or sign in again" if kind == ACCESS else "sign in again"
            raise Unauthenticated(f"the {kind} token expired at {when}; {hint}",
                                  reason=Reason.TOKEN_EXPIRED)
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("the token is not a JWT (expected header.payload.signature)"
                                  ) from None
        kid, algorithm = header.get("kid"), header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise Unauthenticated("unsigned tokens (alg 'none') are refused")
        key = self.keyring.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthenticated(f"the token is signed with key id {kid!r}, which this mesh "
                                  "does not know (rotated out?); sign in again")
        if algorithm != key.algorithm:
            raise Unauthenticated(f"the token says alg {algorithm!r}, but key {kid!r} is "
                                  f"{key.algorithm}; refused")
        try:
            payload = jwt.decode(
                token, key.verify, algorithms=[key.algorithm], audience=self.settings.audience,
                issuer=self.settings.issuer, leeway=self.settings.leeway_s,
                options={"require": _REQUIRED})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token expired; refresh it or sign in again",
                                  reason=Reason.TOKEN_EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf/iat in the future; check "
                                  "the clocks)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token is not for this mesh (audience must be "
                                  f"{self.settings.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the token was not issued by {self.settings.issuer!r}"
                                  ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify (tampered, or "
                                  "signed by someone else)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the token is invalid: {exc}") from None
        user, role, kind = payload.get("sub"), payload.get("role"), payload.get("typ")
        generation = payload.get("gen", 0)
        if not all(isinstance(v, str) and v for v in (user, role, kind, payload["jti"])) or (
                not isinstance(generation, int)):
            raise Unauthenticated("the token lacks a user, role, type, generation or id")
        return Claims(user=str(user), role=str(role), jti=str(payload["jti"]), kind=str(kind),
                      issued_at=float(payload["iat"]), expires_at=float(payload["exp"]),
                      generation=generation)


def operator_token(config: MeshConfig, ttl_s: float = 300.0, user: str = "operator",
                   environ: Mapping[str, str] | None = None, *,
                   create: bool = True) -> str | None:
    """An admin access token signed with this machine's key, for local tools (``revo up``
    readiness, ``revo status``); None when auth is off. Holding the signing key is
    holding every role, so this gives nothing away.

    ``create=False`` (read-only commands): None also when the HS256 secret is neither in
    ``REVO_JWT_SECRET`` nor on disk (no mesh ever ran with this home), instead of creating
    one."""
    if not config.auth.enabled:
        return None
    if not create and config.auth.algorithm == "HS256":
        secret = config.auth.secret_file or Path(config.home) / "secrets" / "jwt.secret"
        if not (environ if environ is not None else os.environ).get(JWT_SECRET_ENV) \
                and not secret.exists():
            return None
    service = TokenService(config.auth, Keyring.from_settings(config.auth, Path(config.home),
                                                              environ))
    return service.issue(user, "admin", ACCESS, generation=1 << 62, ttl_s=ttl_s)[0]
