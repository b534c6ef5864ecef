"""Coordinator's contract ``revo.workflows.v1`` under its public name:
``from revo_engine_workflows.v1 import workflows_pb2, workflows_pb2_grpc``.

The modules are generated under ``revo_engine_workflows._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from revo_engine_workflows._gen.revo.workflows.v1 import workflows_pb2, workflows_pb2_grpc

__all__ = ["workflows_pb2", "workflows_pb2_grpc"]
