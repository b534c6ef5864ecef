"""The local models' own venv: made once, reused, made anew when its requirements change.

An empty requirements file keeps these fast (a venv, no package installed, nothing fetched).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.embedded import models_env


def test_the_env_is_made_once_and_made_anew_when_the_requirements_change(
        tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing\n")
    path = tmp_path / "env"

    assert not models_env.is_current(path, requirements)
    made = models_env.ensure(path, requirements)
    marker = made / "made-before"
    marker.write_text("")

    assert made == path.absolute()
    assert (made / "bin" / "activate").is_file()  # what Triton's EXECUTION_ENV_PATH needs
    assert models_env.is_current(path, requirements)
    models_env.ensure(path, requirements)
    assert marker.exists()  # reused

    requirements.write_text("# nothing, but another file\n")
    assert not models_env.is_current(path, requirements)
    models_env.ensure(path, requirements)
    assert not marker.exists()  # made anew
    assert models_env.is_current(path, requirements)


def test_a_failed_install_says_what_failed_and_leaves_no_current_env(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("--this-is-not-a-pip-option\n")

    with pytest.raises(models_env.ModelsEnvError, match=r"installing .*requirements.txt"):
        models_env.ensure(tmp_path / "env", requirements)
    assert not models_env.is_current(tmp_path / "env", requirements)


def test_a_repository_without_requirements_is_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(models_env.ModelsEnvError, match=r"has no requirements.txt"):
        models_env.requirements_of(tmp_path)


def test_the_project_repository_lists_numpy_1_and_the_cpu_torch() -> None:
    text = (Path(__file__).resolve().parents[2] / "triton_models" / "requirements.txt")
    lines = [line.split("#")[0].strip() for line in text.read_text().splitlines()]
    assert "numpy>=1.21,<2" in lines  # NumPy 2 crashes the Python backend stub
    assert "torch==2.13.0" in lines  # the CPU wheel on disk; unpinned pip takes CUDA
