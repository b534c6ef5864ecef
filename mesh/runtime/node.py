"""A node: loads engine plugins, runs each as a supervised actor pool, and serves it on NATS.

Every node hosting a service subscribes to ``revo.rpc.<service>.*`` in the service's queue
group (the wire protocol's serving side, :class:`~mesh.transport.responder.Responder`), so
NATS spreads calls across nodes and a node that dies simply stops receiving. On stop the
node first stops taking calls (draining its subscriptions), lets in-flight calls finish
within ``node.shutdown_grace_s``, leaves the registry, stops its actors and drains its NATS
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

import mesh
from mesh._gen.revo.mesh.v1 import mesh_pb2, registry_pb2
from mesh.auth.identity import IdentitySeal
from mesh.config import MeshConfig
from mesh.engine import Context, EngineRuntime, MethodBinding, is_async_engine
from mesh.errors import (
    Reason,
    Unimplemented,
)
from mesh.observability import tracing
from mesh.observability.metrics import MetricsEndpoint
from mesh.plugins.host import PluginHost, PluginRecord, PluginStatus
from mesh.registry import RegistryWriter, file_set
from mesh.runtime.health import READINESS, NodeHealth
from mesh.runtime.loop_pool import LoopPool
from mesh.runtime.pool import EnginePool, PoolState
from mesh.runtime.pool_metrics import PoolMeters, watch_pools
from mesh.transport import subjects
from mesh.transport.connection import MeshConnection, connect
from mesh.transport.responder import Responder

log = logging.getLogger(__name__)

_PLUGIN_STATUS = {
    PluginStatus.DISABLED: mesh_pb2.ENGINE_STATUS_DISABLED,
    PluginStatus.LOAD_ERROR: mesh_pb2.ENGINE_STATUS_LOAD_ERROR,
    PluginStatus.CONFIG_ERROR: mesh_pb2.ENGINE_STATUS_CONFIG_ERROR,
    PluginStatus.START_ERROR: mesh_pb2.ENGINE_STATUS_START_ERROR,
}
_POOL_STATUS = {
    PoolState.RUNNING: mesh_pb2.ENGINE_STATUS_RUNNING,
    PoolState.DEGRADED: mesh_pb2.ENGINE_STATUS_DEGRADED,
    PoolState.STOPPING: mesh_pb2.ENGINE_STATUS_STOPPING,
}
Pool = EnginePool | LoopPool
"""An engine's pool: actors (:class:`Engine`) or tasks on the loop (:class:`AsyncEngine`)."""


def default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


