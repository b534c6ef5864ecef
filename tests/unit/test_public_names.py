"""Generated code has public names: users import ``mesh.v1`` or ``revo_engine_<x>.v1``,
never a ``_gen`` path (private, free to move)."""

from __future__ import annotations

import importlib
import re
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
