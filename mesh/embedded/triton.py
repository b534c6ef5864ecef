"""Run a real Triton Inference Server (the binary in the ``nvidia-pytriton`` wheel) as a child.

The wheel ships ``tritonserver`` 2.51 with only the Python backend, which is what the models in
``triton_models/`` use. Production runs the official GPU image on the same model repository.
Two things make the wheel's binary run beside this interpreter (see docs/operators.md):

- the backend stub links ``libpython3.11`` from the library path, so this interpreter's own
  ``LIBDIR`` goes first on ``LD_LIBRARY_PATH`` (another build of 3.11 fails to load models);
- the stub ignores ``PYTHONPATH``, so the server passes this environment's site-packages in
  ``TRITON_SITE_PACKAGES`` and each ``model.py`` puts them first on ``sys.path`` itself.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import http_ok, spawn, stop_process, wait_until_ready

__all__ = ["TritonServer", "find_tritonserver"]

SITE_PACKAGES_ENV = "TRITON_SITE_PACKAGES"
"""Environment variable naming the site-packages a Triton ``model.py`` puts first on sys.path."""

_MISSING = "tritonserver not found: install revo-mesh[models] (nvidia-pytriton ships it)"


def _pytriton_package() -> Path | None:
    """Folder of the installed ``pytriton`` package, without importing it (its own
    dependencies are not installed: ``./dev`` installs the wheel with ``--no-deps``)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver() -> Path:
    """The ``tritonserver/`` folder of the installed nvidia-pytriton wheel (binary, backends,
    stubs). Raises FileNotFoundError saying what to install when it is missing."""
    package = _pytriton_package()
    root = package / "tritonserver" if package is not None else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise FileNotFoundError(_MISSING)
    return root


def _backend_directory(root: Path, into: Path) -> Path:
    """Assemble ``into/python/`` from the wheel: backend library, utils, and the stub built for
    this interpreter's Python version (the wheel keeps one stub per version apart)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no Python backend stub for {version}")
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    backend = root / "backends" / "python"
    for source in (backend / "libtriton_python.so",
                   backend / "triton_python_backend_utils.py", stub):
        link = python / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return into


@dataclass
class TritonServer:
    """A tritonserver bound to 127.0.0.1 serving ``model_repository``. Ports 0 pick free ports.

    Models load explicitly: only those named in ``models`` (``"*"`` loads every model in the
    repository), so a configured-off generator is never loaded. A model that fails to load
    stops the server, and ``start`` raises with the end of the log.
    """

    model_repository: Path
    work_dir: Path
    """Holds the assembled backend directory and, unless ``log_file`` says otherwise, the log."""
    models: Sequence[str]
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_file: Path | None = None
    log_verbose: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` as ``tritonclient.grpc`` takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        """The tritonserver command line (assembles the backend directory on the way)."""
        root = find_tritonserver()
        backends = _backend_directory(root, self.work_dir / "backends")
        argv = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={backends}",
            f"--cache-directory={self.work_dir / 'cache'}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
        ]
        argv += [f"--load-model={name}" for name in self.models]
        return argv

    def environment(self) -> dict[str, str]:
        """This process's environment, plus what the Python backend stub needs to run models
        against this interpreter and environment, offline."""
        libdir = sysconfig.get_config_var("LIBDIR")
        library_path = [str(libdir)] if libdir else []
        if os.environ.get("LD_LIBRARY_PATH"):
            library_path.append(os.environ["LD_LIBRARY_PATH"])
        return dict(
            os.environ,
            LD_LIBRARY_PATH=os.pathsep.join(library_path),
            **{SITE_PACKAGES_ENV: os.pathsep.join(site.getsitepackages())},
            # Weights come from installed packages or configured paths, never from a hub.
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )

    def start(self, timeout: float = 120.0) -> TritonServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        command = self.command()
        log = self.log_file or self.work_dir / "tritonserver.log"
        self.process = spawn(command, log_file=log, env=self.environment())
        try:
            wait_until_ready(self.process, f"{self.http_url}/v2/health/ready",
                             name="tritonserver", log=log, timeout=timeout, poll_s=0.1)
        except RuntimeError:
            self.process = None
            raise
        except TimeoutError:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """Whether the server is up and every model it was asked to load is ready."""
        return http_ok(f"{self.http_url}/v2/health/ready")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None
