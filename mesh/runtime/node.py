"""A node: loads engine plugins, runs each as a supervised actor pool, and serves it on NATS.

Every node hosting a service subscribes to ``revo.rpc.<service>.*`` in the service's queue
group, so NATS spreads calls across nodes and a node that dies simply stops receiving.
On stop the node first stops taking calls (draining its subscriptions), lets in-flight
calls finish within ``node.shutdown_grace_s``, leaves the registry, stops its actors and
drains its NATS connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator

import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.subscription import Subscription

import mesh
from mesh._gen.revo.mesh.v1 import mesh_pb2, registry_pb2
from mesh.auth.identity import IdentitySeal
from mesh.config import MeshConfig
from mesh.engine import Context, EngineRuntime, MethodBinding, is_async_engine
from mesh.errors import (
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    RpcError,
    Unimplemented,
)
from mesh.observability import tracing
from mesh.observability.metrics import MetricsEndpoint
from mesh.plugins.host import PluginHost, PluginRecord, PluginStatus
from mesh.registry import RegistryWriter, file_set
from mesh.runtime.loop_pool import LoopPool
from mesh.runtime.pool import EnginePool, PoolState
from mesh.runtime.pool_metrics import PoolMeters, watch_pools
from mesh.transport import headers as h
from mesh.transport import subjects
from mesh.transport.connection import MeshConnection, connect, encode_headers
from mesh.transport.ids import new_request_id
from mesh.transport.rpc import error_headers

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
# A call still running after this long is acknowledged with Revo-Accepted, so its caller can
# tell a slow call from one lost with a dead node (see mesh.transport.rpc).
ACCEPT_AFTER_S = 0.1


Pool = EnginePool | LoopPool
"""An engine's pool: actors (:class:`Engine`) or tasks on the loop (:class:`AsyncEngine`)."""


