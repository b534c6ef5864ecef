"""Engine ``relay``: an async engine that calls another engine, for tests of traces.

Service ``revo.relaytest.v1.RelayService`` is built here at import time (no ``.proto``
file). ``Relay`` asks ``EchoService.Echo`` for the request's payload through the mesh
(``runtime.channel``, a generated stub) as its caller, and answers with the echo; with
``crash`` set it fails as a bug would (``INTERNAL``) before calling anything.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from mesh.engine import AsyncEngine, Context, EngineSpec, hookimpl
from mesh.v1 import options_pb2  # puts options.proto in the default pool
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

PACKAGE = "revo.relaytest.v1"
FILE = "revo/relaytest/v1/relay.proto"
SERVICE = f"{PACKAGE}.RelayService"


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=FILE, package=PACKAGE, syntax="proto3", dependency=[options_pb2.DESCRIPTOR.name])
    request = file.message_type.add(name="RelayRequest")
    request.field.add(name="payload", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    request.field.add(name="crash", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    response = file.message_type.add(name="RelayResponse")
    response.field.add(name="payload", number=1,
                       type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    method = file.service.add(name="RelayService").method.add(
        name="Relay", input_type=f".{PACKAGE}.RelayRequest",
        output_type=f".{PACKAGE}.RelayResponse")
    options = descriptor_pb2.MethodOptions()
    options.Extensions[options_pb2.permission] = options_pb2.PERMISSION_EXECUTE  # type: ignore[misc]
    method.options.CopyFrom(options)
    return file


def _service() -> ServiceDescriptor:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE)
    except KeyError:  # first import in this process
        pool.AddSerializedFile(_file().SerializeToString())
    return pool.FindServiceByName(SERVICE)


RELAY_SERVICE = _service()
RelayRequest: Any = message_factory.GetMessageClass(
    RELAY_SERVICE.file.pool.FindMessageTypeByName(f"{PACKAGE}.RelayRequest"))
RelayResponse: Any = message_factory.GetMessageClass(
    RELAY_SERVICE.file.pool.FindMessageTypeByName(f"{PACKAGE}.RelayResponse"))
RELAY = f"/{SERVICE}/Relay"


class RelayEngine(AsyncEngine):
    services = (RELAY_SERVICE,)

    async def relay(self, request: Any, ctx: Context) -> Any:
        if request.crash:
            raise RuntimeError("relay was asked to crash")
        echo = echo_pb2_grpc.EchoServiceStub(self.runtime.channel(ctx))  # as the caller
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=request.payload))
        return RelayResponse(payload=reply.payload)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="relay", engine=RelayEngine)
