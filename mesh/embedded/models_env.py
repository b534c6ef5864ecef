"""The local models' own Python environment: a venv made from ``triton_models/requirements.txt``.

Triton's Python-backend stub runs each model with the environment named by the model's
``EXECUTION_ENV_PATH`` parameter (an unpacked directory with ``bin/activate`` since Triton
2.3x; :class:`mesh.embedded.triton.TritonServer` sets it with a load-time config override). The
stub then imports only this venv's packages and the standard library: nothing installed beside
the mesh (a plugin that pulls NumPy 2, which crashes the stub on every request) reaches the
models. The venv is made from the interpreter running the mesh, so the stub (built for this
Python version, linking this interpreter's ``libpython``) and the venv agree.

It is created once and reused; a stamp in the venv records the requirements' hash and the
interpreter, and a change of either makes it anew. ``./dev`` creates it while installing (``python
-m mesh.embedded.models_env PATH``), ``revo up`` when it is missing. docs/decisions.md (z).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEFAULT_PATH", "REQUIREMENTS", "ModelsEnvError", "ensure", "is_current",
           "requirements_of"]

DEFAULT_PATH = Path(".venv-models")
"""Where the models' venv lives unless ``models.triton_python_env`` says otherwise
(relative to the working directory, like ``models.triton_repository``)."""

REQUIREMENTS = "requirements.txt"
"""The requirements file's name inside a model repository."""

_STAMP = ".revo-models-env"
_PIP_TIMEOUT_S = 1800.0  # torch alone is hundreds of MB; a slow index still finishes


class ModelsEnvError(RuntimeError):
    """The models' environment could not be made; the message says why and what to do."""


def requirements_of(repository: Path) -> Path:
    """``<repository>/requirements.txt``; ModelsEnvError when the repository has none."""
    path = Path(repository) / REQUIREMENTS
    if not path.is_file():
        raise ModelsEnvError(f"the model repository {Path(repository).resolve()} has no "
                             f"{REQUIREMENTS}: it lists what the models import, and the "
                             "models' Python environment is made from it")
    return path


def _stamp(requirements: Path) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version}\n{Path(sys.base_prefix).resolve()}".encode())
    return digest.hexdigest()[:16]


def is_current(path: Path, requirements: Path) -> bool:
    """Whether ``path`` is a models' venv made from ``requirements`` by this interpreter."""
    stamp = Path(path) / _STAMP
    return (Path(path) / "bin" / "activate").is_file() and stamp.is_file() \
        and stamp.read_text().strip() == _stamp(requirements)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One maker at a time (two test sessions, or `revo up` beside ./dev)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelsEnvError(f"{what} took longer than {_PIP_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ModelsEnvError(f"{what} failed (exit {done.returncode}):\n{tail}")


def ensure(path: Path = DEFAULT_PATH, requirements: Path | None = None) -> Path:
    """The models' venv at ``path``, made from ``requirements`` (default: the repository
    ``triton_models/`` beside the working directory) unless it is already current.

    Making it takes 20-30 s (torch, sentence-transformers, ONNX Runtime); the venv is
    made in place (a venv cannot be moved) and stamped last, so an interrupted attempt is
    made anew next time. Returns the absolute path; ModelsEnvError says what failed.
    """
    path = Path(path).expanduser().absolute()
    requirements = Path(requirements or requirements_of(Path("triton_models")))
    if is_current(path, requirements):
        return path
    with _locked(path):
        if is_current(path, requirements):  # made by whoever held the lock before us
            return path
        if path.exists():
            shutil.rmtree(path)
        # No pip inside: the mesh's own pip installs into it (pip --python), which saves
        # seconds and keeps the models' environment to what the models import.
        # --no-compile: byte-compiling every file of torch & co. took ~50 of ~73 s; the
        # first model load compiles only what it imports (~11 s, once).
        _run([sys.executable, "-m", "venv", "--without-pip", str(path)],
             f"creating the models' venv at {path}")
        _run([sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"),
              "install", "--quiet", "--disable-pip-version-check", "--no-compile",
              "-r", str(requirements.resolve())],
             f"installing {requirements} into {path}")
        (path / _STAMP).write_text(_stamp(requirements) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mesh.embedded.models_env",
        description="Create (or refresh) the local models' own Python environment.")
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--requirements", type=Path, default=None,
                        help="default: triton_models/requirements.txt")
    args = parser.parse_args(argv)
    try:
        requirements = args.requirements or requirements_of(Path("triton_models"))
        if not is_current(args.path, requirements):
            print(f"creating the local models' Python environment in {args.path} "
                  f"from {requirements} (half a minute, once)", flush=True)
        ensure(args.path, requirements)
    except ModelsEnvError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