def default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def request_context(path: str, msg_headers: dict[str, str], node_id: str,
                    default_timeout_s: float, seal: IdentitySeal | None = None) -> Context:
    """The engine's view of a call, from the request's headers.

    With ``seal`` (auth on) the caller's identity must be sealed by a gateway, else the
    call is refused; without it (auth off) identity headers are ignored."""
    caller, role = seal.open(msg_headers, path) if seal is not None else ("", "")
    timeout_ms = msg_headers.get(h.TIMEOUT_MS)
    try:
        timeout = int(timeout_ms) / 1000 if timeout_ms else default_timeout_s
    except ValueError:
        raise InvalidArgument(f"header {h.TIMEOUT_MS} must be an integer, "
                              f"got {timeout_ms!r}") from None
    return Context(
        method=path,
        request_id=msg_headers.get(h.REQUEST_ID) or new_request_id(),
        deadline=time.monotonic() + timeout,
        node_id=node_id,
        caller=caller,
        role=role,
        traceparent=msg_headers.get(h.TRACEPARENT, ""),
    )


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
        self._subs: list[Subscription] = []
        self._registry: RegistryWriter | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Reply subjects of calls not yet answered nor accepted, with their start times.
        self._unaccepted: dict[str, float] = {}
        self._accepter: asyncio.Task[None] | None = None
        self.metrics = MetricsEndpoint(config.node.metrics_address, "node.metrics_address")
        """The node's Prometheus registry and its ``/metrics`` server (off: address '')."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, *, nc: MeshConnection | None = None,
                    serve_nats: bool = True) -> None:
        """Connect to NATS (or use ``nc``), load plugins, start their pools, and (unless told
        not to) serve them on NATS. Engines start after the connection, so an
        :class:`~mesh.engine.AsyncEngine` may open streams in its ``start``."""
        loop = asyncio.get_running_loop()
        tracing.configure(self.config.tracing)
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

    async def _serve_nats(self) -> None:
        """Subscribe every hosted service and join the registry."""
        assert self.nc is not None
        services = sorted({binding.service for _, binding in self.routes.values()})
        for service in services:
            self._subs.append(await self.nc.subscribe_direct(
                subjects.service_wildcard(service), self._on_request,
                queue=subjects.queue_group(service)))
        self._registry = RegistryWriter(self.nc, self.id, self.config.node.heartbeat_s,
                                        self.announcement)
        await self._registry.start()
        self._accepter = asyncio.get_running_loop().create_task(self._accept_long_calls())
        log.info("node %s serving %s", self.id, ", ".join(services) or "nothing")

    async def stop(self) -> None:
        """Stop taking calls, finish in-flight ones (bounded), leave the registry, drain."""
        self.draining = True
        if self._registry is not None:  # gateways see a planned departure, not a failure
            with contextlib.suppress(Exception):
                await self._registry.publish()
        assert self.nc is not None or not self._subs
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await self.nc.unsubscribe_direct(sub)  # type: ignore[union-attr]
        self._subs.clear()
        grace = self.config.node.shutdown_grace_s
        if self._inflight:
            log.info("node %s: waiting up to %.1f s for %d in-flight calls", self.id, grace,
                     self._inflight)
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning("node %s: %d calls still running after %.1f s", self.id,
                            self._inflight, grace)
        if self._accepter is not None:
            self._accepter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepter
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

    # -- NATS serving -----------------------------------------------------------------

    def _send(self, subject: str, data: bytes = b"",
              headers: dict[str, str] | None = None) -> None:
        assert self.nc is not None
        self.nc.publish_nowait(subject, data, headers=encode_headers(headers) if headers else b"")

    def _on_request(self, subject: str, reply: str, data: bytes,
                    msg_headers: dict[str, str] | None) -> None:
        """A call from NATS (on the loop, straight from the read loop: must not block)."""
        if not reply:
            log.warning("dropping a request on %s without a reply subject", subject)
            return
        service, _, method = subject[len(subjects.RPC_PREFIX) + 1:].rpartition(".")
        path = f"/{service}/{method}"
        headers = msg_headers or {}
        scope = (tracing.process_scope(subject, headers, self.id, subjects.queue_group(service))
                 if tracing.TRACER is not None else None)
        try:
            pool, binding = self.route(path)
            ctx = request_context(path, headers, self.id, self.config.gateway.default_timeout_s,
                                  self._seal)
            if binding.server_streaming:
                self._begin(reply)
                task = asyncio.get_running_loop().create_task(
                    self._serve_stream(reply, data, pool, binding, ctx, headers),
                    context=scope.context if scope is not None else None)
                task.add_done_callback(lambda _: self._end(reply))
                if scope is not None:
                    task.add_done_callback(lambda _: tracing.finish(scope.span))
                return
            respond = functools.partial(self._answer, reply)
            if scope is None:
                pool.start_call(binding, data, ctx, respond)
            else:  # the engine's span is a child of this node's
                scope.context.run(pool.start_call, binding, data, ctx,
                                  scope.responding(respond))
        except RpcError as error:
            if scope is not None:
                tracing.finish(scope.span, error)
            self._send(reply, headers=error_headers(error))
            return
        self._begin(reply)

    def _begin(self, reply: str) -> None:
        self._inflight += 1
        self._idle.clear()
        self._unaccepted[reply] = time.monotonic()

    def _end(self, reply: str) -> None:
        self._unaccepted.pop(reply, None)
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _answer(self, reply: str, data: bytes | None, error: RpcError | None) -> None:
        assert self.nc is not None
        try:
            if error is not None:
                raise error
            assert data is not None
            if len(data) > self.nc.max_payload - h.HEADER_ROOM:
                limit = self.nc.max_payload - h.HEADER_ROOM
                raise ResourceExhausted(
                    f"response of {len(data)} bytes exceeds the mesh's message limit "
                    f"({limit} bytes)", reason=Reason.MESSAGE_TOO_LARGE,
                    metadata={"size": str(len(data)), "limit": str(limit)})
            self._send(reply, data)
        except RpcError as error:
            self._send(reply, headers=error_headers(error))
        except Exception:
            log.exception("node %s failed answering a call", self.id)
            with contextlib.suppress(Exception):
                self._send(reply, headers=error_headers(
                    Internal(f"node {self.id} failed serving the call; see its log")))
        finally:
            self._end(reply)

    async def _accept_long_calls(self) -> None:
        """Tell callers which calls run longer than ACCEPT_AFTER_S (one sweep for all)."""
        headers = {h.ACCEPTED: self.id}
        while True:
            await asyncio.sleep(ACCEPT_AFTER_S / 2)
            cutoff = time.monotonic() - ACCEPT_AFTER_S
            due = []
            for reply, started in self._unaccepted.items():  # in arrival order
                if started > cutoff:
                    break
                due.append(reply)
            for reply in due:
                del self._unaccepted[reply]
                with contextlib.suppress(Exception):
                    self._send(reply, headers=headers)

    async def _serve_stream(self, reply: str, data: bytes, pool: Pool,
                            binding: MethodBinding, ctx: Context,
                            msg_headers: dict[str, str]) -> None:
        assert self.nc is not None
        try:
            window = max(1, min(4096, int(msg_headers.get(h.STREAM_WINDOW, "16"))))
            sink = pool.stream(binding, data, ctx, window)
        except (ValueError, RpcError) as exc:
            error = exc if isinstance(exc, RpcError) else InvalidArgument(
                f"header {h.STREAM_WINDOW} must be an integer")
            self._send(reply, headers={h.END: "1", **error_headers(error)})
            return

        def on_control(subject: str, _reply: str, _data: bytes,
                       control_headers: dict[str, str] | None) -> None:
            control_headers = control_headers or {}
            if h.CANCEL in control_headers:
                sink.cancel()
            elif h.ACK in control_headers:
                with contextlib.suppress(ValueError):
                    sink.grant(max(0, min(window, int(control_headers[h.ACK]))))

        control = self.nc.new_inbox()
        control_sub = await self.nc.subscribe_direct(control, on_control)
        first = True
        try:
            async for item in sink.messages():
                if first:
                    self._unaccepted.pop(reply, None)
                    self._send(reply, item, {h.STREAM_CONTROL: control, h.NODE: self.id})
                    first = False
                else:
                    self._send(reply, item)
            self._send(reply, headers={h.END: "1"})
        except nats.errors.MaxPayloadError:
            self._send(reply, headers={h.END: "1", **error_headers(ResourceExhausted(
                f"a stream message exceeds the mesh's NATS message limit "
                f"({self.nc.max_payload} bytes)", reason=Reason.MESSAGE_TOO_LARGE,
                metadata={"limit": str(self.nc.max_payload)}))})
        except RpcError as error:
            self._send(reply, headers={h.END: "1", **error_headers(error)})
        finally:
            sink.cancel()
            with contextlib.suppress(Exception):
                await self.nc.unsubscribe_direct(control_sub)

    # -- description ------------------------------------------------------------------

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
        return engine

    def announcement(self) -> registry_pb2.NodeAnnouncement:
        services = [binding.descriptor.containing_service
                    for _, binding in self.routes.values()]
        return registry_pb2.NodeAnnouncement(node=self.describe(), files=file_set(services))
