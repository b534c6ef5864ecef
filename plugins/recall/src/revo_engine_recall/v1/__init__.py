"""Perfect Recall's contract ``revo.recall.v1`` under its public name:
``from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc``.

The modules are generated under ``revo_engine_recall._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from revo_engine_recall._gen.revo.recall.v1 import recall_pb2, recall_pb2_grpc

__all__ = ["recall_pb2", "recall_pb2_grpc"]
