"""The gRPC gateway: serves every service that live nodes announce, with no engine code.

A call's request bytes go unchanged to ``revo.rpc.<service>.<method>`` as a NATS request
(or, for engines hosted in this process, straight to their actor pool), and the reply's
bytes or status come back unchanged. The gateway also serves ``revo.mesh.v1.MeshService``,
the standard ``grpc.health.v1.Health`` (one status per served service) and server
reflection built from the announced descriptors, so stock tools can list and call
everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from nats.aio.client import Client as NATS

from mesh._gen.revo.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from mesh.config import MeshConfig
from mesh.engine import Context
from mesh.errors import RpcError
from mesh.gateway.mesh_service import MeshServicer
from mesh.registry import RegistryView, Route, Snapshot, file_set
from mesh.runtime.node import Node
from mesh.transport import headers as h
from mesh.transport.connection import connect
from mesh.transport.ids import new_request_id
from mesh.transport.rpc import Requester

log = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"

TRACEPARENT_METADATA = "traceparent"

_OWN_SERVICES = (
    mesh_pb2.DESCRIPTOR.services_by_name["MeshService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)

ServicerContext = grpc.aio.ServicerContext[bytes, bytes]
if TYPE_CHECKING:  # generic only in the type stubs
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[bytes, bytes]
else:
    MethodHandler = grpc.RpcMethodHandler
Unary = Callable[[bytes, ServicerContext], Awaitable[bytes]]


class _Reflection(ReflectionServicer):  # type: ignore[misc]
    """Server reflection over the descriptors nodes announce, updated as they change."""

    def update(self, snapshot: Snapshot) -> None:
        names = {s.full_name for s in _OWN_SERVICES} | snapshot.services.keys()
        self._service_names = tuple(sorted(names))
        self._pool = snapshot.pool


class _Router(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Finds the handler for any method path; rebuilt when the registry changes."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.handlers: dict[str, MethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler:
        path = handler_call_details.method
        found = self.handlers.get(path)
        if found is not None:
            return found
        code, message = self._gateway.explain_unknown(path)

        async def unknown(request: bytes, context: ServicerContext) -> bytes:
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises")

        return grpc.unary_unary_rpc_method_handler(unknown)

    def rebuild(self, snapshot: Snapshot) -> None:
        handlers: dict[str, MethodHandler] = {}
        for path, route in snapshot.routes.items():
            if route.server_streaming:
                handlers[path] = grpc.unary_stream_rpc_method_handler(
                    self._gateway.stream_handler(route))
            else:
                handlers[path] = grpc.unary_unary_rpc_method_handler(
                    self._gateway.unary_handler(route))
        self.handlers = handlers


class Gateway:
    """The mesh's gRPC front door."""

    def __init__(self, config: MeshConfig, *, node: Node | None = None) -> None:
        self.config = config
        self.node = node
        """Engines hosted in this process; calls to them skip the NATS hop."""
        self.nc: NATS | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._router = _Router(self)
        self._health = HealthServicer()
        self._reflection = _Reflection(service_names=[s.full_name for s in _OWN_SERVICES])
        self._view: RegistryView | None = None
        self._own_files = file_set(_OWN_SERVICES)
        self._served: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._requester: Requester | None = None
        self._nodes: dict[str, bool] = {}
        """Live node ids, and whether each said it is draining."""
        self._ever_served: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> int:
        """Connect, learn the registry, and listen; returns the bound port."""
        self.nc = await connect(self.config.nats, name="revo-gateway")
        self._requester = Requester(self.nc, self.config.gateway.accept_timeout_s)
        await self._requester.start()
        if self.node is not None:
            await self.node.start(serve_nats=False)
            await self.node.serve_nats(self.nc)
        self._view = RegistryView(self.nc, self._on_registry, base_files=self._own_files)
        await self._view.start()
        limit = self.config.gateway.max_message_bytes
        nats_limit = self.nc.max_payload - h.HEADER_ROOM
        if limit > nats_limit:
            log.warning("gateway.max_message_bytes (%d) is above what NATS carries (%d after "
                        "headers); using %d", limit, nats_limit, nats_limit)
            limit = nats_limit
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ])
        mesh_pb2_grpc.add_MeshServiceServicer_to_server(MeshServicer(self._view), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(self._reflection, server)
        server.add_generic_rpc_handlers((self._router,))
        self.port = server.add_insecure_port(self.config.gateway.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.gateway.address}")
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(_OWN_SERVICES[0].full_name, health_pb2.HealthCheckResponse.SERVING)
        self._on_registry(self._view.snapshot)
        log.info("gateway listening on %s", self.address)
        return self.port

    @property
    def address(self) -> str:
        host = self.config.gateway.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace``, then disconnect."""
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.node is not None:
            await self.node.stop()
        if self._view is not None:
            await self._view.stop()
        if self._requester is not None:
            await self._requester.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    def _on_registry(self, snapshot: Snapshot) -> None:
        nodes = {a.node.id: a.node.draining for a in snapshot.nodes}
        if self._requester is not None:
            for gone in self._nodes.keys() - nodes.keys():
                if self._nodes[gone]:
                    log.info("node %s left the mesh after draining", gone)
                else:
                    log.warning("node %s left the mesh without draining (killed, or cut off "
                                "from NATS)", gone)
                self._requester.node_gone(gone)
        self._nodes = nodes
        self._router.rebuild(snapshot)
        self._reflection.update(snapshot)
        served = set(snapshot.services)
        self._ever_served |= served
        changed = served ^ self._served
        self._served = served
        if changed:
            task = asyncio.get_running_loop().create_task(self._set_health(changed, served))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _set_health(self, names: set[str], served: set[str]) -> None:
        for name in names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if name in served
                                   else health_pb2.HealthCheckResponse.NOT_SERVING)

    # -- calls ------------------------------------------------------------------------

    def _call_options(self, context: ServicerContext) -> tuple[float, str, str]:
        remaining = context.time_remaining()
        settings = self.config.gateway
        timeout = settings.default_timeout_s if remaining is None else min(
            remaining, settings.max_timeout_s)
        request_id = traceparent = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_METADATA:
                request_id = str(value)
            elif key == TRACEPARENT_METADATA:
                traceparent = str(value)
        return timeout, request_id or new_request_id(), traceparent

    @staticmethod
    def _headers(timeout: float, request_id: str, traceparent: str) -> dict[str, str]:
        out = {h.REQUEST_ID: request_id, h.TIMEOUT_MS: str(max(1, int(timeout * 1000)))}
        if traceparent:
            out[h.TRACEPARENT] = traceparent
        return out

    def _local_context(self, route: Route, timeout: float, request_id: str,
                       traceparent: str) -> Context:
        assert self.node is not None
        return Context(method=route.path, request_id=request_id,
                       deadline=time.monotonic() + timeout, node_id=self.node.id,
                       traceparent=traceparent)

    def unary_handler(self, route: Route) -> Unary:
        local = self.node is not None and route.path in self.node.routes

        async def handle(request: bytes, context: ServicerContext) -> bytes:
            timeout, request_id, traceparent = self._call_options(context)
            try:
                if local:
                    assert self.node is not None
                    return await self.node.call(
                        route.path, request,
                        self._local_context(route, timeout, request_id, traceparent))
                assert self._requester is not None
                return await self._requester.call(route.subject, request, timeout,
                                                  self._headers(timeout, request_id, traceparent))
            except RpcError as error:
                await context.abort(error.code, error.message)
                raise AssertionError("unreachable: abort raises") from error

        return handle

    def stream_handler(
        self, route: Route
    ) -> Callable[[bytes, ServicerContext], AsyncIterator[bytes]]:
        local = self.node is not None and route.path in self.node.routes
        window = self.config.gateway.stream_window

        async def handle(request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
            timeout, request_id, traceparent = self._call_options(context)
            if local:
                assert self.node is not None
                messages = self.node.stream(
                    route.path, request,
                    self._local_context(route, timeout, request_id, traceparent), window)
            else:
                assert self._requester is not None
                messages = self._requester.stream(
                    route.subject, request, timeout,
                    self._headers(timeout, request_id, traceparent), window)
            try:
                async for item in messages:
                    yield item
            except RpcError as error:
                await context.abort(error.code, error.message)
            finally:
                await messages.aclose()  # type: ignore[attr-defined]

        return handle

    def explain_unknown(self, path: str) -> tuple[grpc.StatusCode, str]:
        """The status and message for a path with no route."""
        snapshot = self._view.snapshot if self._view else Snapshot()
        service, _, method = path.strip("/").partition("/")
        if service in snapshot.services:
            methods = ", ".join(m.name for m in snapshot.services[service].methods)
            return (grpc.StatusCode.UNIMPLEMENTED,
                    f"service {service} has no method '{method}'; its methods: {methods}")
        if service in self._ever_served:
            return (grpc.StatusCode.UNAVAILABLE,
                    f"no live node serves {service} right now; start a node with its engine "
                    "or retry")
        served = ", ".join(sorted({s.full_name for s in _OWN_SERVICES} | snapshot.services.keys()))
        return (grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {path}: the mesh serves no service '{service}'. "
                f"It serves: {served}")
