"""The mesh's own contracts under their public names: ``from mesh.v1 import auth_pb2``.

- ``auth_pb2``/``auth_pb2_grpc``: ``revo.auth.v1`` (sign-in, users, API keys);
- ``models_pb2``/``models_pb2_grpc``: ``revo.models.v1`` (generation, embeddings, usage);
- ``mesh_pb2``/``mesh_pb2_grpc``: ``revo.mesh.v1`` (nodes and services);
- ``options_pb2``: the method options an engine's ``.proto`` declares (permission, ...).

The modules themselves are generated under ``mesh._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from mesh._gen.revo.auth.v1 import auth_pb2, auth_pb2_grpc
from mesh._gen.revo.mesh.v1 import mesh_pb2, mesh_pb2_grpc, options_pb2
from mesh._gen.revo.models.v1 import models_pb2, models_pb2_grpc

__all__ = ["auth_pb2", "auth_pb2_grpc", "mesh_pb2", "mesh_pb2_grpc", "models_pb2",
           "models_pb2_grpc", "options_pb2"]
