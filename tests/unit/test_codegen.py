"""Generated code is fresh, and RPC names map to the Python methods engines implement."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh import codegen
from mesh.engine import method_attribute


def test_generated_code_matches_the_protos() -> None:
    stale = codegen.regenerate(check=True)

    assert stale == [], "generated code is stale; run `python -m mesh.codegen`"


@pytest.mark.parametrize(("rpc", "attribute"), [
    ("Echo", "echo"),
    ("ListNodes", "list_nodes"),
    ("GetHTTPStatus", "get_http_status"),
    ("HTTPGet", "http_get"),
    ("GetV2Status", "get_v2_status"),
    ("Search", "search"),
])
def test_method_attribute(rpc: str, attribute: str) -> None:
    assert method_attribute(rpc) == attribute


def test_the_check_reports_a_changed_file_and_changes_nothing(tmp_path: Path) -> None:
    echo = next(tree for tree in codegen.repo_trees()
                if tree.python_package == "revo_engine_echo._gen")
    out = tmp_path / "_gen"
    shutil.copytree(echo.out_dir, out, ignore=shutil.ignore_patterns("__pycache__"))
    edited = out / "revo" / "echo" / "v1" / "echo_pb2.pyi"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    (out / "stray.py").write_text("")
    tree = codegen.ProtoTree(echo.proto_root, out, echo.python_package)
    mesh = codegen.repo_trees()[0]  # echo imports the mesh's options.proto
    imported = codegen.ProtoTree(mesh.proto_root, mesh.out_dir, mesh.python_package,
                                 generate=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # paths are reported relative to the working directory
        stale = codegen.regenerate(check=True, trees=(tree, imported))

    assert stale == ["_gen/revo/echo/v1/echo_pb2.pyi", "_gen/stray.py"]
    assert edited.read_text().endswith("# edited by hand\n")
