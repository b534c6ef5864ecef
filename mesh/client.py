"""An async Python client for the mesh's gateway.

::

    from mesh.client import MeshClient
    from revo_engine_echo._gen.revo.echo.v1 import echo_pb2, echo_pb2_grpc

    async with MeshClient("127.0.0.1:50051", timeout=5.0) as client:
        nodes = await client.list_nodes()
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)  # typed as the async stub
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hi"))

Generated stubs are bound to ``client.channel``. Every call made through it gets the
client's default ``timeout`` (when the call gives none) and its ``metadata``. Pass a
:class:`RetryPolicy` to retry calls that fail ``UNAVAILABLE`` (by gRPC's own retry
machinery). Retries are off by default: ``UNAVAILABLE`` also reports a node that died
while serving a call, which may already have run, so retry only calls that are safe to
repeat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from mesh._gen.revo.mesh.v1 import mesh_pb2, mesh_pb2_grpc

__all__ = ["MeshClient", "RetryPolicy", "probe_mesh"]

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


class _Defaults(grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
                grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Applies the client's default timeout and metadata to every call."""

    def __init__(self, timeout: float | None, metadata: Metadata) -> None:
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self._metadata)
        for key, value in details.metadata or ():
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


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
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retry else 0),
        ]
        if retry is not None:
            options.append(("grpc.service_config", retry.service_config()))
        interceptors: list[Any] = [_Defaults(timeout, metadata)]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options,
                                                     interceptors=interceptors)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options,
                                                   interceptors=interceptors)
        self.mesh = mesh_pb2_grpc.MeshServiceStub(self.channel)

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


def probe_mesh(target: str, timeout: float = 1.0) -> list[mesh_pb2.Node] | None:
    """The mesh's nodes if the gateway at ``target`` answers and lists at least one, else None.

    Blocking; for launchers and command-line tools.
    """
    with grpc.insecure_channel(target) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        try:
            nodes = list(stub.ListNodes(mesh_pb2.ListNodesRequest(), timeout=timeout).nodes)
        except grpc.RpcError:
            return None
    return nodes or None
