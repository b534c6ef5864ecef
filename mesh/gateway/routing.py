"""The gateway's routing: which handler serves a method path, and how a call reaches its engine.

:class:`Router` is the gRPC server's one generic handler: a table from method path to handler,
rebuilt whenever the registry changes (one handler per announced method, plus the gateway's
own services), and a handler that explains any other path. :class:`Forwarder` is what those
handlers do once a call is admitted: send the request bytes unchanged to the engine, over
NATS with the call's request id, deadline, trace context and sealed identity as headers, or
straight to the actor pool when the engine lives in this process. :func:`explain_unknown`
words the error for a path nobody serves.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc

from mesh.auth.guard import AUTHORIZATION_METADATA, Guard, Principal
from mesh.config import GatewaySettings
from mesh.engine import Context
from mesh.errors import Reason, RpcError, Unavailable, Unimplemented
from mesh.registry import Route, Snapshot
from mesh.transport import headers as h
from mesh.transport.ids import new_request_id
from mesh.transport.responder import idempotency_key
from mesh.transport.rpc import Requester

if TYPE_CHECKING:
    from mesh.runtime.node import Node

__all__ = ["Forwarder", "GatewayCall", "HandlerBuilder", "Router", "explain_unknown",
           "read_call"]

REQUEST_ID_METADATA = "x-request-id"
TRACEPARENT_METADATA = "traceparent"
IDEMPOTENCY_KEY_METADATA = "idempotency-key"
"""The caller's key for a call's effect: ``Context.idempotency_key`` of the engine."""

ServicerContext = grpc.aio.ServicerContext[bytes, bytes]
if TYPE_CHECKING:  # generic only in the type stubs
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[bytes, bytes]
else:
    MethodHandler = grpc.RpcMethodHandler


class GatewayCall:
    """What the gateway reads from one call's metadata."""

    __slots__ = ("authorization", "idempotency_key", "principal", "request_id", "timeout",
                 "traceparent")

    def __init__(self, timeout: float, request_id: str, traceparent: str,
                 authorization: str, idempotency_key: str = "") -> None:
        self.timeout = timeout
        self.request_id = request_id
        self.traceparent = traceparent
        self.authorization = authorization
        self.idempotency_key = idempotency_key
        self.principal: Principal | None = None


def read_call(context: ServicerContext, settings: GatewaySettings, *,
              streaming: bool = False) -> GatewayCall:
    """The call's deadline (bounded by ``gateway.max_timeout_s``), request id, trace
    parent and credentials, from its gRPC context.

    A call without a deadline gets ``gateway.default_timeout_s``, except a server stream,
    which gets ``gateway.max_timeout_s``: a stream's length is its content's (a generation,
    a watch), not a round trip's, so it runs until the gateway's maximum call time, and a
    client that wants it longer resumes it (the client library does for watches)."""
    remaining = context.time_remaining()
    if remaining is None:
        timeout = settings.max_timeout_s if streaming else settings.default_timeout_s
    else:
        timeout = min(remaining, settings.max_timeout_s)
    request_id = traceparent = authorization = key = ""
    for name, value in context.invocation_metadata() or ():
        if name == REQUEST_ID_METADATA:
            request_id = str(value)
        elif name == TRACEPARENT_METADATA:
            traceparent = str(value)
        elif name == AUTHORIZATION_METADATA:
            authorization = value if isinstance(value, str) else value.decode(
                errors="replace")
        elif name == IDEMPOTENCY_KEY_METADATA:
            key = h.header_text(str(value), 256)  # checked where the call is served
    return GatewayCall(timeout, request_id or new_request_id(), traceparent, authorization,
                       key)


UnaryForward = Callable[[bytes, ServicerContext, GatewayCall], Any]
StreamForward = Callable[[bytes, ServicerContext, GatewayCall], AsyncIterator[bytes]]


