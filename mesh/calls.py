"""Calling another engine's method from inside the mesh, on behalf of a caller.

An engine that needs another engine's method (Perfect Recall asks ``ModelService.Embed``
for embeddings; a Parallel Mind task calls any unary method) does what the gateway does for
a client: it finds the method's route in the registry, checks (when auth is on) that the
original caller's role grants the method's declared permission, as the gateway would, and
sends the request over NATS with the request id, the deadline and the caller's sealed
identity as headers, so the receiving engine sees that caller, not the calling engine.
:class:`MeshCalls` is that, once, for every engine.

Engines do not call :class:`MeshCalls` with paths: they get a :class:`MeshChannel` for the
call they serve (``self.runtime.channel(ctx)``) and use the standard generated stub on it,
as a gRPC client would::

    models = models_pb2_grpc.ModelServiceStub(self.runtime.channel(ctx))
    reply = await models.Embed(models_pb2.EmbedRequest(texts=texts), timeout=30)

The channel implements the unary-unary and unary-stream parts of ``grpc.aio.Channel``
(the ones the mesh serves), carries the caller's identity, request id and trace context,
and bounds each call by the earlier of the caller's deadline and the stub call's
``timeout``. Failures are raised as :class:`mesh.errors.RpcError` (the callee's type and
details), not ``grpc.aio.AioRpcError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio

from mesh.auth.identity import IdentitySeal
from mesh.auth.roles import declared_permission, grants, permission_name
from mesh.config import MeshConfig
from mesh.errors import (
    DeadlineExceeded,
    PermissionDenied,
    Reason,
    RpcError,
    Unavailable,
    Unimplemented,
)
from mesh.registry import RegistryView, Route, Snapshot
from mesh.transport import headers as h
from mesh.transport.connection import MeshConnection
from mesh.transport.responder import idempotency_key
from mesh.transport.rpc import Requester

__all__ = ["MeshCalls", "MeshChannel"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

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

    def _prepare(self, method: str, caller: str, role: str, request_id: str, timeout: float,
                 traceparent: str, idempotency_key: str) -> tuple[Route, float, dict[str, str]]:
        """The route, the bounded timeout and the headers of a call, or the error that
        stops it before it is sent."""
        route = self.route(method)
        if route is None:
            raise Unavailable(f"no live node serves {method} right now",
                              reason=Reason.NO_LIVE_NODE, metadata={"method": method})
        if self.seal is not None:
            needed = declared_permission(route.method)
            if not grants(role, needed):
                raise PermissionDenied(f"{method} needs the {permission_name(needed)} "
                                       f"permission; role {role!r} lacks it",
                                       metadata={"permission": permission_name(needed)})
        timeout = max(0.001, timeout)
        headers = {h.REQUEST_ID: request_id, h.TIMEOUT_MS: str(max(1, int(timeout * 1000)))}
        if traceparent:
            headers[h.TRACEPARENT] = traceparent
        if idempotency_key:
            headers[h.IDEMPOTENCY_KEY] = idempotency_key
        if self.seal is not None:
            expires_ms = int((time.time() + timeout) * 1000) + _SEAL_SLACK_MS
            headers.update(self.seal.headers(caller, role, method, expires_ms))
        return route, timeout, headers

    async def call(self, method: str, request: bytes, *, caller: str, role: str,
                   request_id: str, timeout: float, traceparent: str = "",
                   idempotency_key: str = "") -> bytes:
        """The serialized answer of ``method`` to ``request``, called as ``caller`` with
        ``role``, waiting at most ``timeout`` seconds. Raises the callee's error,
        UNAVAILABLE when no live node serves the method, and PERMISSION_DENIED when auth is
        on and ``role`` lacks the method's permission. ``idempotency_key`` becomes the
        callee's ``Context.idempotency_key``."""
        route, timeout, headers = self._prepare(method, caller, role, request_id, timeout,
                                                traceparent, idempotency_key)
        return await self.requester.call(route.subject, request, timeout, headers)

    async def stream(self, method: str, request: bytes, *, caller: str, role: str,
                     request_id: str, timeout: float, traceparent: str = "",
                     window: int = 32, idempotency_key: str = "") -> AsyncIterator[bytes]:
        """The serialized messages of the server stream ``method`` opens for ``request``;
        as :meth:`call`, for server-streaming methods. Closing the iterator early cancels
        the stream at its node."""
        route, timeout, headers = self._prepare(method, caller, role, request_id, timeout,
                                                traceparent, idempotency_key)
        async for item in self.requester.stream(route.subject, request, timeout, headers,
                                                window):
            yield item


