"""``revo call SERVICE/METHOD -d JSON``: call any method of the mesh with JSON, signed in by
itself (no grpcurl needed).

The method's types come from the generated modules installed here (``mesh.v1`` and each
engine's ``revo_engine_<x>.v1``), else from the gateway's server reflection (an engine
installed only on the mesh's nodes). The request is JSON in the proto3 mapping
(``google.protobuf.json_format``: field names as in the ``.proto`` or in lowerCamelCase,
bytes in base64); the response is printed as JSON, a server stream as one JSON object per
line. ``revo call --list`` lists the methods that can be called.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from mesh.cli_support import (
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    Credential,
    add_command,
    call_failure,
    channel_credentials,
    credential,
    gateway_target,
    print_json,
    sign_in,
    stderr,
)
from mesh.config import MeshConfig

__all__ = ["add_call_parser", "cmd_call", "installed_services"]

_REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
_CONNECT_TIMEOUT_S = 5.0


def _public_modules(engines: bool) -> Iterator[ModuleType]:
    """``mesh.v1``, and with ``engines`` each installed engine's ``<package>.v1`` (entry
    points ``revo.engines``), those that import."""
    names = {"mesh.v1"}
    for point in entry_points(group="revo.engines") if engines else ():
        names.add(point.value.partition(":")[0].split(".")[0] + ".v1")
    for name in sorted(names):
        logging.disable(logging.INFO)  # an engine's import chatter is not this command's
        try:
            yield importlib.import_module(name)
        except Exception:  # an engine without public modules, or a broken one
            continue
        finally:
            logging.disable(logging.NOTSET)


def installed_services(engines: bool = True) -> dict[str, ServiceDescriptor]:
    """Every service the installed generated modules describe, by full name: the mesh's
    own, and with ``engines`` the installed engines' (which imports them: seconds)."""
    found: dict[str, ServiceDescriptor] = {}
    for package in _public_modules(engines):
        for value in vars(package).values():
            file = getattr(value, "DESCRIPTOR", None)
            if isinstance(value, ModuleType) and file is not None and hasattr(
                    file, "services_by_name"):
                for service in file.services_by_name.values():
                    found[service.full_name] = service
    return found


def _normalize(name: str) -> tuple[str, str]:
    """``SERVICE/METHOD`` (also ``/pkg.Service/Method`` and ``pkg.Service.Method``)."""
    text = name.strip().strip("/")
    service, slash, method = text.partition("/")
    if not slash:
        service, _, method = text.rpartition(".")
    if not service or not method:
        raise CommandFailed(f"{name!r} is not SERVICE/METHOD (e.g. "
                            "revo.echo.v1.EchoService/Echo); `revo call --list` lists them",
                            EXIT_USAGE, "usage")
    return service, method


@dataclass
class _Gateway:
    """The gateway's address and the way to it, and what its reflection describes."""

    target: str
    credentials: grpc.ChannelCredentials | None
    _pool: descriptor_pool.DescriptorPool | None = None
    _services: list[str] | None = None
    _channel_kept: grpc.Channel | None = None
    error: str = ""

    def _channel(self) -> grpc.Channel:
        return (grpc.secure_channel(self.target, self.credentials) if self.credentials
                else grpc.insecure_channel(self.target))

    def served(self) -> list[str] | None:
        """The services the gateway serves (reflection needs no token); None when it cannot
        be asked (``error`` says why)."""
        if self._services is None and not self.error:
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
                ProtoReflectionDescriptorDatabase,
            )

            channel = self._channel()
            try:  # the list with a deadline (a refused connection fails at once)
                answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=_CONNECT_TIMEOUT_S)
                listed = next(iter(answers)).list_services_response.service
            except grpc.RpcError as exc:
                self.error = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                channel.close()
                return None
            self._services = sorted(service.name for service in listed)
            self._pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            self._channel_kept = channel  # the pool asks through it later
        return self._services

    def service(self, name: str) -> ServiceDescriptor | None:
        served = self.served()
        if served is None or name not in served or self._pool is None:
            return None
        try:
            return self._pool.FindServiceByName(name)
        except (KeyError, grpc.RpcError):
            return None


