"""Finding the Triton binary (no server started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.embedded import triton
from mesh.embedded.triton import TritonServer


def test_missing_pytriton_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(triton, "_pytriton_package", lambda: None)

    with pytest.raises(FileNotFoundError, match=r"install revo-mesh\[models\]"):
        TritonServer(tmp_path, tmp_path / "work", models=["embedder"]).start(timeout=1)


def test_pytriton_without_the_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(triton, "_pytriton_package", lambda: tmp_path / "pytriton")

    with pytest.raises(FileNotFoundError, match=r"install revo-mesh\[models\]"):
        triton.find_tritonserver()


def test_the_server_binds_loopback_and_loads_only_named_models(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, tmp_path / "work", models=["embedder"])

    command = server.command()

    assert "--model-control-mode=explicit" in command
    assert [a for a in command if a.startswith("--load-model")] == ["--load-model=embedder"]
    assert {a for a in command if "-address=" in a} == {
        "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"}
    assert sorted(p.name for p in (tmp_path / "work" / "backends" / "python").iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]


def test_the_server_runs_models_offline_against_this_interpreter(tmp_path: Path) -> None:
    import sysconfig

    env = TritonServer(tmp_path, tmp_path / "work", models=[]).environment()

    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env[triton.SITE_PACKAGES_ENV]
