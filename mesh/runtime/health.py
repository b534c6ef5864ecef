"""A node's health for orchestrators: ``grpc.health.v1`` on ``node.health_address``.

Nodes take their calls from NATS, so nothing else of theirs listens; this endpoint exists for
probes (Kubernetes ``grpc:`` probes, ``grpc-health-probe``, any gRPC health client). It
answers, by the service name asked:

- ``""``: liveness. SERVING while the node's process and event loop answer (the check runs on
  the loop, so a blocked loop fails it), draining and NATS outages included: restarting the
  process would not bring NATS back.
- each service the node hosts (``revo.echo.v1.EchoService``): SERVING while its engine's pool
  runs with at least one live actor, the node is connected to NATS and it is not draining;
  NOT_SERVING otherwise.
- :data:`READINESS` (``revo.node``): SERVING when every hosted service is; the readiness probe
  of a node that hosts several engines.

Statuses are computed when a probe asks, so an answer is never older than the question, and
pushed to ``Watch`` streams every ``node.heartbeat_s``. Off by default (empty address):
``revo up`` has no orchestrator to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from mesh.errors import ConfigError

__all__ = ["LIVENESS", "READINESS", "NodeHealth"]

log = logging.getLogger(__name__)

LIVENESS = ""
"""The service name of the liveness check (gRPC health's whole-server status)."""
READINESS = "revo.node"
"""The service name that is SERVING when every service the node hosts is."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Statuses = Callable[[], Mapping[str, bool]]
"""Whether each service name (:data:`READINESS` included) can take calls now."""


class _LiveHealth(HealthServicer):  # type: ignore[misc]
    """The stock servicer, with statuses read from the node before each check."""

    def __init__(self, statuses: Statuses) -> None:
        super().__init__()
        self._statuses = statuses

    async def refresh(self) -> None:
        for name, serving in self._statuses().items():
            status = _SERVING if serving else _NOT_SERVING
            if self._server_status.get(name) != status:
                await self.set(name, status)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: Any) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)


def _host_port(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"node.health_address must be host:port, such as 0.0.0.0:8081 "
                          f"(or empty: off); got {address!r}")


class NodeHealth:
    """The node's ``grpc.health.v1`` server; does nothing when ``address`` is empty."""

    def __init__(self, address: str, statuses: Statuses, *, period_s: float) -> None:
        if address:
            _host_port(address)
        self.address = address
        self.port = 0
        """The bound port once started (``address`` may ask for port 0)."""
        self._servicer = _LiveHealth(statuses)
        self._period_s = period_s
        self._server: grpc.aio.Server | None = None
        self._pusher: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    async def start(self) -> None:
        """Listen (liveness answers from now on). Raises :class:`ConfigError` when the
        address cannot be bound."""
        if not self.enabled or self._server is not None:
            return
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpc raises on a port in use or a bad host
            raise ConfigError(f"node.health_address: cannot listen on {self.address} "
                              f"({exc})") from None
        if self.port == 0:
            raise ConfigError(f"node.health_address: cannot listen on {self.address}")
        await server.start()
        self._server = server
        await self._servicer.refresh()
        self._pusher = asyncio.get_running_loop().create_task(self._push())
        log.info("node health (grpc.health.v1) on %s", self.address.rsplit(":", 1)[0]
                 + f":{self.port}")

    async def _push(self) -> None:
        """Bring ``Watch`` streams up to date; runs until :meth:`stop`."""
        while True:
            await asyncio.sleep(self._period_s)
            try:
                await self._servicer.refresh()
            except Exception:  # never let a status read end the pusher
                log.exception("refreshing the node's health failed")

    async def stop(self) -> None:
        """Stop answering (the last thing a stopping node does)."""
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
