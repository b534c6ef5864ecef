"""The caller's identity on its way from a gateway to a node, sealed so nodes can trust it.

A gateway that admitted a call adds ``Revo-Caller`` and ``Revo-Role`` and a seal,
``Revo-Identity: <expires ms>.<HMAC-SHA256>``, over the three values and the method's
path (a seal is good for one method until the call's deadline) with a key that only
gateways and nodes hold (``REVO_IDENTITY_SECRET``, else ``auth.identity_secret_file``, else
``<home>/secrets/identity.key``). With auth on, a node refuses a call whose identity is
missing, expired or not sealed by that key, so a client that reaches NATS directly cannot
call engines, let alone claim to be someone. Engines see the result as ``ctx.caller`` and
``ctx.role``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from pathlib import Path

from mesh.auth.secrets import load_secret
from mesh.config import MeshConfig
from mesh.errors import Unauthenticated
from mesh.transport import headers as h

__all__ = ["IDENTITY_SECRET_ENV", "IdentitySeal"]

IDENTITY_SECRET_ENV = "REVO_IDENTITY_SECRET"
_CACHE_LIMIT = 4096


class IdentitySeal:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._made: dict[tuple[str, str, str, int], dict[str, str]] = {}
        self._opened: dict[tuple[str, str, str, str], int] = {}
        """Seals already checked, and when each expires (calls repeat them)."""

    @classmethod
    def from_config(cls, config: MeshConfig,
                    environ: Mapping[str, str] | None = None) -> IdentitySeal:
        path = config.auth.identity_secret_file or Path(config.home) / "secrets" / "identity.key"
        return cls(load_secret(IDENTITY_SECRET_ENV, path, environ))

    def _mac(self, caller: str, role: str, path: str, expires_ms: int) -> str:
        message = f"{caller}\n{role}\n{path}\n{expires_ms}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def headers(self, caller: str, role: str, path: str, expires_ms: int) -> dict[str, str]:
        """The identity headers for a call of ``path`` (``/pkg.Service/Method``) that the
        caller waits for until ``expires_ms`` (rounded up to the second, so a caller's
        calls within a second share one seal; the result must not be changed)."""
        expires_ms = -(-expires_ms // 1000) * 1000
        key = (caller, role, path, expires_ms)
        made = self._made.get(key)
        if made is None:
            if len(self._made) >= _CACHE_LIMIT:
                self._made.clear()
            made = self._made[key] = {
                h.CALLER: caller, h.ROLE: role,
                h.IDENTITY: f"{expires_ms}.{self._mac(caller, role, path, expires_ms)}"}
        return made

    def open(self, msg_headers: Mapping[str, str], path: str,
             now_ms: int | None = None) -> tuple[str, str]:
        """The caller and role of a sealed call, or :class:`Unauthenticated`."""
        seal = msg_headers.get(h.IDENTITY, "")
        caller, role = msg_headers.get(h.CALLER, ""), msg_headers.get(h.ROLE, "")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        known = self._opened.get((caller, role, path, seal))
        if known is not None and known >= now_ms:
            return caller, role
        expires, _, mac = seal.partition(".")
        if not seal or not expires.isdigit():
            raise Unauthenticated("this node takes calls only through a gateway: the call "
                                  f"carries no {h.IDENTITY} seal")
        if not hmac.compare_digest(mac.encode(),
                                   self._mac(caller, role, path, int(expires)).encode()):
            raise Unauthenticated("the caller identity is not sealed by a gateway of this "
                                  "mesh (forged, or a different identity key)")
        if int(expires) < now_ms:
            raise Unauthenticated("the caller identity's seal has expired")
        if len(self._opened) >= _CACHE_LIMIT:
            self._opened.clear()
        self._opened[(caller, role, path, seal)] = int(expires)
        return caller, role
