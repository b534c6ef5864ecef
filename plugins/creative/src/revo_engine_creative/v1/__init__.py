"""Creative's contract ``revo.creative.v1`` under its public name:
``from revo_engine_creative.v1 import creative_pb2, creative_pb2_grpc``.

The modules are generated under ``revo_engine_creative._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from revo_engine_creative._gen.revo.creative.v1 import creative_pb2, creative_pb2_grpc

__all__ = ["creative_pb2", "creative_pb2_grpc"]
