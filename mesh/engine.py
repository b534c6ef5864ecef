"""What a plugin author writes an engine with.

An engine is a class whose methods implement the RPCs of one or more proto services. The
mesh creates one instance per actor of the engine's pool, so an instance's attributes are
its own state and are never touched by two threads at once::

    from mesh.engine import Context, Engine, EngineSpec, hookimpl

    class EchoEngine(Engine):
        services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)

        def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
            return echo_pb2.EchoResponse(payload=request.payload)

    @hookimpl
    def revo_engine() -> EngineSpec:
        return EngineSpec(name="echo", engine=EchoEngine)

The method for RPC ``CamelName`` is ``camel_name``. A server-streaming RPC's method returns
an iterable (usually a generator) of responses; the mesh pulls the next item only when the
caller can take it. Raise :class:`mesh.errors.RpcError` for failures the caller should see
with their own status; any other exception is answered ``INTERNAL`` and the actor is
restarted.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pluggy
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from mesh.errors import ConfigError

__all__ = [
    "Context",
    "Engine",
    "EngineSpec",
    "MethodBinding",
    "bind_methods",
    "hookimpl",
    "method_attribute",
]

hookimpl = pluggy.HookimplMarker("revo")
"""Marks a plugin's implementation of a ``revo_*`` hook."""


def method_attribute(rpc_name: str) -> str:
    """The Python method name that implements RPC ``rpc_name`` (``ListNodes`` -> ``list_nodes``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", rpc_name).lower()


@dataclass
class Context:
    """What an engine method knows about the call it serves."""

    method: str
    """The gRPC path, ``/package.Service/Method``."""
    request_id: str
    deadline: float
    """``time.monotonic()`` value after which the caller no longer waits."""
    node_id: str = ""
    caller: str = ""
    """The authenticated user, as set by the gateway ('' when anonymous)."""
    role: str = ""
    traceparent: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the caller went away (streams) or the deadline passed."""

    def time_remaining(self) -> float:
        """Seconds until the deadline (negative when it has passed)."""
        return self.deadline - time.monotonic()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


class Engine:
    """Base class of engines. One instance per actor; its attributes are its own state."""

    services: ClassVar[Sequence[ServiceDescriptor]] = ()
    """The proto services this engine implements (``*_pb2.DESCRIPTOR.services_by_name[...]``)."""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        """What the plugin's ``revo_configure`` returned (or the raw settings mapping)."""

    def start(self) -> None:
        """Called in the actor's thread before its first call; raise to fail the start."""

    def stop(self) -> None:
        """Called in the actor's thread when the actor stops or is replaced."""


@dataclass(frozen=True)
class EngineSpec:
    """What a plugin declares from ``revo_engine``."""

    name: str
    """The engine's name; must equal the plugin's entry point name in ``revo.engines``."""
    engine: Callable[[Any], Engine]
    """An :class:`Engine` subclass, or any callable taking the settings and returning one."""
    services: Sequence[ServiceDescriptor] = ()
    """Defaults to ``engine.services``."""
    version: str = ""
    """Defaults to the version of the distribution that provides the plugin."""
    pool_size: int = 2
    """Actors in the pool; ``[engines.<name>] pool_size`` overrides it."""
    max_pending: int = 1024
    """Calls that may wait for a free actor before callers get ``RESOURCE_EXHAUSTED``."""

    def service_descriptors(self) -> tuple[ServiceDescriptor, ...]:
        found = self.services or getattr(self.engine, "services", ())
        return tuple(found)


@dataclass(frozen=True)
class MethodBinding:
    """One RPC of an engine, resolved once when the engine loads."""

    path: str
    descriptor: MethodDescriptor
    attribute: str
    request_type: type[Message]
    server_streaming: bool

    @property
    def service(self) -> str:
        return self.descriptor.containing_service.full_name


def bind_methods(spec: EngineSpec) -> dict[str, MethodBinding]:
    """Resolve every RPC of the spec's services to an engine attribute, or raise ConfigError."""
    from google.protobuf import message_factory

    services = spec.service_descriptors()
    if not services:
        raise ConfigError(f"engine '{spec.name}' declares no services: set Engine.services")
    engine_type = spec.engine if isinstance(spec.engine, type) else None
    bindings: dict[str, MethodBinding] = {}
    for service in services:
        for method in service.methods:
            if method.client_streaming:
                raise ConfigError(f"{service.full_name}.{method.name}: client streaming is not "
                                  "supported by the mesh yet")
            attribute = method_attribute(method.name)
            if engine_type is not None and not callable(getattr(engine_type, attribute, None)):
                raise ConfigError(f"engine '{spec.name}' lacks method '{attribute}' "
                                  f"for rpc {service.full_name}.{method.name}")
            path = f"/{service.full_name}/{method.name}"
            bindings[path] = MethodBinding(
                path=path,
                descriptor=method,
                attribute=attribute,
                request_type=message_factory.GetMessageClass(method.input_type),
                server_streaming=method.server_streaming,
            )
    return bindings


SettingsMap = Mapping[str, Any]
