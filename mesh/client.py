"""An async Python client for the mesh's gateway.

::

    from mesh.client import MeshClient
    from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

    async with MeshClient("127.0.0.1:50051", timeout=5.0) as client:
        nodes = await client.list_nodes()
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)  # typed as the async stub
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hi"))

With auth on (the default), sign in first (``await client.login(user, password)``) or
pass ``token=``: an access token, or an API key (``revo_<id>_<secret>``, from
``UserService.CreateApiKey`` or ``revo keys create``), which acts as its owner with the
key's role; every call then carries ``authorization: Bearer <token>``.
Generated stubs are bound to ``client.channel``. Every call made through it gets the
client's default ``timeout`` (when the call gives none) and its ``metadata``. Pass a
:class:`RetryPolicy` to retry calls that fail ``UNAVAILABLE`` (by gRPC's own retry
machinery). Retries are off by default: ``UNAVAILABLE`` also reports a node that died
while serving a call, which may already have run, so retry only calls that are safe to
repeat.

A failed call raises ``grpc.aio.AioRpcError``; :func:`rpc_error` turns it into the mesh's
own error class with the details the gateway sent (``grpc-status-details-bin``)::

    try:
        await echo.Echo(request)
    except grpc.aio.AioRpcError as exc:
        error = rpc_error(exc)  # e.g. RateLimited, with .reason, .retry_after_s, .violations
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_status import rpc_status

from mesh.config import MeshConfig
from mesh.errors import RpcError, error_from_status
from mesh.v1 import auth_pb2, auth_pb2_grpc, mesh_pb2, mesh_pb2_grpc

__all__ = ["MeshClient", "RetryPolicy", "client_credentials", "probe_mesh", "rpc_error"]

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retries for calls that failed with one of ``codes``."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def service_config(self) -> str:
        return json.dumps({"methodConfig": [{
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": max(2, min(self.max_attempts, 5)),
                "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s",
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": [code.name for code in self.codes],
            },
        }]})


class _Defaults:
    """The client's default timeout, metadata and token, applied to every call.

    grpc.aio files an interceptor under the first call kind it implements, so each kind
    gets its own interceptor object sharing this state."""

    def __init__(self, timeout: float | None, metadata: Metadata) -> None:
        self._timeout = timeout
        self._metadata = tuple(metadata)
        self.token = ""

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self._metadata)
        if self.token:
            metadata.add("authorization", f"Bearer {self.token}")
        for key, value in details.metadata or ():
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    def interceptors(self) -> list[Any]:
        return [_UnaryDefaults(self), _StreamDefaults(self)]


class _UnaryDefaults(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, defaults: _Defaults) -> None:
        self._defaults = defaults

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._defaults._details(details), request)


class _StreamDefaults(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, defaults: _Defaults) -> None:
        self._defaults = defaults

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._defaults._details(details), request)


class MeshClient:
    """A connection to a revo gateway with default deadline, metadata and retries."""

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
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retry else 0),
        ]
        if retry is not None:
            options.append(("grpc.service_config", retry.service_config()))
        self._defaults = _Defaults(timeout, metadata)
        self._defaults.token = token or ""
        interceptors = self._defaults.interceptors()
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options,
                                                     interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options,
                                                   interceptors=interceptors)
        self.mesh = mesh_pb2_grpc.MeshServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.tokens: auth_pb2.Tokens | None = None

    @property
    def token(self) -> str:
        """The access token or API key sent with every call ('' for none)."""
        return self._defaults.token

    @token.setter
    def token(self, value: str) -> None:
        self._defaults.token = value

    async def login(self, username: str, password: str) -> auth_pb2.Tokens:
        """Sign in; later calls carry the access token."""
        response = await self.auth.Login(auth_pb2.LoginRequest(username=username,
                                                                password=password))
        self.tokens, self.token = response.tokens, response.tokens.access_token
        return response.tokens

    async def refresh(self) -> auth_pb2.Tokens:
        """Trade the refresh token from :meth:`login` for a new pair."""
        if self.tokens is None:
            raise RuntimeError("login() first")
        response = await self.auth.Refresh(auth_pb2.RefreshRequest(
            refresh_token=self.tokens.refresh_token))
        self.tokens, self.token = response.tokens, response.tokens.access_token
        return response.tokens

    async def logout(self) -> None:
        """Revoke both tokens on every gateway."""
        refresh = self.tokens.refresh_token if self.tokens else ""
        await self.auth.Logout(auth_pb2.LogoutRequest(refresh_token=refresh))
        self.tokens, self.token = None, ""

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
