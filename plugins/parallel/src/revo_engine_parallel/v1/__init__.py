"""Parallel Mind's contract ``revo.tasks.v1`` under its public name:
``from revo_engine_parallel.v1 import tasks_pb2, tasks_pb2_grpc``.

The modules are generated under ``revo_engine_parallel._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from revo_engine_parallel._gen.revo.tasks.v1 import tasks_pb2, tasks_pb2_grpc

__all__ = ["tasks_pb2", "tasks_pb2_grpc"]
