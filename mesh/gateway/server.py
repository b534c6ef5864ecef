"""The gRPC gateway: serves every service that live nodes announce, with no engine code.

A call is traced, counted and admitted (authenticated, authorized, rate limited, audited)
here; :mod:`mesh.gateway.routing` then sends its request bytes unchanged to
``revo.rpc.<service>.<method>`` as a NATS request (or, for engines hosted in this process,
straight to their actor pool), and the reply's bytes or status come back unchanged. The
gateway also serves ``revo.mesh.v1.MeshService``, the standard ``grpc.health.v1.Health``
(one status per served service) and server reflection built from the announced
descriptors, so stock tools can list and call everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from nats.aio.client import Client as NATS

from mesh.auth.guard import Guard, current_principal
from mesh.auth.roles import READ as PERMISSION_READ
from mesh.auth.roles import Permission, declared_permission
from mesh.auth.secrets import env_secret
from mesh.auth.service import AuthServicer, UserServicer
from mesh.auth.users import ADMIN_PASSWORD_ENV
from mesh.config import MeshConfig
from mesh.errors import (
    Cancelled,
    ConfigError,
    Internal,
    InvalidArgument,
    RpcError,
)
from mesh.gateway import connect as connect_protocol
from mesh.gateway import openai as openai_api
from mesh.gateway.http import HttpDoor
from mesh.gateway.mesh_service import MeshServicer
from mesh.gateway.metrics import GatewayMeters
from mesh.gateway.routing import (
    Forwarder,
    GatewayCall,
    MethodHandler,
    Router,
    ServicerContext,
    explain_unknown,
    read_call,
)
from mesh.observability import tracing
from mesh.observability.metrics import MetricsEndpoint
from mesh.registry import RegistryView, Route, Snapshot, file_set
from mesh.runtime.node import Node
from mesh.transport import headers as h
from mesh.transport.connection import connect
from mesh.transport.rpc import Requester
from mesh.v1 import auth_pb2, mesh_pb2

__all__ = ["Gateway", "server_credentials"]

log = logging.getLogger(__name__)

# Served by the gateway itself, behind the guard like every engine's service.
_GUARDED_SERVICES = (
    mesh_pb2.DESCRIPTOR.services_by_name["MeshService"],
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    auth_pb2.DESCRIPTOR.services_by_name["UserService"],
)
# Open to anyone and not audited: probes and tools call these all the time.
_OPEN_SERVICES = (
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
_OWN_SERVICES = _GUARDED_SERVICES + _OPEN_SERVICES

Unary = Callable[[bytes, ServicerContext], Awaitable[bytes]]


Inner = Callable[[Any, ServicerContext, GatewayCall], Awaitable[Any]]
StreamInner = Callable[[Any, ServicerContext, GatewayCall], AsyncIterator[Any]]


class _Reflection(ReflectionServicer):  # type: ignore[misc]
    """Server reflection over the descriptors nodes announce, updated as they change."""

    def update(self, snapshot: Snapshot) -> None:
        names = {s.full_name for s in _OWN_SERVICES} | snapshot.services.keys()
        self._service_names = tuple(sorted(names))
        self._pool = snapshot.pool


class Gateway:
    """The mesh's gRPC front door."""

    def __init__(self, config: MeshConfig, *, node: Node | None = None) -> None:
        self.config = config
        self.node = node
        """Engines hosted in this process; calls to them skip the NATS hop."""
        self.nc: NATS | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._router = Router(self)
        self._health = HealthServicer()
        self._reflection = _Reflection(service_names=[s.full_name for s in _OWN_SERVICES])
        self._view: RegistryView | None = None
        self._own_files = file_set(_OWN_SERVICES)
        self._served: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._requester: Requester | None = None
        self._forwarder: Forwarder | None = None
        self._nodes: dict[str, bool] = {}
        """Live node ids, and whether each said it is draining."""
        self._ever_served: set[str] = set()
        self.guard: Guard | None = None
        self.metrics = MetricsEndpoint(config.gateway.metrics_address,
                                       "gateway.metrics_address")
        """The gateway's Prometheus registry and ``/metrics`` server (off: address '')."""
        self._meters = GatewayMeters(self.metrics.metrics()) if self.metrics.enabled else None
        self.http = HttpDoor(self, config.gateway.http_address, config.gateway.http_max_body_bytes,
                             (openai_api.routes, connect_protocol.routes)
                             ) if config.gateway.http_address else None
        """The HTTP door (OpenAI-compatible API, Connect protocol, /health; None: off)."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> int:
        """Connect, learn the registry, and listen; returns the bound port."""
        tracing.configure(self.config.tracing)  # before the handlers are built
        self.nc = await connect(self.config.nats, name="revo-gateway")
        # Random per gateway: its audit batches are deduplicated by "<gateway id>-<number>",
        # so two gateways of one process must not share it (new_request_id()[:12] was the
        # process's prefix: a second gateway's batches were dropped as duplicates).
        self.guard = Guard(self.config, self.nc, f"gw-{secrets.token_hex(6)}")
        await self.guard.start()
        if self._meters is not None and self.guard.audit is not None:
            self._meters.watch_audit(self.guard.audit)
        self.metrics.start()
        admin_password = env_secret(ADMIN_PASSWORD_ENV)  # or REVO_ADMIN_PASSWORD_FILE
        if self.guard.enabled and admin_password:
            created = await self.guard.users.ensure_admin(admin_password)
            if created is not None:
                log.info("created user 'admin' from %s(_FILE)", ADMIN_PASSWORD_ENV)
        self._requester = Requester(self.nc, self.config.gateway.accept_timeout_s)
        await self._requester.start()
        self._forwarder = Forwarder(self.config.gateway, self._requester, guard=self.guard,
                                    node=self.node)
        if self.node is not None:
            await self.node.start(nc=self.nc)
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
        for service, servicer in zip(
                _GUARDED_SERVICES, (MeshServicer(self._view), AuthServicer(self.guard),
                                    UserServicer(self.guard)), strict=True):
            self._router.own.update(self._servicer_handlers(service, servicer))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(self._reflection, server)
        server.add_generic_rpc_handlers((self._router,))
        credentials = server_credentials(self.config)
        self.port = (server.add_secure_port(self.config.gateway.address, credentials)
                     if credentials is not None
                     else server.add_insecure_port(self.config.gateway.address))
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.gateway.address}")
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(_OWN_SERVICES[0].full_name, health_pb2.HealthCheckResponse.SERVING)
        self._on_registry(self._view.snapshot)
        if self.http is not None:
            await self.http.start()
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
        if self.http is not None:
            self.http.serving = False  # /health says so while in-flight calls finish
        if self._server is not None:
            await self._server.stop(grace)
        if self.http is not None:
            await self.http.stop()
        if self.node is not None:
            await self.node.stop()
        if self._view is not None:
            await self._view.stop()
        if self._requester is not None:
            await self._requester.stop()
        if self.guard is not None:
            await self.guard.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        tracing.flush()
        self.metrics.stop()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    @property
    def snapshot(self) -> Snapshot:
        """The mesh as this gateway sees it now."""
        return self._view.snapshot if self._view is not None else Snapshot()

    def handler(self, path: str) -> MethodHandler:
        """The handler that serves ``path`` (the HTTP door calls through it too)."""
        return self._router.handler(path)

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

    def _call(self, context: ServicerContext, *, streaming: bool = False) -> GatewayCall:
        return read_call(context, self.config.gateway, streaming=streaming)

    def _guarded_unary(self, path: str, permission: Permission,
                       inner: Inner) -> Callable[[Any, ServicerContext], Awaitable[Any]]:
        """``inner`` behind the guard: admitted or refused, then audited."""
        guard = self.guard
        assert guard is not None
        if not guard.active:  # nothing to check or record: the bare forward
            return self._bare_unary(inner)

        async def handle(request: Any, context: ServicerContext) -> Any:
            started = time.perf_counter()
            call = self._call(context)
            peer = context.peer() or ""  # read before the call can end
            error: RpcError | None = None
            admitted = False
            try:
                call.principal = guard.identify(path, permission, call.authorization)
                await guard.authorize(call.principal, path, permission)
                admitted = True
                token = current_principal.set(call.principal)
                try:
                    return await inner(request, context, call)
                finally:  # Login names the user it tried, for the audit record
                    call.principal = current_principal.get()
                    current_principal.reset(token)
            except RpcError as exc:
                error = exc
            except asyncio.CancelledError:  # the caller went away
                error = Cancelled("the caller cancelled the call")
                raise
            except Exception as exc:  # a bug in the gateway's own services
                log.exception("%s failed", path)
                error = Internal(f"{path} failed: {type(exc).__name__}: {exc}")
            finally:
                if not admitted and error is not None:
                    self._refused(path, error)
                guard.record(path=path, permission=permission, principal=call.principal,
                             admitted=admitted, error=error, started=started,
                             request_id=call.request_id,
                             peer=peer)
            await context.abort(error.code, error.message, error.trailers())
            raise AssertionError("unreachable: abort raises")

        return handle

    def _guarded_stream(self, path: str, permission: Permission,
                        inner: StreamInner) -> Callable[[Any, ServicerContext], AsyncIterator[Any]]:
        guard = self.guard
        assert guard is not None
        if not guard.active:
            return self._bare_stream(inner)

        async def handle(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call = self._call(context, streaming=True)
            peer = context.peer() or ""  # read before the call can end
            error: RpcError | None = None
            status = ""
            admitted = False
            try:
                call.principal = guard.identify(path, permission, call.authorization)
                await guard.authorize(call.principal, path, permission)
                admitted = True
                messages = inner(request, context, call)
                try:
                    async for item in messages:
                        yield item
                finally:
                    await messages.aclose()  # type: ignore[attr-defined]
            except RpcError as exc:
                error = exc
            except (asyncio.CancelledError, GeneratorExit):
                # the caller went away: cancelled while awaiting the engine, or closed
                # while suspended at ``yield`` (grpc finalizes the generator later)
                status = "CANCELLED"
                raise
            finally:
                if not admitted and error is not None:
                    self._refused(path, error)
                guard.record(path=path, permission=permission, principal=call.principal,
                             admitted=admitted, error=error, started=started,
                             request_id=call.request_id,
                             peer=peer, status=status)
            if error is not None:
                await context.abort(error.code, error.message, error.trailers())

        return handle

    def _bare_unary(self, inner: Inner) -> Callable[[Any, ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: ServicerContext) -> Any:
            try:
                return await inner(request, context, self._call(context))
            except RpcError as error:
                await context.abort(error.code, error.message, error.trailers())
                raise AssertionError("unreachable: abort raises") from error

        return handle

    def _bare_stream(self, inner: StreamInner
                     ) -> Callable[[Any, ServicerContext], AsyncIterator[Any]]:
        async def handle(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            messages = inner(request, context, self._call(context, streaming=True))
            try:
                async for item in messages:
                    yield item
            except RpcError as error:
                await context.abort(error.code, error.message, error.trailers())
            finally:
                await messages.aclose()  # type: ignore[attr-defined]

        return handle

    # -- metrics (one place for every handler) ---------------------------------------

    def _metered_unary(self, path: str, handler: Callable[[Any, ServicerContext], Awaitable[Any]],
                       *, known: bool = True) -> Callable[[Any, ServicerContext], Awaitable[Any]]:
        """``handler`` counted and timed (``known`` False: labelled ``other``)."""
        if self._meters is None:
            return handler
        return self._meters.unary(path, handler, known=known)

    def _metered_stream(self, path: str,
                        handler: Callable[[Any, ServicerContext], AsyncIterator[Any]]
                        ) -> Callable[[Any, ServicerContext], AsyncIterator[Any]]:
        if self._meters is None:
            return handler
        return self._meters.stream(path, handler)

    def _refused(self, path: str, error: RpcError) -> None:
        if self._meters is not None:
            self._meters.refused(path, error, known=path in self._router.handlers)

    def unary_handler(self, route: Route) -> MethodHandler:
        """The handler of one announced unary method: traced, metered, admitted, forwarded."""
        assert self._forwarder is not None
        return grpc.unary_unary_rpc_method_handler(tracing.traced_unary(
            route.path, self._metered_unary(route.path, self._guarded_unary(
                route.path, declared_permission(route.method),
                self._forwarder.unary(route)))))

    def stream_handler(self, route: Route) -> MethodHandler:
        """The handler of one announced server-streaming method."""
        assert self._forwarder is not None
        return grpc.unary_stream_rpc_method_handler(tracing.traced_stream(
            route.path, self._metered_stream(route.path, self._guarded_stream(
                route.path, declared_permission(route.method),
                self._forwarder.stream(route)))))

    def _servicer_handlers(self, service: ServiceDescriptor,
                           servicer: object) -> dict[str, MethodHandler]:
        """Handlers for one of the gateway's own services, behind the guard."""
        handlers: dict[str, MethodHandler] = {}
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            behavior = getattr(servicer, method.name)
            request_type = message_factory.GetMessageClass(method.input_type)

            async def inner(request: bytes, context: ServicerContext, call: GatewayCall,
                            behavior: Any = behavior, request_type: Any = request_type,
                            path: str = path) -> Any:
                try:  # parsed only once the caller is admitted
                    message = request_type.FromString(request)
                except DecodeError:
                    raise InvalidArgument(f"{path}: the request is not a valid "
                                          f"{request_type.DESCRIPTOR.full_name}") from None
                return await behavior(message, context)

            handlers[path] = grpc.unary_unary_rpc_method_handler(
                tracing.traced_unary(path, self._metered_unary(path, self._guarded_unary(
                    path, declared_permission(method), inner))),
                response_serializer=lambda message: message.SerializeToString())
        return handlers

    def unknown_handler(self, path: str) -> MethodHandler:
        """Unknown paths: callers must still sign in before they learn what is served."""
        error = explain_unknown(path, self._view.snapshot if self._view else Snapshot(),
                                ever_served=self._ever_served,
                                own_services=[s.full_name for s in _OWN_SERVICES])

        async def unknown(request: bytes, context: ServicerContext, call: GatewayCall) -> bytes:
            raise error

        if self.guard is None or path.startswith("/grpc."):
            # standard services (reflection v1 probes from grpcurl) stay open, like health
            async def bare(request: bytes, context: ServicerContext) -> bytes:
                await context.abort(error.code, error.message, error.trailers())
                raise AssertionError("unreachable: abort raises")
            handler = self._metered_unary(path, bare, known=False)
        else:
            handler = self._metered_unary(
                path, self._guarded_unary(path, PERMISSION_READ, unknown), known=False)
        return grpc.unary_unary_rpc_method_handler(tracing.traced_unary(path, handler))


def server_credentials(config: MeshConfig) -> grpc.ServerCredentials | None:
    """TLS for the gateway's port when a certificate and key are configured."""
    tls = config.gateway.tls
    if tls.cert_file is None and tls.key_file is None:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("gateway.tls needs both cert_file and key_file")
    try:
        pair = (tls.key_file.read_bytes(), tls.cert_file.read_bytes())
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"gateway.tls: cannot read {exc.filename}: {exc.strerror}") from exc
    if tls.require_client_cert and client_ca is None:
        raise ConfigError("gateway.tls.require_client_cert needs gateway.tls.client_ca_file")
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=tls.require_client_cert)
