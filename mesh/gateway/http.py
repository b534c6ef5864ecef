"""The gateway's HTTP door: the same calls as gRPC, for tools that speak HTTP and JSON.

One aiohttp server in the gateway's process (``gateway.http_address``, 127.0.0.1:8000 in
``revo up``) serves ``/health``, the OpenAI-compatible API under ``/v1``
(:mod:`mesh.gateway.openai`) and the Connect protocol for every method the mesh serves
(:mod:`mesh.gateway.connect`). None of them has rules of its own: a call runs through the
very handler gRPC uses (:meth:`HttpDoor.unary`, :meth:`HttpDoor.stream`) with an
:class:`HttpContext` standing for the gRPC call, so authentication, roles, rate limits,
audit, metrics and traces are the same by construction, and a call the guard refuses
comes back as the same :class:`~mesh.errors.RpcError` a gRPC caller would read.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from aiohttp import web
from google.rpc import status_pb2

from mesh.errors import ConfigError, Internal, RpcError, Unimplemented, error_from_status

if TYPE_CHECKING:
    from mesh.gateway.server import Gateway

__all__ = ["CallAborted", "HttpContext", "HttpDoor", "RouteTable"]

log = logging.getLogger(__name__)

_DETAILS_TRAILER = "grpc-status-details-bin"

RouteTable = Callable[["HttpDoor"], Iterable[web.AbstractRouteDef]]
"""What a protocol adds to the door: its routes, given the door they call through."""


class CallAborted(Exception):
    """A handler ended the call with an error (what ``context.abort`` is for gRPC)."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.message)
        self.error = error


class HttpContext:
    """What the gateway's handlers read of a gRPC call, for a call that came over HTTP:
    its metadata (the request's headers, lower-cased), its peer, its deadline; and how it
    is ended with an error (:meth:`abort` raises :class:`CallAborted`)."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_peer")

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str,
                 timeout_s: float | None = None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""

    @classmethod
    def of(cls, request: web.Request, timeout_s: float | None = None) -> HttpContext:
        metadata = tuple((name.lower(), value) for name, value in request.headers.items())
        return cls(metadata, f"http:{request.remote or ''}", timeout_s)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()) -> NoReturn:
        self._code, self._details = code, details
        status = None
        for name, value in trailing_metadata:
            if name == _DETAILS_TRAILER and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        raise CallAborted(error_from_status(code, details, status))

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


class HttpDoor:
    """The HTTP server of one gateway, and the two ways its routes call the mesh."""

    def __init__(self, gateway: Gateway, address: str, max_body_bytes: int,
                 tables: Iterable[RouteTable] = ()) -> None:
        self._gateway = gateway
        self.address = address
        self.url = ""
        self.serving = False
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.router.add_get("/health", self._health)
        for table in tables:
            self._app.router.add_routes(list(table(self)))
        self._runner: web.AppRunner | None = None

    @property
    def gateway(self) -> Gateway:
        return self._gateway

    async def start(self) -> str:
        """Listen; returns the door's base URL. Raises ConfigError naming the setting when
        the address cannot be served."""
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), reuse_port=False)
        try:
            await site.start()
        except (OSError, ValueError) as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(f"gateway.http_address {self.address!r}: cannot listen there "
                              f"({exc})") from exc
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        self.serving = True
        log.info("HTTP door at %s", self.url)
        return self.url

    async def stop(self) -> None:
        self.serving = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- calls through the gateway's own handlers ------------------------------------------

    async def unary(self, path: str, request: bytes, context: HttpContext) -> bytes:
        """Call a unary method as gRPC would: the reply's bytes, or the call's
        :class:`RpcError` (refused, failed in its engine, or unknown)."""
        handler: Any = self._gateway.handler(path)  # its behaviors take any call context
        if handler.unary_unary is None:
            raise Unimplemented(f"{path} is server-streaming: call it with gRPC, gRPC-web or "
                                "the Connect streaming protocol (application/connect+json)")
        try:
            reply = await handler.unary_unary(request, context)
        except CallAborted as aborted:
            raise aborted.error from None
        serializer = handler.response_serializer
        return serializer(reply) if serializer is not None else reply  # type: ignore[no-any-return]

    async def stream(self, path: str, request: bytes,
                     context: HttpContext) -> AsyncIterator[bytes]:
        """Call a server-streaming method: its messages' bytes, then the end, or the call's
        :class:`RpcError` (raised before the first message or after the last)."""
        handler: Any = self._gateway.handler(path)
        if handler.unary_stream is None:
            raise Unimplemented(f"{path} is unary: call it with a unary request")
        messages: Any = handler.unary_stream(request, context)
        try:
            async for message in messages:
                yield message
        except CallAborted as aborted:
            raise aborted.error from None
        finally:
            with contextlib.suppress(CallAborted):
                await messages.aclose()

    # -- /health ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        """200 while the gateway serves (with what it serves), 503 once it is stopping."""
        snapshot = self._gateway.snapshot
        body = {"status": "serving" if self.serving else "stopping",
                "nodes": len(snapshot.nodes), "services": sorted(snapshot.services)}
        return web.json_response(body, status=200 if self.serving else 503)


def internal(path: str, exc: BaseException) -> RpcError:
    """The error of a bug met while serving ``path`` over HTTP (logged with its trace)."""
    log.error("%s over HTTP failed", path, exc_info=exc)
    return Internal(f"{path} failed in the gateway's HTTP door: {type(exc).__name__}")