class Node:
    """Hosts engine pools and serves them on NATS."""

    def __init__(self, config: MeshConfig, *, host: PluginHost | None = None,
                 node_id: str | None = None) -> None:
        self.config = config
        self.id = node_id or config.node.id or default_node_id()
        subjects.registry_key(self.id)  # validates the id
        self.host = host or PluginHost(
            block=config.plugins.block,
            only=config.plugins.only,
            extra=config.plugins.extra,
            settings={name: s.plugin_settings() for name, s in config.engines.items()},
        )
        self.pools: dict[str, Pool] = {}
        self.runtime: EngineRuntime | None = None
        self.routes: dict[str, tuple[Pool, MethodBinding]] = {}
        self._seal = IdentitySeal.from_config(config) if config.auth.enabled else None
        """With auth on, calls over NATS must carry an identity sealed by a gateway."""
        self.nc: MeshConnection | None = None
        self.started_at = time.time()
        self.draining = False
        self._registry: RegistryWriter | None = None
        self._responder: Responder | None = None
        self.metrics = MetricsEndpoint(config.node.metrics_address, "node.metrics_address")
        """The node's Prometheus registry and its ``/metrics`` server (off: address '')."""
        self.health = NodeHealth(config.node.health_address, self.service_health,
                                 period_s=config.node.heartbeat_s)
        """``grpc.health.v1`` for probes (:mod:`mesh.runtime.health`; off: address '')."""
        self._started = False
        self._announcing: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, *, nc: MeshConnection | None = None,
                    serve_nats: bool = True) -> None:
        """Connect to NATS (or use ``nc``), load plugins, start their pools, and (unless told
        not to) serve them on NATS. Engines start after the connection, so an
        :class:`~mesh.engine.AsyncEngine` may open streams in its ``start``."""
        loop = asyncio.get_running_loop()
        tracing.configure(self.config.tracing)
        await self.health.start()  # liveness answers while engines start; readiness later
        if serve_nats or nc is not None:
            self.nc = nc or await connect(self.config.nats, name=f"revo-node {self.id}")
        self.host.load()
        records = self.host.enabled()
        self.runtime = runtime = EngineRuntime(self.id, self.config, self.nc, self.host)
        await runtime.start()  # before the engines, which may call each other in start()
        pools: dict[str, Pool] = {}
        for record in records:
            assert record.spec is not None
            settings = self.config.engine(record.name)
            max_pending = (settings.max_pending if settings.max_pending is not None
                           else record.spec.max_pending)
            if is_async_engine(record.spec):
                pools[record.name] = LoopPool(
                    record.spec, record.settings, runtime, loop=loop, max_pending=max_pending,
                    start_timeout_s=self.config.node.start_timeout_s)
                continue
            pools[record.name] = EnginePool(
                record.spec, record.settings, loop=loop,
                size=settings.pool_size or record.spec.pool_size,
                max_pending=max_pending,
                backoff_s=self.config.node.restart_backoff_s,
                backoff_max_s=self.config.node.restart_backoff_max_s,
                start_timeout_s=self.config.node.start_timeout_s,
            )
        for pool in pools.values():
            if isinstance(pool, LoopPool):  # loading, and loaded, announced at once
                pool.progress.on_change = self._announce_soon
        if self.metrics.enabled:  # measured at the pools' boundary, engines write none of it
            meters = PoolMeters(self.metrics.metrics(self.id))
            for name, pool in pools.items():
                pool.meters = meters.meters(name, self.host.records[name].methods.values())
                if isinstance(pool, LoopPool):
                    pool.engine_metrics = self.metrics.metrics(self.id)
        results = await asyncio.gather(*(pool.start() for pool in pools.values()),
                                       return_exceptions=True)
        for (name, pool), result in zip(pools.items(), results, strict=True):
            if isinstance(result, BaseException):
                self.host.mark_start_error(name, result)
                continue
            record = self.host.records[name]
            clash = next((path for path in record.methods if path in self.routes), None)
            if clash is not None:
                await pool.stop()
                owner = self.routes[clash][0].name
                self.host.mark_start_error(name, f"{clash} is already served by engine "
                                                 f"'{owner}' on this node")
                continue
            self.pools[name] = pool
            for path, binding in record.methods.items():
                self.routes[path] = (pool, binding)
            log.info("engine %s started: %d actors, %d methods", name, pool.size,
                     len(record.methods))
        if self.metrics.enabled:
            watch_pools(self.metrics.metrics(self.id), self.pools)
            self.metrics.start()
        if serve_nats:
            await self._serve_nats()
        self._started = True

    async def _serve_nats(self) -> None:
        """Serve every hosted service on NATS and join the registry."""
        assert self.nc is not None
        services = sorted({binding.service for _, binding in self.routes.values()})
        self._responder = Responder(self.nc, self.id, self.route,
                                    default_timeout_s=self.config.gateway.default_timeout_s,
                                    seal=self._seal)
        await self._responder.serve(services)
        self._registry = RegistryWriter(self.nc, self.id, self.config.node.heartbeat_s,
                                        self.announcement)
        await self._registry.start()
        log.info("node %s serving %s", self.id, ", ".join(services) or "nothing")

    def _announce_soon(self) -> None:
        """Publish this node's entry now, not at the next heartbeat (an engine began or
        finished loading)."""
        if self._registry is None or self.draining:
            return  # joining the registry publishes it anyway
        registry = self._registry

        async def publish() -> None:
            try:
                await registry.publish()
            except Exception as exc:  # the next heartbeat tries again
                log.debug("announcing node %s failed: %s", self.id, exc)

        task = asyncio.get_running_loop().create_task(publish())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def stop(self) -> None:
        """Stop taking calls, finish in-flight ones (bounded), leave the registry, drain."""
        self.draining = True
        if self._registry is not None:  # gateways see a planned departure, not a failure
            with contextlib.suppress(Exception):
                await self._registry.publish()
        responder = self._responder
        if responder is not None:
            await responder.stop_taking()
            grace = self.config.node.shutdown_grace_s
            if responder.inflight:
                log.info("node %s: waiting up to %.1f s for %d in-flight calls", self.id,
                         grace, responder.inflight)
            if not await responder.drain(grace):
                log.warning("node %s: %d calls still running after %.1f s", self.id,
                            responder.inflight, grace)
        if self._registry is not None:
            await self._registry.stop()
        for pool in self.pools.values():
            await pool.stop()
        if self.runtime is not None:
            await self.runtime.stop()
        self.metrics.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.health.stop()  # liveness answers until the very end
        tracing.flush()
        log.info("node %s stopped", self.id)

    # -- calls (also the gateway's co-located fast path) ------------------------------

    def route(self, path: str) -> tuple[Pool, MethodBinding]:
        found = self.routes.get(path)
        if found is None:
            raise Unimplemented(f"method {path} is not served by node {self.id}",
                                reason=Reason.UNKNOWN_METHOD, metadata={"method": path})
        return found

    async def call(self, path: str, payload: bytes, ctx: Context) -> bytes:
        pool, binding = self.route(path)
        return await pool.call(binding, payload, ctx)

    async def stream(self, path: str, payload: bytes, ctx: Context,
                     window: int) -> AsyncIterator[bytes]:
        pool, binding = self.route(path)
        sink = pool.stream(binding, payload, ctx, window)
        try:
            async for item in sink.messages():
                yield item
                sink.grant(1)
        finally:
            sink.cancel()

    # -- description ------------------------------------------------------------------

    def service_health(self) -> dict[str, bool]:
        """Whether each hosted service can take calls now (its pool runs with a live actor,
        NATS is connected, the node is not draining), and :data:`READINESS` for all."""
        reachable = (self._started and not self.draining and self.nc is not None
                     and self.nc.is_connected)
        services: dict[str, bool] = {}
        for pool, binding in self.routes.values():
            runs = pool.state is not PoolState.STOPPING and pool.alive > 0
            services[binding.service] = services.get(binding.service, True) and runs
        ready = {name: reachable and runs for name, runs in services.items()}
        ready[READINESS] = reachable and all(ready.values())
        return ready

    def describe(self) -> mesh_pb2.Node:
        node = mesh_pb2.Node(id=self.id, hostname=socket.gethostname(), pid=os.getpid(),
                             version=mesh.__version__, draining=self.draining,
                             metrics_url=self.metrics.url)
        node.started_at.FromSeconds(int(self.started_at))
        heartbeat = Timestamp()
        heartbeat.GetCurrentTime()
        node.heartbeat_at.CopyFrom(heartbeat)
        for record in self.host.records.values():
            node.engines.append(self._describe_engine(record))
        return node

    def _describe_engine(self, record: PluginRecord) -> mesh_pb2.Engine:
        engine = mesh_pb2.Engine(name=record.name, version=record.version,
                                 distribution=record.distribution,
                                 status_message=record.message)
        if record.spec is not None:
            engine.services.extend(s.full_name for s in record.spec.service_descriptors())
        pool = self.pools.get(record.name)
        if pool is None:
            engine.status = _PLUGIN_STATUS.get(record.status, mesh_pb2.ENGINE_STATUS_UNSPECIFIED)
            return engine
        engine.status = _POOL_STATUS[pool.state]
        engine.pool_size, engine.actors_alive = pool.size, pool.alive
        engine.restarts = pool.stats.restarts
        if pool.state is PoolState.DEGRADED:
            engine.status_message = f"restarting actors: {pool.stats.last_error}"
        progress = pool.progress if isinstance(pool, LoopPool) else None
        if progress is not None and (progress.loading or progress.unit):
            engine.progress.done, engine.progress.total = progress.done, progress.total
            engine.progress.unit = progress.unit
            if progress.loading and pool.state is PoolState.RUNNING:
                engine.status = mesh_pb2.ENGINE_STATUS_LOADING
        return engine

    def announcement(self) -> registry_pb2.NodeAnnouncement:
        services = [binding.descriptor.containing_service
                    for _, binding in self.routes.values()]
        return registry_pb2.NodeAnnouncement(node=self.describe(), files=file_set(services))
