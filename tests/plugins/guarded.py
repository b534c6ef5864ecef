"""Engine ``guarded``: one method per permission, for tests of roles at the gateway.

Service ``revo.guardedtest.v1.GuardedService`` is built here at import time (no ``.proto``
file): ``Read``, ``Write``, ``Execute``, ``Manage`` and ``Public`` each declare the
``(revo.mesh.v1.permission)`` their name says; ``Undeclared`` declares none, so the gateway
must treat it as ``manage``. Every method answers ``GuardedResponse`` with the path it
served and the caller and role the engine saw.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from mesh.engine import Context, Engine, EngineSpec, hookimpl
from mesh.errors import InvalidArgument, Unavailable
from mesh.v1 import options_pb2  # puts options.proto in the default pool

PACKAGE = "revo.guardedtest.v1"
FILE = "revo/guardedtest/v1/guarded.proto"
SERVICE = f"{PACKAGE}.GuardedService"

PERMISSIONS: dict[str, int | None] = {
    "Read": options_pb2.PERMISSION_READ,
    "Write": options_pb2.PERMISSION_WRITE,
    "Execute": options_pb2.PERMISSION_EXECUTE,
    "Manage": options_pb2.PERMISSION_MANAGE,
    "Public": options_pb2.PERMISSION_PUBLIC,
    "Undeclared": None,
}
"""Each method, and the permission it declares (None: no option at all)."""


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=FILE, package=PACKAGE, syntax="proto3",
        dependency=[options_pb2.DESCRIPTOR.name])
    file.message_type.add(name="GuardedRequest")
    response = file.message_type.add(name="GuardedResponse")
    for number, name in enumerate(("method", "caller", "role"), start=1):
        response.field.add(name=name, number=number,
                           type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                           label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    service = file.service.add(name="GuardedService")
    for name, permission in PERMISSIONS.items():
        method = service.method.add(name=name, input_type=f".{PACKAGE}.GuardedRequest",
                                    output_type=f".{PACKAGE}.GuardedResponse")
        if permission is not None:
            options = descriptor_pb2.MethodOptions()
            options.Extensions[options_pb2.permission] = permission  # type: ignore[misc]
            method.options.CopyFrom(options)
    return file


def _service() -> ServiceDescriptor:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE)
    except KeyError:  # first import in this process
        pool.AddSerializedFile(_file().SerializeToString())
    return pool.FindServiceByName(SERVICE)


GUARDED_SERVICE = _service()
GuardedRequest: Any = message_factory.GetMessageClass(
    GUARDED_SERVICE.file.pool.FindMessageTypeByName(f"{PACKAGE}.GuardedRequest"))
GuardedResponse: Any = message_factory.GetMessageClass(
    GUARDED_SERVICE.file.pool.FindMessageTypeByName(f"{PACKAGE}.GuardedResponse"))


def path(method: str) -> str:
    """The gRPC path of one of the service's methods."""
    return f"/{SERVICE}/{method}"


class GuardedEngine(Engine):
    """Answers every method with what the engine saw of the call."""

    services = (GUARDED_SERVICE,)

    def _answer(self, ctx: Context) -> Any:
        return GuardedResponse(method=ctx.method, caller=ctx.caller, role=ctx.role)

    def read(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)

    def write(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)

    def execute(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)

    def manage(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)

    def public(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)

    def undeclared(self, request: Any, ctx: Context) -> Any:
        return self._answer(ctx)


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="guarded", engine=GuardedEngine, pool_size=1)


# -- task types for the Parallel Mind tests (tests/integration/test_tasks*.py) -------------

EFFECTS: dict[str, int] = {}
"""How many times each ``test.effect`` key took effect (in this process)."""
_effects_lock = threading.Lock()


def _fail(payload: bytes, ctx: Any) -> bytes:
    """Fails with UNAVAILABLE (retryable) or, with payload b"fatal", INVALID_ARGUMENT."""
    if payload == b"fatal":
        raise InvalidArgument("this input can never work")
    raise Unavailable(f"attempt {ctx.attempt} failed")


def _crash(payload: bytes, ctx: Any) -> bytes:
    raise RuntimeError("poison: this task crashes its worker every time")


def _effect(payload: bytes, ctx: Any) -> bytes:
    """Takes effect once per key (the payload): a retried task must not double it."""
    with _effects_lock:
        EFFECTS[payload.decode()] = EFFECTS.get(payload.decode(), 0) + 1
    return payload


def _progress(payload: bytes, ctx: Any) -> bytes:
    for step in range(1, 5):
        ctx.progress(step / 4, f"step {step}")
        if ctx.cancelled.wait(0.1):
            return b"stopped"
    return b"done"


EFFECTS_DIR_ENV = "TEST_EFFECTS_DIR"  # not REVO_: the config refuses unknown REVO_ names
"""Where ``test.file_effect`` records its effects: a node in another process writes them."""


def _file_effect(payload: bytes, ctx: Any) -> bytes:
    """Payload ``<key> <ms>``: append the key to a file of this process, then wait ``ms``.

    The effect comes first, so a node killed during the wait leaves an effect whose task is
    not yet acknowledged: its redelivery shows at-least-once execution.
    """
    key, _, ms = payload.decode().partition(" ")
    folder = os.environ.get(EFFECTS_DIR_ENV)
    if not folder:
        raise InvalidArgument(f"test.file_effect needs {EFFECTS_DIR_ENV} set on the node")
    line = f"{key} {ctx.task_id} {ctx.attempt}\n".encode()
    fd = os.open(os.path.join(folder, f"effects-{os.getpid()}.log"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)  # one write of a short line on O_APPEND: never interleaved
    finally:
        os.close(fd)
    ctx.cancelled.wait(int(ms or "0") / 1000)
    return key.encode()


def _step_effect(payload: bytes, ctx: Any) -> bytes:
    """Payload JSON ``{"key": ..., "ms": ...}`` (a workflow step's): append ``effect <key>
    <time ns> <task id> <attempt>`` to a file of this process, wait ``ms``, then append
    ``done`` and the same.

    A test reads the lines to count each key's effects and to tell where a fault caught
    the step: before its effect, between the effect and the end of the work, or after.
    """
    try:
        spec = json.loads(payload)
        key, ms = str(spec["key"]), float(spec.get("ms", 0))
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidArgument(f'test.step_effect needs {{"key": ..., "ms": ...}}: '
                              f"{error}") from None
    folder = os.environ.get(EFFECTS_DIR_ENV)
    if not folder or " " in key:
        raise InvalidArgument(f"test.step_effect needs {EFFECTS_DIR_ENV} set on the node "
                              "and a key without spaces")
    path = os.path.join(folder, f"steps-{os.getpid()}.log")
    _append(path, f"effect {key} {time.time_ns()} {ctx.task_id} {ctx.attempt}\n")
    ctx.cancelled.wait(ms / 1000)
    _append(path, f"done {key} {time.time_ns()} {ctx.task_id} {ctx.attempt}\n")
    return key.encode()


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())  # one short write on O_APPEND: never interleaved
    finally:
        os.close(fd)


@hookimpl(optionalhook=True)  # declared by Parallel Mind, which may not be loaded
def revo_task_types() -> dict[str, Any]:
    return {"test.fail": _fail, "test.crash": _crash, "test.effect": _effect,
            "test.progress": _progress, "test.file_effect": _file_effect,
            "test.step_effect": _step_effect}