class MeshChannel(aio.Channel):
    """A ``grpc.aio`` channel whose calls go over the mesh as one caller.

    Made by :meth:`mesh.engine.EngineRuntime.channel` for the call an engine serves: give
    it to a generated stub (``FooServiceStub(channel)``). Every call carries ``caller``,
    ``role``, ``request_id`` and ``traceparent``, and ends by ``deadline`` (a
    ``time.monotonic()`` value) or the stub call's ``timeout``, whichever comes first.
    Unary-unary and unary-stream methods are supported. Of a call's ``metadata`` only
    ``idempotency-key`` is read (it becomes the callee's ``Context.idempotency_key``);
    the rest, ``credentials``, ``wait_for_ready`` and ``compression`` are accepted and
    ignored (identity comes from the call being served). Errors are
    :class:`mesh.errors.RpcError`.
    """

    def __init__(self, calls: MeshCalls, *, caller: str, role: str, request_id: str,
                 deadline: float, traceparent: str = "", window: int = 32) -> None:
        self.calls = calls
        self.caller, self.role, self.request_id = caller, role, request_id
        self.deadline, self.traceparent, self.window = deadline, traceparent, window

    def serves(self, method: aio.UnaryUnaryMultiCallable[Any, Any]
               | aio.UnaryStreamMultiCallable[Any, Any]) -> bool:
        """Whether a live node serves a stub's method now (``channel.serves(stub.Embed)``)."""
        return isinstance(method, _MultiCallable) and self.calls.route(method.path) is not None

    def _timeout(self, timeout: float | None) -> float:
        left = self.deadline - time.monotonic()
        if timeout is not None:
            left = min(left, timeout)
        if left <= 0:
            raise DeadlineExceeded("the deadline passed before the call to another engine")
        return left

    async def _unary(self, path: str, request: bytes, timeout: float | None,
                     metadata: Any = None) -> bytes:
        return await self.calls.call(path, request, caller=self.caller, role=self.role,
                                     request_id=self.request_id,
                                     timeout=self._timeout(timeout),
                                     traceparent=self.traceparent,
                                     idempotency_key=_idempotency_key(metadata))

    def _stream(self, path: str, request: bytes, timeout: float | None,
                metadata: Any = None) -> AsyncIterator[bytes]:
        return self.calls.stream(path, request, caller=self.caller, role=self.role,
                                 request_id=self.request_id, timeout=self._timeout(timeout),
                                 traceparent=self.traceparent, window=self.window,
                                 idempotency_key=_idempotency_key(metadata))

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool | None = False,
                    ) -> aio.UnaryUnaryMultiCallable[Any, Any]:
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str,
                     request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False,
                     ) -> aio.UnaryStreamMultiCallable[Any, Any]:
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        raise Unimplemented(f"{method}: client streaming is not supported by the mesh")

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        raise Unimplemented(f"{method}: client streaming is not supported by the mesh")

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        return None

    async def close(self, grace: float | None = None) -> None:
        """Nothing to close: the node owns the connection."""

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity
                                    ) -> None:
        await asyncio.Event().wait()  # the state never changes

    async def channel_ready(self) -> None:
        return None


class _MultiCallable:
    def __init__(self, channel: MeshChannel, path: str,
                 serializer: Callable[[Any], bytes] | None,
                 deserializer: Callable[[bytes], Any] | None) -> None:
        self.channel, self.path = channel, path
        self.serialize = serializer or _as_bytes
        self.deserialize = deserializer or _as_is


