"""What a plugin author writes an engine with.

An engine is a class whose methods implement the RPCs of one or more proto services. The
mesh creates one instance per actor of the engine's pool, so an instance's attributes are
its own state and are never touched by two threads at once::

    from mesh.engine import Context, Engine, EngineSpec, hookimpl

    class EchoSettings(BaseModel):
        prefix: bytes = b""

    class EchoEngine(Engine):
        services = (echo_pb2.DESCRIPTOR.services_by_name["EchoService"],)
        settings: EchoSettings

        def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
            return echo_pb2.EchoResponse(payload=self.settings.prefix + request.payload)

    @hookimpl
    def revo_engine() -> EngineSpec:
        return EngineSpec(name="echo", engine=EchoEngine, settings=EchoSettings)

The framework validates ``[engines.echo]`` with the spec's ``settings`` model and hands
every engine instance the result as ``self.settings``.

The method for RPC ``CamelName`` is ``camel_name``. A server-streaming RPC's method returns
an iterable (usually a generator) of responses; the mesh pulls the next item only when the
caller can take it. Raise :class:`mesh.errors.RpcError` for failures the caller should see
with their own status; any other exception is answered ``INTERNAL`` and the actor is
restarted.

An engine whose work is mostly waiting on I/O (HTTP APIs, other services, NATS) derives
from :class:`AsyncEngine` instead: one instance per node lives on the node's event loop,
its methods are ``async def`` (async generators for server streams) and many calls run
concurrently, each as a task, bounded by ``max_pending``. It reaches the node's NATS
connection and configuration, and other engines (:meth:`EngineRuntime.channel`), through
:attr:`AsyncEngine.runtime`. It must never block the loop: CPU-heavy work belongs in an
:class:`Engine`'s actors.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, Protocol, TypeVar

import pluggy
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from mesh.errors import ConfigError, Unavailable
from mesh.observability.metrics import EngineMetrics

if TYPE_CHECKING:
    from mesh.calls import MeshCalls, MeshChannel
    from mesh.config import MeshConfig
    from mesh.transport.connection import MeshConnection

__all__ = [
    "AsyncEngine",
    "Context",
    "Engine",
    "EngineRuntime",
    "EngineSpec",
    "LoadProgress",
    "MethodBinding",
    "PluginHooks",
    "bind_methods",
    "hookimpl",
    "hookspec",
    "is_async_engine",
    "lazy_exports",
    "method_attribute",
]

hookimpl = pluggy.HookimplMarker("revo")
"""Marks a plugin's implementation of a ``revo_*`` hook. A plugin implementing a hook that
another plugin declares marks it ``@hookimpl(optionalhook=True)``, so that it still loads
where that plugin is not installed."""

hookspec = pluggy.HookspecMarker("revo")
"""Marks a hook specification: the mesh's own (:mod:`mesh.plugins.hookspecs`) and those a
plugin declares for other plugins (returned from its ``revo_hookspecs``)."""

P = ParamSpec("P")
T = TypeVar("T")


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562) that imports each of ``names`` (name ->
    the module defining it, relative to ``package``) on first use.

    An engine's package is imported whenever anything under it is, its public stubs
    ``<package>.v1`` included: with its engine and settings exported this way (and imported
    inside its ``revo_engine`` hook), a client that only needs the stubs does not load the
    engine and its dependencies::

        __getattr__ = lazy_exports(__name__, {"GreetEngine": ".engine"})
    """
    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)  # the next lookup is a plain one
        return value

    return __getattr__


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
    idempotency_key: str = ""
    """The caller's key for this call's effect ('' when none): from the gRPC metadata
    ``idempotency-key``, or set by the Coordinator from a workflow's run and step. An
    engine that stores or starts something derives its own keys from it (Perfect Recall's
    ``client_id``, Parallel Mind's ``idempotency_key``), so that a call repeated after a
    crash or a retry has its effect once. It is not passed on to the calls an engine makes
    (each of those is a different effect): pass a key of your own as their metadata."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the caller cancelled the call or went away, or the deadline passed."""
    _cancel_hooks: list[Callable[[], object]] = field(default_factory=list, repr=False,
                                                    compare=False)

    def cancel(self) -> None:
        """Mark the call cancelled (the caller cancelled it or went away, or its deadline
        passed) and run what its pool asked to run then. On the node's loop."""
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        hooks, self._cancel_hooks = self._cancel_hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` (on the node's loop) when the call is cancelled; at once when it
        already is. Pools use it to stop the call's work and answer."""
        if self.cancelled.is_set():
            hook()
        else:
            self._cancel_hooks.append(hook)

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
        """``[engines.<name>]`` validated by :attr:`EngineSpec.settings` (None without one)."""

    def start(self) -> None:
        """Called in the actor's thread before its first call; raise to fail the start."""

    def stop(self) -> None:
        """Called in the actor's thread when the actor stops or is replaced."""


class PluginHooks(Protocol):
    """The plugins' answers to a hook that a plugin declared (see ``revo_hookspecs``)."""

    def each(self, spec: Callable[P, T | None], *args: P.args,
             **kwargs: P.kwargs) -> dict[str, T]:
        """Each enabled plugin's non-None answer to the hook ``spec`` specifies, by plugin
        name; arguments by keyword."""
        ...


class LoadProgress:
    """An engine's load at start (its data, an index, models), as the node announces it:
    ``revo status`` shows ``loading <done> of <total> <unit>`` while it runs, and the
    engine's status is ``LOADING`` (it still takes calls, answering those it cannot serve
    yet with ``UNAVAILABLE``). An :class:`AsyncEngine` reports through
    :meth:`EngineRuntime.report_loading` and :meth:`EngineRuntime.report_loaded`."""

    def __init__(self, on_change: Callable[[], object] | None = None) -> None:
        self.loading = False
        self.done = 0
        self.total = 0
        """0 when the engine does not know how much there is."""
        self.unit = ""
        self.on_change = on_change
        """Called (on the node's loop) when loading starts or ends, so the node announces
        it at once rather than at its next heartbeat."""

    def report(self, done: int, total: int = 0, unit: str = "") -> None:
        if done < 0 or total < 0:
            raise ValueError(f"load progress counts are never negative (got {done} of "
                             f"{total})")
        started = not self.loading
        self.loading, self.done, self.total = True, done, total
        self.unit = unit or self.unit
        if started and self.on_change is not None:
            self.on_change()

    def finish(self) -> None:
        if not self.loading:
            return
        self.loading = False
        if self.on_change is not None:
            self.on_change()

    def describe(self) -> str:
        """``1200 of 5000 memories`` (``1200 memories`` without a total)."""
        counted = f"{self.done} of {self.total}" if self.total else f"{self.done}"
        return f"{counted} {self.unit}".rstrip()


class EngineRuntime:
    """What the node offers an :class:`AsyncEngine`: its identity, configuration, NATS,
    the other plugins' hooks and channels to other engines."""

    def __init__(self, node_id: str, config: MeshConfig,
                 nc: MeshConnection | None = None,
                 plugins: PluginHooks | None = None) -> None:
        self.node_id = node_id
        self.config = config
        self._nc = nc
        self._plugins = plugins
        self._calls: MeshCalls | None = None
        self.metrics = EngineMetrics(None, node_id)
        """The engine's own Prometheus metrics (``runtime.metrics.histogram(...)``, see
        :class:`~mesh.observability.metrics.EngineMetrics`): served on the node's
        ``/metrics`` with its ``node`` label, unregistered when the engine stops, and
        do-nothing when the node's metrics are off."""
        self.progress = LoadProgress()
        """The engine's load at start (see :meth:`report_loading`)."""

    def for_engine(self, metrics: EngineMetrics | None = None,
                   progress: LoadProgress | None = None) -> EngineRuntime:
        """This runtime as one engine sees it: the node's, with the engine's own metrics
        and load progress."""
        import copy

        runtime = copy.copy(self)
        runtime.metrics = metrics if metrics is not None else self.metrics
        runtime.progress = progress if progress is not None else LoadProgress()
        return runtime

    def report_loading(self, done: int, total: int = 0, unit: str = "") -> None:
        """Say that the engine is still loading, and how far it has come: ``done`` of
        ``total`` ``unit`` (``total`` 0 when unknown; ``unit`` plural, "memories"). Its
        status is ``LOADING`` until :meth:`report_loaded`; ``revo status`` shows the
        figures. Call it on the node's loop, as often as is cheap: the node announces the
        latest figures with each heartbeat."""
        self.progress.report(done, total, unit)

    def report_loaded(self) -> None:
        """The load reported with :meth:`report_loading` is over: the engine runs."""
        self.progress.finish()

    async def start(self) -> None:
        """Follow the registry, so that engines can call each other (the node calls it
        before it starts engines)."""
        if self._nc is not None and self._calls is None:
            from mesh.calls import MeshCalls

            calls = MeshCalls(self._nc, self.config)
            await calls.start()
            self._calls = calls

    async def stop(self) -> None:
        """After every engine has stopped."""
        if self._calls is not None:
            await self._calls.stop()
            self._calls = None

    @property
    def nc(self) -> MeshConnection:
        """The node's NATS connection (JetStream through ``nc.jetstream()``)."""
        if self._nc is None:
            raise Unavailable("this node has no NATS connection: the engine needs one")
        return self._nc

    @property
    def plugins(self) -> PluginHooks:
        """Call a hook that a plugin declared: ``runtime.plugins.each(hookspecs.revo_x)``."""
        if self._plugins is None:
            raise Unavailable("this engine runs without a plugin host")
        return self._plugins

    @property
    def calls(self) -> MeshCalls:
        """The node's calls to other engines by path, and :meth:`MeshCalls.route` to see
        where a method is served. Engines call through :meth:`channel`; paths that come
        from a request (data, such as a task's method) go here."""
        if self._calls is None:
            raise Unavailable("this node has no NATS connection: calls to other engines "
                              "need one")
        return self._calls

    def channel(self, ctx: Context) -> MeshChannel:
        """A ``grpc.aio`` channel to the other engines of the mesh, as the caller of ``ctx``:
        give it to a generated stub. Each call carries ``ctx``'s caller, role, request id
        and trace, is bounded by ``ctx``'s deadline, and (with auth on) needs the caller's
        role to grant the called method's permission."""
        from mesh.calls import MeshChannel

        return MeshChannel(self.calls, caller=ctx.caller, role=ctx.role,
                           request_id=ctx.request_id, deadline=ctx.deadline,
                           traceparent=ctx.traceparent,
                           window=self.config.gateway.stream_window)


class AsyncEngine:
    """Base class of engines that run on the node's event loop; one instance per node.

    Methods are ``async def`` (async generators for server-streaming RPCs). ``start`` and
    ``stop`` run on the loop too; :attr:`runtime` is set before ``start``.
    """

    services: ClassVar[Sequence[ServiceDescriptor]] = ()
    runtime: EngineRuntime

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        """``[engines.<name>]`` validated by :attr:`EngineSpec.settings` (None without one)."""

    async def start(self) -> None:
        """Open what the engine needs (streams, clients); raise to fail the start."""

    async def stop(self) -> None:
        """Close what ``start`` opened; in-flight calls have finished or been cancelled."""


def is_async_engine(spec: EngineSpec) -> bool:
    return isinstance(spec.engine, type) and issubclass(spec.engine, AsyncEngine)


@dataclass(frozen=True)
class EngineSpec:
    """What a plugin declares from ``revo_engine``."""

    name: str
    """The engine's name; must equal the plugin's entry point name in ``revo.engines``."""
    engine: Callable[[Any], Engine | AsyncEngine]
    """An :class:`Engine` or :class:`AsyncEngine` subclass, or any callable taking the
    settings and returning an :class:`Engine`."""
    settings: type[BaseModel] | None = None
    """The engine's settings: a pydantic model of its ``[engines.<name>]`` keys (besides
    the mesh's ``pool_size`` and ``max_pending``). The mesh validates the table with it,
    refuses unknown keys, and gives every engine instance the model as ``settings``; a
    mistake is the plugin's *config error*, naming the key. None: the engine takes no keys
    of its own."""
    services: Sequence[ServiceDescriptor] = ()
    """Defaults to ``engine.services``."""
    version: str = ""
    """Defaults to the version of the distribution that provides the plugin."""
    pool_size: int = 2
    """Actors in the pool; ``[engines.<name>] pool_size`` overrides it (not used by an
    :class:`AsyncEngine`)."""
    max_pending: int = 1024
    """Calls that may wait for a free actor (for an :class:`AsyncEngine`: calls in
    flight) before callers get ``RESOURCE_EXHAUSTED``."""

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
    is_async: bool = False
    """Served on the node's loop by an :class:`AsyncEngine`."""

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
    is_async = is_async_engine(spec)
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
            if is_async:
                _check_async(spec.name, getattr(engine_type, attribute), method)
            path = f"/{service.full_name}/{method.name}"
            bindings[path] = MethodBinding(
                path=path,
                descriptor=method,
                attribute=attribute,
                request_type=message_factory.GetMessageClass(method.input_type),
                server_streaming=method.server_streaming,
                is_async=is_async,
            )
    return bindings


def _check_async(engine: str, function: Any, method: MethodDescriptor) -> None:
    if method.server_streaming and not inspect.isasyncgenfunction(function):
        raise ConfigError(f"engine '{engine}': {function.__name__} serves the server stream "
                          f"{method.full_name}, so it must be an async generator "
                          "(async def with yield)")
    if not method.server_streaming and not inspect.iscoroutinefunction(function):
        raise ConfigError(f"engine '{engine}': {function.__name__} must be 'async def' "
                          "in an AsyncEngine")

