"""The client's connection to a gateway: the channel, its credentials, its defaults.

:class:`MeshClient` is the low-level connection every facade of :mod:`mesh.client` runs
on, and the one to bind generated stubs to::

    from mesh.client import MeshClient
    from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

    async with MeshClient("127.0.0.1:50051", timeout=5.0) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hi"))

Every call made on ``client.channel`` carries the client's ``metadata`` and
``authorization: Bearer <token>`` (the token its :class:`~mesh.client.session.Session`
keeps fresh). A unary call without a deadline gets the client's ``timeout``; a stream gets
none (the gateway lets it run up to its ``gateway.max_timeout_s``). With a
:class:`RetryPolicy`, unary calls are retried where that is safe (:mod:`mesh.client.retry`).

A failed call raises ``grpc.aio.AioRpcError``; :func:`rpc_error` turns it into the mesh's
own error class with the details the gateway sent (``grpc-status-details-bin``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from mesh.client.retry import RetryPolicy, failed_call_error, retry_delay
from mesh.client.session import Session
from mesh.config import MeshConfig
from mesh.errors import Reason, RpcError, error_from_status
from mesh.v1 import auth_pb2, auth_pb2_grpc, mesh_pb2, mesh_pb2_grpc

__all__ = ["MeshClient", "client_credentials", "probe_mesh", "rpc_error"]

Metadata = Sequence[tuple[str, str]]


class _Defaults:
    """The client's default timeout, metadata, session and retries, applied to every call.

    grpc.aio files an interceptor under the first call kind it implements, so each kind
    gets its own interceptor object sharing this state."""

    def __init__(self, timeout: float | None, metadata: Metadata, session: Session,
                 retry: RetryPolicy | None) -> None:
        self.timeout = timeout
        self._metadata = tuple(metadata)
        self.session = session
        self.retry = retry

    async def details(self, details: grpc.aio.ClientCallDetails, *, streaming: bool,
                      timeout: float | None = None) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self._metadata)
        method = _method_name(details.method)
        token = await self.session.token(method)
        if token:
            metadata.add("authorization", f"Bearer {token}")
        for key, value in details.metadata or ():
            metadata.add(key, value)
        if timeout is None:
            timeout = details.timeout
        if timeout is None and not streaming:
            timeout = self.timeout
        return grpc.aio.ClientCallDetails(
            method=details.method, timeout=timeout, metadata=metadata,
            credentials=details.credentials, wait_for_ready=details.wait_for_ready)

    def interceptors(self) -> list[Any]:
        return [_UnaryDefaults(self), _StreamDefaults(self)]


def _method_name(method: str | bytes) -> str:
    """``/pkg.Service/Method`` as text (grpc.aio passes it as bytes)."""
    return method.decode() if isinstance(method, bytes) else method


class _UnaryDefaults(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, defaults: _Defaults) -> None:
        self._defaults = defaults

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        defaults = self._defaults
        method = _method_name(details.method)
        timeout = details.timeout if details.timeout is not None else defaults.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            call = await continuation(
                await defaults.details(details, streaming=False, timeout=remaining), request)
            if defaults.retry is None and not defaults.session.can_refresh:
                return call
            code = await call.code()
            if code is grpc.StatusCode.OK:
                return call
            attempt += 1
            error = await failed_call_error(call, code)
            if error.reason == Reason.TOKEN_EXPIRED and defaults.session.can_refresh \
                    and attempt == 1:
                await defaults.session.expired()  # refused before it ran: once more
                continue
            delay = retry_delay(defaults.retry, method, error, attempt)
            if delay is None or (deadline is not None
                                 and time.monotonic() + delay >= deadline):
                return call
            await asyncio.sleep(delay)


class _StreamDefaults(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, defaults: _Defaults) -> None:
        self._defaults = defaults

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._defaults.details(details, streaming=True),
                                  request)


class MeshClient:
    """A connection to a revo gateway with default deadline, metadata, credentials and
    retries.

    ``token`` is an access token or an API key (``revo_<id>_<secret>``); or sign in with
    :meth:`login`, after which access tokens are refreshed before they expire. A
    ``session`` given instead carries its own credentials (:mod:`mesh.client.session`).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        metadata: Metadata = (),
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
        token: str | None = None,
        session: Session | None = None,
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),  # ours (RetryPolicy) know which methods are safe
        ]
        self.session = session or Session(token=token or "")
        self._defaults = _Defaults(timeout, metadata, self.session, retry)
        interceptors = self._defaults.interceptors()
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options,
                                                     interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options,
                                                   interceptors=interceptors)
        self.target = target
        self.mesh = mesh_pb2_grpc.MeshServiceStub(self.channel)
        self.session.bind(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def timeout(self) -> float | None:
        """The deadline of unary calls that bring none (streams get none)."""
        return self._defaults.timeout

    @property
    def token(self) -> str:
        """The access token or API key sent with every call ('' for none)."""
        return self.session.current

    @token.setter
    def token(self, value: str) -> None:
        self.session.use_token(value)

    @property
    def tokens(self) -> auth_pb2.Tokens | None:
        """The tokens of the last sign-in or refresh (None with a fixed token)."""
        return self.session.tokens

    async def login(self, username: str, password: str) -> auth_pb2.Tokens:
        """Sign in; later calls carry the access token, refreshed before it expires."""
        return await self.session.login(username, password)

    async def refresh(self) -> auth_pb2.Tokens:
        """Trade the refresh token from :meth:`login` for a new pair now."""
        return await self.session.refresh()

    async def logout(self) -> None:
        """Revoke both tokens on every gateway."""
        await self.session.logout()

    async def list_nodes(self) -> list[mesh_pb2.Node]:
        response = await self.mesh.ListNodes(mesh_pb2.ListNodesRequest())
        return list(response.nodes)

    async def list_services(self) -> list[mesh_pb2.Service]:
        response = await self.mesh.ListServices(mesh_pb2.ListServicesRequest())
        return list(response.services)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError) -> RpcError:
    """The mesh's error for a failed gRPC call: the class its reason or code names
    (:class:`~mesh.errors.RateLimited`, :class:`~mesh.errors.BudgetExhausted`,
    :class:`~mesh.errors.InvalidArgument`, ...), with ``reason``, ``metadata``,
    ``retry_after_s`` and ``violations`` read from the ``grpc-status-details-bin``
    trailer. A call without details gives the class of its code and no details."""
    call: Any = exc  # AioRpcError, or a sync call's error (also a grpc.Call)
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that contradict the call's own status are not its details
        status = None
    return error_from_status(call.code(), call.details() or "", status)


def client_credentials(config: MeshConfig) -> grpc.ChannelCredentials | None:
    """Credentials for local tools to reach this configuration's gateway (None: plain)."""
    tls = config.gateway.tls
    if tls.cert_file is None:
        return None
    root = (tls.ca_file or tls.cert_file).read_bytes()
    if tls.require_client_cert:
        assert tls.key_file is not None
        return grpc.ssl_channel_credentials(root, tls.key_file.read_bytes(),
                                            tls.cert_file.read_bytes())
    return grpc.ssl_channel_credentials(root)


def probe_mesh(target: str, timeout: float = 1.0, token: str | None = None,
               credentials: grpc.ChannelCredentials | None = None) -> list[mesh_pb2.Node] | None:
    """The mesh's nodes if the gateway at ``target`` answers and lists at least one, else None.

    Blocking; for launchers and command-line tools.
    """
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with (grpc.secure_channel(target, credentials) if credentials
          else grpc.insecure_channel(target)) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        try:
            nodes = list(stub.ListNodes(mesh_pb2.ListNodesRequest(), timeout=timeout,
                                        metadata=metadata).nodes)
        except grpc.RpcError:
            return None
    return nodes or None
