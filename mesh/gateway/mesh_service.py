"""``revo.mesh.v1.MeshService``: the mesh describing itself, from the gateway's registry view."""

from __future__ import annotations

from typing import Any

import grpc

from mesh.registry import RegistryView
from mesh.transport import subjects
from mesh.v1 import mesh_pb2, mesh_pb2_grpc


class MeshServicer(mesh_pb2_grpc.MeshServiceServicer):
    def __init__(self, view: RegistryView) -> None:
        self._view = view

    async def ListNodes(
        self, request: mesh_pb2.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> mesh_pb2.ListNodesResponse:
        return mesh_pb2.ListNodesResponse(nodes=[a.node for a in self._view.snapshot.nodes])

    async def ListServices(
        self, request: mesh_pb2.ListServicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> mesh_pb2.ListServicesResponse:
        snapshot = self._view.snapshot
        response = mesh_pb2.ListServicesResponse()
        for name in sorted(snapshot.services):
            service = snapshot.services[name]
            entry = response.services.add(name=name, engine=snapshot.service_engine.get(name, ""),
                                          node_ids=sorted(snapshot.service_nodes.get(name, [])))
            for method in service.methods:
                entry.methods.add(
                    name=method.name, path=subjects.grpc_path(name, method.name),
                    input_type=method.input_type.full_name,
                    output_type=method.output_type.full_name,
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming)
        return response