class _Catalog:
    """Where method descriptors come from: the mesh's own modules (cheap), the gateway's
    reflection (what is served), then the engines installed here (their imports take
    seconds: only for what the gateway does not describe, or when it cannot be asked)."""

    def __init__(self, gateway: _Gateway) -> None:
        self.gateway = gateway
        self._own = installed_services(engines=False)
        self._installed: dict[str, ServiceDescriptor] | None = None

    def installed(self) -> dict[str, ServiceDescriptor]:
        if self._installed is None:
            self._installed = installed_services()
        return self._installed

    def find(self, name: str) -> ServiceDescriptor | None:
        return (self._own.get(name) or self.gateway.service(name)
                or self.installed().get(name))

    def services(self) -> dict[str, ServiceDescriptor]:
        """The gateway's services when it answers, else the installed ones."""
        served = self.gateway.served()
        if served is None:
            return dict(sorted(self.installed().items()))
        out: dict[str, ServiceDescriptor] = {}
        for name in served:
            descriptor = self.find(name) if name != _REFLECTION else None
            if descriptor is not None:
                out[name] = descriptor
        return out

    def method(self, name: str) -> MethodDescriptor:
        """The method ``SERVICE/METHOD`` names; CommandFailed naming close ones if none."""
        service_name, method_name = _normalize(name)
        service = self._own.get(service_name) or self.gateway.service(service_name)
        if service is None and "." not in service_name:  # EchoService/Echo
            short = [d for d in self.services().values() if d.name == service_name]
            service = short[0] if len(short) == 1 else None
        if service is None:
            service = self.installed().get(service_name)
        method = service.methods_by_name.get(method_name) if service else None
        if method is not None:
            return method
        everything = self.services()
        if service is not None:  # a method near the name, in this service
            names = [m.name for m in service.methods]
            close = [f"{service.full_name}/{n}"
                     for n in difflib.get_close_matches(method_name, names, n=3, cutoff=0.5)]
        else:  # services near the name, short or full
            by_short = {d.name: full for full, d in everything.items()}
            near = difflib.get_close_matches(service_name, [*everything, *by_short], n=3,
                                             cutoff=0.6)
            close = []
            for full in dict.fromkeys(by_short.get(n, n) for n in near):
                methods = everything[full].methods_by_name
                close.append(f"{full}/{method_name}" if method_name in methods else full)
        close += [f"{full}/{m.name}" for full, d in everything.items() for m in d.methods
                  if m.name.lower() == method_name.lower() and f"{full}/{m.name}" not in close
                  and (service is None or full != service.full_name)]  # another service's
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        what = (f"service {service.full_name} has no method {method_name!r}" if service
                else f"unknown service {service_name!r}")
        raise CommandFailed(f"{what}{hint} (`revo call --list` lists the methods)",
                            EXIT_USAGE, "usage")


def _read_data(data: str) -> str:
    if data == "-":
        return sys.stdin.read()
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_text()
        except OSError as exc:
            raise CommandFailed(f"-d {data}: cannot read {path}: {exc.strerror}", EXIT_USAGE,
                                "usage") from None
    return data


def _request(method: MethodDescriptor, data: str, pool: Any) -> Message:
    text = _read_data(data).strip() or "{}"
    where = "the request" if not data.startswith("@") else data[1:]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandFailed(f"{where} is not JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}", EXIT_USAGE, "usage") from None
    request = message_factory.GetMessageClass(method.input_type)()
    try:
        json_format.ParseDict(value, request, descriptor_pool=pool)
    except json_format.ParseError as exc:
        raise CommandFailed(f"{where} does not fit {method.input_type.full_name}: {exc}",
                            EXIT_USAGE, "usage") from None
    return request


def _as_json(message: Message, pool: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     descriptor_pool=pool)


