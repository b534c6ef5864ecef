"""Each public module's ``__all__`` is exactly its public surface (httpx's habit)."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

MODULES = ["mesh.engine", "mesh.errors", "mesh.client"]


def defined_public_names(module: ModuleType) -> set[str]:
    """Classes and functions the module itself defines under a name without a leading _."""
    return {
        name for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


def test_mesh_errors_exports_every_public_name() -> None:
    module = importlib.import_module("mesh.errors")

    assert set(module.__all__) == defined_public_names(module)


@pytest.mark.parametrize("name", ["api", "connection", "engines", "retry", "session",
                                  "streams"])
def test_each_mesh_client_module_exports_every_public_name(name: str) -> None:
    module = importlib.import_module(f"mesh.client.{name}")

    assert defined_public_names(module) <= set(module.__all__)  # and constants, caches
    assert all(getattr(module, name, None) is not None for name in module.__all__)


def test_mesh_client_exports_the_client_and_its_parts() -> None:
    module = importlib.import_module("mesh.client")

    assert {"Client", "AsyncClient", "MeshClient", "RetryPolicy", "Session",
            "rpc_error"} <= set(module.__all__)
    assert all(getattr(module, name, None) is not None for name in module.__all__)


def test_mesh_engine_exports_every_public_name() -> None:
    module = importlib.import_module("mesh.engine")

    assert set(module.__all__) - {"hookimpl", "hookspec"} == defined_public_names(module)


def test_mesh_engine_exports_hookimpl_and_hookspec() -> None:
    module = importlib.import_module("mesh.engine")

    assert {"hookimpl", "hookspec"} <= set(module.__all__)
    assert module.hookimpl.project_name == "revo"
    assert module.hookspec.project_name == "revo"


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_without_duplicates(name: str) -> None:
    exported = importlib.import_module(name).__all__

    assert exported == sorted(set(exported))


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)

    assert [member for member in module.__all__ if not hasattr(module, member)] == []


@pytest.mark.parametrize("name", MODULES)
def test_star_import_gives_exactly_all(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(importlib.import_module(name).__all__)
