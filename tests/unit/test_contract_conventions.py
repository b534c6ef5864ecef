"""The contracts follow the gRPC/AIP conventions (docs/plugins.md, "Contract conventions"),
checked over every service and message of the mesh and of every engine in this repository,
so that a new method or enum that does not follow them fails here:

- a read method (``Get*``, ``List*``, ``Search``, ``Watch*``, ``Stats``, ...) declares
  ``option idempotency_level = NO_SIDE_EFFECTS`` (clients retry only declared methods);
- every list pages (AIP-158: ``int32 page_size``, ``string page_token`` in, ``string
  next_page_token`` out), except the few bounded by the mesh's own size;
- every enum's zero value is ``<ENUM>_UNSPECIFIED``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)

from mesh.codegen import repo_trees

READ_PREFIXES = ("Get", "List", "Search", "Watch", "Stats", "WhoAmI", "Validate", "Recommend")
"""Method names that say "this only reads"."""

NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


def _files() -> list[FileDescriptor]:
    """The file of every public generated ``*_pb2`` module (mesh.v1 and each engine's v1)."""
    files: dict[str, FileDescriptor] = {}
    for tree in repo_trees():
        public = importlib.import_module(tree.python_package.removesuffix("._gen") + ".v1")
        for name in public.__all__:
            module = getattr(public, name)
            descriptor = getattr(module, "DESCRIPTOR", None)
            if isinstance(descriptor, FileDescriptor):
                files[descriptor.name] = descriptor
    return [files[name] for name in sorted(files)]


def _methods() -> Iterator[MethodDescriptor]:
    for file in _files():
        for service in file.services_by_name.values():
            yield from service.methods


def _enums() -> Iterator[EnumDescriptor]:
    def nested(message: Descriptor) -> Iterator[EnumDescriptor]:
        yield from message.enum_types
        for inner in message.nested_types:
            yield from nested(inner)

    for file in _files():
        yield from file.enum_types_by_name.values()
        for message in file.message_types_by_name.values():
            yield from nested(message)


def test_every_public_contract_is_walked() -> None:
    services = {m.containing_service.full_name for m in _methods()}

    # one service of each tree at least: the walk does not silently skip an engine
    assert {"revo.auth.v1.AuthService", "revo.models.v1.ModelService",
            "revo.mesh.v1.MeshService", "revo.tasks.v1.TaskService",
            "revo.recall.v1.RecallService", "revo.workflows.v1.WorkflowService",
            "revo.creative.v1.CreativeService", "revo.echo.v1.EchoService"} <= services


def test_read_methods_declare_no_side_effects() -> None:
    missing = [m.full_name for m in _methods()
               if m.name.startswith(READ_PREFIXES)
               and m.GetOptions().idempotency_level != NO_SIDE_EFFECTS]

    assert not missing, ("read methods without `option idempotency_level = "
                         "NO_SIDE_EFFECTS;` (clients will not retry them):\n"
                         + "\n".join(missing))


@pytest.mark.parametrize("name", ["revo.recall.v1.RecallService.Forget",
                                  "revo.tasks.v1.TaskService.Cancel",
                                  "revo.auth.v1.UserService.RevokeApiKey"])
def test_harmless_to_repeat_writes_declare_idempotent(name: str) -> None:
    method = {m.full_name: m for m in _methods()}[name]

    assert method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.IDEMPOTENT


def test_methods_that_spend_or_create_declare_nothing() -> None:
    """A retry of these would spend twice or make a second thing: no level, no retry."""
    methods = {m.full_name: m for m in _methods()}
    for name in ("revo.models.v1.ModelService.Generate", "revo.tasks.v1.TaskService.Submit",
                 "revo.creative.v1.CreativeService.Judge", "revo.auth.v1.AuthService.Login"):
        assert methods[name].GetOptions().idempotency_level == \
            descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN, name


WHOLE_LISTS = {"revo.mesh.v1.MeshService.ListNodes", "revo.mesh.v1.MeshService.ListServices",
               "revo.models.v1.ModelService.ListModels",
               "revo.creative.v1.CreativeService.ListStrategies"}
"""Lists answered whole: each is bounded by the mesh's size or its configuration."""
PAGED_LISTS = {"revo.models.v1.ModelService.GetUsage"}
"""Methods not named List* that list rows (and page them)."""


def test_every_list_pages() -> None:
    int32, string = FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_STRING
    wrong = []
    for method in _methods():
        if method.full_name in WHOLE_LISTS or not (
                method.name.startswith("List") or method.full_name in PAGED_LISTS):
            continue
        fields = {f.name: f.type for f in method.input_type.fields}
        out = {f.name: f.type for f in method.output_type.fields}
        if (fields.get("page_size"), fields.get("page_token"), out.get("next_page_token")) \
                != (int32, string, string):
            wrong.append(method.full_name)

    assert not wrong, ("lists without AIP-158 paging (int32 page_size, string page_token; "
                       "string next_page_token), or add them to WHOLE_LISTS with a reason:\n"
                       + "\n".join(wrong))


def test_enum_zero_values_are_unspecified() -> None:
    wrong = []
    for enum in _enums():
        zero = enum.values_by_number[0].name
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        if zero != f"{prefix}_UNSPECIFIED":
            wrong.append(f"{enum.full_name}: {zero} (expected {prefix}_UNSPECIFIED)")

    assert not wrong, "enum zero values must be <ENUM>_UNSPECIFIED:\n" + "\n".join(wrong)