async def _call(method: MethodDescriptor, request: Message, target: str,
                credentials: grpc.ChannelCredentials | None, who: Credential,
                timeout: float | None, pool: Any) -> int:
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    channel = (grpc.aio.secure_channel(target, credentials) if credentials
               else grpc.aio.insecure_channel(target))
    async with channel:
        token = await sign_in(channel, who, target)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            if method.server_streaming:
                stream = channel.unary_stream(path, request_serializer=_serialize,
                                              response_deserializer=response_type.FromString)
                async for response in stream(request, timeout=timeout, metadata=metadata):
                    print_json(_as_json(response, pool), compact=True)
            else:
                unary = channel.unary_unary(path, request_serializer=_serialize,
                                            response_deserializer=response_type.FromString)
                print_json(_as_json(await unary(request, timeout=timeout, metadata=metadata),
                                    pool))
        except grpc.aio.AioRpcError as exc:
            connected = channel.get_state() == grpc.ChannelConnectivity.READY
            raise call_failure(exc, target, who, what=path, connected=connected) from None
    return EXIT_OK


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _list(catalog: _Catalog, as_json: bool) -> int:
    gateway = catalog.gateway
    services = catalog.services()
    rows = [{"method": f"{name}/{m.name}", "service": name, "name": m.name,
             "request": m.input_type.full_name, "response": m.output_type.full_name,
             "server_streaming": m.server_streaming, "client_streaming": m.client_streaming}
            for name, service in services.items() for m in service.methods]
    served = gateway.served() is not None
    if not served:
        stderr(f"revo call: gateway {gateway.target} not reachable ({gateway.error}); these "
               "are the methods of the engines installed here")
    if as_json:
        print_json({"source": "gateway" if served else "installed", "methods": rows})
        return EXIT_OK
    width = max((len(f"{name}/{m.name}") for name, service in services.items()
                 for m in service.methods), default=0)
    for name, service in services.items():
        for m in service.methods:
            stream = "stream " if m.server_streaming else ""
            print(f"{name + '/' + m.name:<{width}}  {m.input_type.name} -> "
                  f"{stream}{m.output_type.name}")
    return EXIT_OK


def cmd_call(args: argparse.Namespace, config: MeshConfig) -> int:
    target, tls = gateway_target(args.address, config)
    gateway = _Gateway(target, channel_credentials(config, tls))
    if args.list or not args.method:
        if not args.list:
            stderr("revo call: name a method (SERVICE/METHOD); the methods are:")
        return _list(_Catalog(gateway), args.json)
    method = _Catalog(gateway).method(args.method)
    if method.client_streaming:
        raise CommandFailed(f"{method.full_name} takes a stream of requests; revo call sends "
                            "one request (use a generated client)", EXIT_USAGE, "usage")
    pool = method.containing_service.file.pool
    request = _request(method, args.data, pool)
    timeout = args.timeout if args.timeout is not None else (
        None if method.server_streaming else 30.0)
    who = credential(config, ttl_s=max(300.0, (timeout or 3600.0) * 2))
    try:
        return asyncio.run(_call(method, request, target, gateway.credentials, who,
                                 timeout or None, pool))
    except KeyboardInterrupt:
        return 130


def add_call_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                    run: Any) -> None:
    """``revo call``'s parser; ``run`` wraps a ``command(args, config)`` (mesh.cli)."""
    call = add_command(
        sub, "call", help="call a method with JSON, signed in by itself",
        description="Call any method of the mesh with a JSON request and print the response "
        "as JSON (a server stream: one JSON object per line). It signs in by itself: with "
        "REVO_API_KEY, REVO_TOKEN or REVO_USERNAME/REVO_PASSWORD when set, else as the local "
        "operator (the mesh's secrets under REVO_HOME). The method's types come from the "
        "engines installed here, else from the gateway's reflection. Errors go to stderr "
        "with their code and details; the exit code says which failure it is (docs/"
        "operators.md).",
        examples=[
            "revo call --list                                  # every method you can call",
            "revo call revo.echo.v1.EchoService/Echo -d '{\"payload\": \"aGk=\"}'",
            "revo call EchoService/Count -d '{\"count\": 3}'      # a stream: one JSON per line",
            "revo call revo.mesh.v1.MeshService/ListNodes",
            "revo call revo.recall.v1.RecallService/Search -d @query.json",
            "echo '{\"count\": 2}' | revo call EchoService/Count -d -",
            "REVO_API_KEY=revo_... revo call --address mesh.example:443 EchoService/Stats",
        ])
    call.add_argument("method", nargs="?", help="SERVICE/METHOD, e.g. "
                      "revo.echo.v1.EchoService/Echo (the package may be left out when the "
                      "service name is unique)")
    call.add_argument("-d", "--data", default="{}", help="the request as JSON; @FILE reads a "
                      "file, - reads stdin (default: {})")
    call.add_argument("--list", action="store_true", help="list the methods (the gateway's, "
                      "else those installed here)")
    call.add_argument("--json", action="store_true", help="with --list: as JSON")
    call.add_argument("--address", help="the gateway's host:port (default: REVO_URL, else "
                      "the running revo up's, else gateway.address)")
    call.add_argument("--timeout", type=float, help="seconds the call may take (default: 30 "
                      "for a unary call, none for a stream; 0: none)")
    call.set_defaults(func=run(cmd_call))
