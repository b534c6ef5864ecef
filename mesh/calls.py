"""Calling another engine's method from inside the mesh, on behalf of a caller.

An engine that needs another engine's method (Perfect Recall asks ``ModelService.Embed``
for embeddings; a Parallel Mind task calls any unary method) does what the gateway does for
a client: it finds the method's route in the registry, checks (when auth is on) that the
original caller's role grants the method's declared permission, as the gateway would, and
sends the request over NATS with the request id, the deadline and the caller's sealed
identity as headers, so the receiving engine sees that caller, not the calling engine.
:class:`MeshCalls` is that, once, for every engine.
"""

from __future__ import annotations

import time

from mesh.auth.identity import IdentitySeal
from mesh.auth.roles import declared_permission, grants, permission_name
from mesh.config import MeshConfig
from mesh.errors import PermissionDenied, Unavailable
from mesh.registry import RegistryView, Route, Snapshot
from mesh.transport import headers as h
from mesh.transport.connection import MeshConnection
from mesh.transport.rpc import Requester

__all__ = ["MeshCalls"]

_SEAL_SLACK_MS = 1000
"""How much longer than the call's deadline its identity seal stays valid (clock skew)."""


class MeshCalls:
    """Unary calls to mesh methods as a given caller; :meth:`start` before, :meth:`stop`
    after."""

    def __init__(self, nc: MeshConnection, config: MeshConfig) -> None:
        self.requester = Requester(nc, config.gateway.accept_timeout_s)
        self.view = RegistryView(nc, self._on_registry)
        self.seal = IdentitySeal.from_config(config) if config.auth.enabled else None
        self._nodes: set[str] = set()

    def _on_registry(self, snapshot: Snapshot) -> None:
        """A node that left the mesh fails the calls it had accepted at once (as the
        gateway's do), instead of at their deadlines."""
        nodes = {a.node.id for a in snapshot.nodes}
        for gone in self._nodes - nodes:
            self.requester.node_gone(gone)
        self._nodes = nodes

    async def start(self) -> None:
        await self.view.start()
        await self.requester.start()

    async def stop(self) -> None:
        await self.requester.stop()
        await self.view.stop()

    def route(self, method: str) -> Route | None:
        """Where ``method`` (``/pkg.Service/Method``) is served now; None when no live node
        serves it."""
        return self.view.snapshot.routes.get(method)

    async def call(self, method: str, request: bytes, *, caller: str, role: str,
                   request_id: str, timeout: float) -> bytes:
        """The serialized answer of ``method`` to ``request``, called as ``caller`` with
        ``role``, waiting at most ``timeout`` seconds. Raises the callee's error,
        UNAVAILABLE when no live node serves the method, and PERMISSION_DENIED when auth is
        on and ``role`` lacks the method's permission."""
        route = self.route(method)
        if route is None:
            raise Unavailable(f"no live node serves {method} right now")
        if self.seal is not None:
            needed = declared_permission(route.method)
            if not grants(role, needed):
                raise PermissionDenied(f"{method} needs the {permission_name(needed)} "
                                       f"permission; role {role!r} lacks it")
        timeout = max(0.001, timeout)
        headers = {h.REQUEST_ID: request_id, h.TIMEOUT_MS: str(max(1, int(timeout * 1000)))}
        if self.seal is not None:
            expires_ms = int((time.time() + timeout) * 1000) + _SEAL_SLACK_MS
            headers.update(self.seal.headers(caller, role, method, expires_ms))
        return await self.requester.call(route.subject, request, timeout, headers)