def _idempotency_key(metadata: Any) -> str:
    """The ``idempotency-key`` of a call's metadata ('' without one)."""
    for name, value in metadata or ():
        if name == "idempotency-key":
            return idempotency_key(value if isinstance(value, str) else value.decode())
    return ""


def _as_bytes(request: Any) -> bytes:
    if not isinstance(request, bytes):
        raise TypeError(f"a method without a request serializer takes bytes, "
                        f"got {type(request).__name__}")
    return request


def _as_is(data: bytes) -> Any:
    return data


class _UnaryUnary(_MultiCallable, aio.UnaryUnaryMultiCallable[Req, Resp]):
    def __call__(self, request: Req, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> aio.UnaryUnaryCall[Req, Resp]:
        async def run() -> Resp:
            data = await self.channel._unary(self.path, self.serialize(request), timeout,
                                             metadata)
            return self.deserialize(data)  # type: ignore[no-any-return]

        return _UnaryCall(asyncio.get_running_loop().create_task(run()))


class _UnaryStream(_MultiCallable, aio.UnaryStreamMultiCallable[Req, Resp]):
    def __call__(self, request: Req, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> aio.UnaryStreamCall[Req, Resp]:
        async def messages() -> AsyncIterator[Resp]:
            async for data in self.channel._stream(self.path, self.serialize(request),
                                                   timeout, metadata):
                yield self.deserialize(data)

        return _StreamCall(messages())


def _status(error: BaseException | None) -> tuple[grpc.StatusCode, str]:
    if error is None:
        return grpc.StatusCode.OK, ""
    if isinstance(error, RpcError):
        return error.code, error.message
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"


class _Outcome:
    """The parts of ``grpc.aio.Call`` that do not depend on the kind of call."""

    _done: asyncio.Event
    _error: BaseException | None = None
    _cancelled = False

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done.is_set()

    def time_remaining(self) -> float | None:
        return None

    async def initial_metadata(self) -> aio.Metadata:
        return aio.Metadata()

    async def trailing_metadata(self) -> aio.Metadata:
        return aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        await self._done.wait()
        return _status(self._error)[0]

    async def details(self) -> str:
        await self._done.wait()
        return _status(self._error)[1]

    async def wait_for_connection(self) -> None:
        return None


class _UnaryCall(_Outcome, aio.UnaryUnaryCall[Req, Resp]):
    def __init__(self, task: asyncio.Task[Resp]) -> None:
        self._task, self._done = task, asyncio.Event()
        task.add_done_callback(lambda t: self._finish(
            asyncio.CancelledError() if t.cancelled() else t.exception()))

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._task.__await__()

    def cancel(self) -> bool:
        self._cancelled = self._task.cancel()
        return self._cancelled

    def add_done_callback(self, callback: Any) -> None:
        self._task.add_done_callback(lambda _: callback(self))


class _StreamCall(_Outcome, aio.UnaryStreamCall[Req, Resp]):
    def __init__(self, messages: AsyncIterator[Resp]) -> None:
        self._messages, self._done = messages, asyncio.Event()
        self._callbacks: list[Any] = []

    def _finish(self, error: BaseException | None) -> None:
        if not self._done.is_set():
            super()._finish(error)
            for callback in self._callbacks:
                callback(self)

    async def __aiter__(self) -> AsyncIterator[Resp]:  # type: ignore[override]
        try:
            async for message in self._messages:
                yield message
        except BaseException as error:
            self._finish(error)
            raise
        self._finish(None)

    async def read(self) -> Any:
        try:
            return await anext(self._messages)
        except StopAsyncIteration:
            self._finish(None)
            return aio.EOF  # type: ignore[attr-defined]
        except BaseException as error:
            self._finish(error)
            raise

    def cancel(self) -> bool:
        if self._done.is_set():
            return False
        self._cancelled = True
        self._finish(asyncio.CancelledError())
        closing = getattr(self._messages, "aclose", None)
        if closing is not None:
            asyncio.get_running_loop().create_task(closing())
        return True

    def add_done_callback(self, callback: Any) -> None:
        self._callbacks.append(callback)
