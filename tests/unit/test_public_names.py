"""Generated code has public names: users import ``mesh.v1`` or ``revo_engine_<x>.v1``,
never a ``_gen`` path (private, free to move)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.codegen import repo_trees

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"registry_pb2", "registry_pb2_grpc", "options_pb2_grpc"}
"""The node-to-node registry protocol, and a module with no service in it."""


def _public_package(python_package: str) -> str:
    return python_package.removesuffix("._gen") + ".v1"


@pytest.mark.parametrize("tree", repo_trees(), ids=lambda t: t.python_package)
def test_every_generated_module_has_a_public_name(tree) -> None:  # type: ignore[no-untyped-def]
    public = importlib.import_module(_public_package(tree.python_package))
    for module in sorted(tree.out_dir.glob("revo/*/v1/*_pb2*.py")):
        if module.stem in INTERNAL:
            continue
        private = importlib.import_module(
            f"{tree.python_package}.{module.parent.relative_to(tree.out_dir).as_posix()}"
            .replace("/", ".") + f".{module.stem}")
        assert getattr(public, module.stem, None) is private, \
            f"{public.__name__} does not export {module.stem}"
        assert module.stem in public.__all__


def test_docs_and_examples_import_public_names_only() -> None:
    private = re.compile(r"\b(mesh|revo_engine_\w+)\._gen\b")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"),
                          *ROOT.glob("examples/**/*.py")]
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if private.search(line) and "options_pb2" not in line]
    assert not found, "use the public names (mesh.v1, revo_engine_<x>.v1):\n" + \
        "\n".join(found)


ENGINE_PACKAGES = [t.python_package.removesuffix("._gen") for t in repo_trees()
                   if t.python_package.startswith("revo_engine_")]
ENGINE_DEPENDENCIES = {"pymilvus", "numpy", "nats"}
"""What engines load and a client of their stubs does not need."""


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_public_stubs_import_without_their_engine(package: str) -> None:
    """A client importing ``<package>.v1`` gets the stubs, not the engine: the package's
    engine and settings are :func:`mesh.engine.lazy_exports`, imported on first use."""
    script = (f"import json, sys; import {package}.v1; "
              "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", script], check=True,
                                           capture_output=True, text=True).stdout))

    assert f"{package}.v1" in loaded
    assert not {f"{package}.engine", *ENGINE_DEPENDENCIES} & loaded, \
        sorted(m for m in loaded if m.startswith(package) or m in ENGINE_DEPENDENCIES)


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_an_engine_packages_exports_resolve_and_unknown_names_do_not(package: str) -> None:
    module = importlib.import_module(package)

    for name in getattr(module, "__all__", []):
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018
