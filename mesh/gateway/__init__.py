"""The gRPC gateway in front of the mesh."""

from mesh.gateway.server import Gateway

__all__ = ["Gateway"]