class Forwarder:
    """Sends admitted calls to the engines that serve them."""

    def __init__(self, settings: GatewaySettings, requester: Requester, *,
                 guard: Guard | None = None, node: Node | None = None) -> None:
        self._settings = settings
        self._requester = requester
        self._guard = guard
        self._node = node
        """Engines hosted in this process; calls to them skip the NATS hop."""

    def _is_local(self, route: Route) -> bool:
        return self._node is not None and route.path in self._node.routes

    def unary(self, route: Route) -> UnaryForward:
        """The forward of one unary method: the response bytes, or the engine's error."""
        node, requester = self._node, self._requester
        if node is not None and self._is_local(route):
            async def local(request: bytes, context: ServicerContext,
                            call: GatewayCall) -> bytes:
                return await node.call(route.path, request, self.local_context(route, call))
            return local

        async def remote(request: bytes, context: ServicerContext, call: GatewayCall) -> bytes:
            return await requester.call(route.subject, request, call.timeout,
                                        self.headers(call, route.path))
        return remote

    def stream(self, route: Route) -> StreamForward:
        """The forward of one server-streaming method: the engine's messages."""
        node, requester = self._node, self._requester
        window = self._settings.stream_window
        if node is not None and self._is_local(route):
            def local(request: bytes, context: ServicerContext,
                      call: GatewayCall) -> AsyncIterator[bytes]:
                return node.stream(route.path, request, self.local_context(route, call), window)
            return local

        def remote(request: bytes, context: ServicerContext,
                   call: GatewayCall) -> AsyncIterator[bytes]:
            return requester.stream(route.subject, request, call.timeout,
                                    self.headers(call, route.path), window)
        return remote

    def headers(self, call: GatewayCall, path: str) -> dict[str, str]:
        """The NATS headers of a call to ``path``."""
        timeout_ms = max(1, int(call.timeout * 1000))
        out = {h.REQUEST_ID: call.request_id, h.TIMEOUT_MS: str(timeout_ms)}
        if call.traceparent:
            out[h.TRACEPARENT] = call.traceparent
        if call.idempotency_key:
            out[h.IDEMPOTENCY_KEY] = call.idempotency_key
        if call.principal is not None and self._guard is not None:
            out.update(self._guard.identity_headers(
                call.principal, path, int(time.time() * 1000) + timeout_ms + 1000))
        return out

    def local_context(self, route: Route, call: GatewayCall) -> Context:
        """The engine's view of a call served in this process."""
        assert self._node is not None
        principal = call.principal
        return Context(method=route.path, request_id=call.request_id,
                       deadline=time.monotonic() + call.timeout, node_id=self._node.id,
                       caller=principal.user if principal else "",
                       role=principal.role if principal else "",
                       traceparent=call.traceparent,
                       idempotency_key=idempotency_key(call.idempotency_key))


class HandlerBuilder(Protocol):
    """How the gateway turns a route into a complete handler (admission, metrics, traces
    around the forward)."""

    def unary_handler(self, route: Route) -> MethodHandler: ...
    def stream_handler(self, route: Route) -> MethodHandler: ...
    def unknown_handler(self, path: str) -> MethodHandler: ...


class Router(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Finds the handler for any method path; rebuilt when the registry changes."""

    def __init__(self, builder: HandlerBuilder) -> None:
        self._builder = builder
        self.handlers: dict[str, MethodHandler] = {}
        self.own: dict[str, MethodHandler] = {}
        """The gateway's own guarded services."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler:
        return self.handler(handler_call_details.method)

    def handler(self, path: str) -> MethodHandler:
        """The handler of ``path``: its method's, or one that explains why there is none."""
        found = self.handlers.get(path)
        if found is not None:
            return found
        return self._builder.unknown_handler(path)

    def rebuild(self, snapshot: Snapshot) -> None:
        handlers: dict[str, MethodHandler] = dict(self.own)
        for path, route in snapshot.routes.items():
            if path in self.own:
                continue
            handlers[path] = (self._builder.stream_handler(route) if route.server_streaming
                              else self._builder.unary_handler(route))
        self.handlers = handlers


def explain_unknown(path: str, snapshot: Snapshot, *, ever_served: Collection[str],
                    own_services: Collection[str]) -> RpcError:
    """The error for a path with no route: no such method of a served service, a service
    that no live node serves any more, or a service the mesh never served."""
    service, _, method = path.strip("/").partition("/")
    where: Mapping[str, str] = {"method": path}
    if service in snapshot.services:
        methods = ", ".join(m.name for m in snapshot.services[service].methods)
        return Unimplemented(
            f"service {service} has no method '{method}'; its methods: {methods}",
            reason=Reason.UNKNOWN_METHOD, metadata=where)
    if service in ever_served:
        return Unavailable(f"no live node serves {service} right now; start a node with "
                           "its engine or retry", reason=Reason.NO_LIVE_NODE, metadata=where)
    served = ", ".join(sorted(set(own_services) | snapshot.services.keys()))
    return Unimplemented(f"unknown method {path}: the mesh serves no service '{service}'. "
                         f"It serves: {served}", reason=Reason.UNKNOWN_METHOD, metadata=where)
