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
    for name in ("embedder", "generator", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n')
    server = TritonServer(tmp_path, tmp_path / "work", models=["embedder"])

    command = server.command()

    assert "--model-control-mode=explicit" in command
    # start() loads them through the load API, each with the models' own environment
    assert [a for a in command if a.startswith("--load-model")] == []
    assert server.startup_models() == ["embedder"]
    assert TritonServer(tmp_path, tmp_path, models=["*"]).startup_models() == [
        "embedder", "generator", "other"]
    assert {a for a in command if "-address=" in a} == {
        "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"}
    assert sorted(p.name for p in (tmp_path / "work" / "backends" / "python").iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]


def test_the_server_runs_models_offline_against_this_interpreter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sysconfig

    monkeypatch.setenv(triton.SITE_PACKAGES_ENV, "/mesh/site-packages")
    monkeypatch.setenv("PYTHONPATH", "/mesh/site-packages")

    env = TritonServer(tmp_path, tmp_path / "work", models=[]).environment()

    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert env["HF_HUB_OFFLINE"] == "1"
    # nothing points the models at the mesh's packages: they have their own environment
    assert triton.SITE_PACKAGES_ENV not in env
    assert "PYTHONPATH" not in env


def test_each_model_is_loaded_with_the_models_own_environment(tmp_path: Path) -> None:
    import json

    repository = Path(__file__).resolve().parents[2] / "triton_models"
    server = TritonServer(repository, tmp_path, models=["embedder"],
                          python_env=tmp_path / "models-env")

    embedder = json.loads(server.config_for("embedder"))
    generator = json.loads(server.config_for("generator", {"checkpoint": "/ckpt"}))

    assert embedder["parameters"]["EXECUTION_ENV_PATH"] == {
        "string_value": str(tmp_path / "models-env")}
    assert generator["parameters"]["checkpoint"] == {"string_value": "/ckpt"}
    assert generator["parameters"]["EXECUTION_ENV_PATH"] == {
        "string_value": str(tmp_path / "models-env")}


def test_a_missing_models_env_says_how_to_make_it(tmp_path: Path) -> None:
    repository = Path(__file__).resolve().parents[2] / "triton_models"
    server = TritonServer(repository, tmp_path / "work", models=["embedder"],
                          python_env=tmp_path / "nowhere")

    with pytest.raises(FileNotFoundError, match=r"python -m mesh.embedded.models_env"):
        server.start(timeout=1)
    assert server.process is None
