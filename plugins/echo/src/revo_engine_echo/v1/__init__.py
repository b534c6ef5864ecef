"""Echo's contract ``revo.echo.v1`` under its public name:
``from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc``.

The modules are generated under ``revo_engine_echo._gen`` (``python -m mesh.codegen``); that
path is private and may move, these names stay.
"""

from revo_engine_echo._gen.revo.echo.v1 import echo_pb2, echo_pb2_grpc

__all__ = ["echo_pb2", "echo_pb2_grpc"]
