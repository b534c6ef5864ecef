"""Run a real Triton Inference Server (the binary in the ``nvidia-pytriton`` wheel) as a child.

The wheel ships ``tritonserver`` 2.51 with only the Python backend, which is what the models in
``triton_models/`` use. Production runs the official GPU image on the same model repository.
Two things make the wheel's binary run beside this interpreter (see docs/operators.md):

- the backend stub links ``libpython3.11`` from the library path, so this interpreter's own
  ``LIBDIR`` goes first on ``LD_LIBRARY_PATH`` (another build of 3.11 fails to load models);
- the models run with an environment of their own, not the mesh's: every model is loaded
  through Triton's load API with a config override that sets the Python backend's
  ``EXECUTION_ENV_PATH`` to the models' venv (:mod:`mesh.embedded.models_env`, made from
  ``<repository>/requirements.txt``). The stub then sees that venv and the standard library
  only, so a NumPy 2 (or anything else) installed beside the mesh cannot reach it.

The ``generator`` model needs a checkpoint that is not part of the repository: it is loaded
after start through Triton's load API with a config override (the repository's
``config.pbtxt`` with parameter ``checkpoint`` set), see :meth:`TritonServer.load_generator`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh.embedded import models_env
from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import (
    LogRotation,
    http_ok,
    spawn,
    stop_process,
    wait_until_ready,
)

__all__ = ["GENERATOR", "CheckpointError", "TritonServer", "check_checkpoint",
           "config_override", "find_tritonserver"]

logger = logging.getLogger(__name__)

GENERATOR = "generator"
"""Name of the streaming text model in ``triton_models/``."""

SITE_PACKAGES_ENV = "TRITON_SITE_PACKAGES"
"""Environment variable naming site-packages a Triton ``model.py`` puts first on sys.path (an
image that installs the requirements with ``pip --target``); never passed on from the mesh."""

EXECUTION_ENV = "EXECUTION_ENV_PATH"
"""The Python backend's model parameter naming the environment its stub runs the model with."""

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


class CheckpointError(ValueError):
    """A generator checkpoint that cannot be loaded; the message says what is wrong."""


def check_checkpoint(path: Path) -> Path:
    """``path`` resolved, when it looks like a Hugging Face causal LM checkpoint directory
    (``config.json`` with a ``model_type``, weights, tokenizer files); else CheckpointError."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise CheckpointError(f"generator checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"generator checkpoint {path} is not a directory: give the "
                              "folder that holds config.json, the weights and the tokenizer")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"generator checkpoint {path} is not a Hugging Face checkpoint: "
                              "it has no config.json")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError):
        model_type = None
    if not model_type:
        raise CheckpointError(f"{config} is not a Hugging Face model config (no model_type)")
    weights = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    if not any(next(path.glob(pattern), None) for pattern in weights):
        raise CheckpointError(f"generator checkpoint {path} has no weights "
                              "(model.safetensors or pytorch_model.bin)")
    tokenizer = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / name).is_file() for name in tokenizer):
        raise CheckpointError(f"generator checkpoint {path} has no tokenizer "
                              "(tokenizer.json or tokenizer_config.json)")
    return path


def config_override(repository: Path, model: str, parameters: Mapping[str, str]) -> str:
    """``<repository>/<model>/config.pbtxt`` as the JSON that Triton's load API takes as a
    config override, with ``parameters`` set: the repository on disk stays as it is."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (repository / model / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


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
    repository), so a configured-off generator is never loaded. Each is loaded through the
    load API with ``EXECUTION_ENV_PATH`` set to ``python_env``, the models' own venv; a model
    that fails to load stops the server, and ``start`` raises with Triton's reason.
    """

    model_repository: Path
    work_dir: Path
    """Holds the assembled backend directory and, unless ``log_file`` says otherwise, the log."""
    models: Sequence[str]
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_file: Path | None = None
    log_rotation: LogRotation | None = None
    """Rotate the log by size (:class:`~mesh.embedded.processes.LogRotation`)."""
    log_verbose: int = 0
    python_env: Path = models_env.DEFAULT_PATH
    """The models' venv (:func:`mesh.embedded.models_env.ensure` makes it); ``start`` checks
    that it exists and, when the repository has a ``requirements.txt``, is current."""
    process: subprocess.Popen[bytes] | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    """Models loaded through :meth:`load_model` with their config override; loaded again
    when the server is started again (after it died)."""

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
            # A model that failed to load after start (a bad generator checkpoint) must not
            # make the whole server unready: ready() asks about each model instead.
            "--strict-readiness=false",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
        ]  # no --load-model: start() loads each model with its environment (config_for)
        return argv

    def config_for(self, model: str, parameters: Mapping[str, str] | None = None) -> str:
        """``model``'s config override: its ``config.pbtxt`` with ``parameters`` and
        ``EXECUTION_ENV_PATH`` (the models' venv) set."""
        return config_override(self.model_repository, model, {
            **(parameters or {}), EXECUTION_ENV: str(Path(self.python_env).absolute())})

    def startup_models(self) -> list[str]:
        """The models ``start`` loads: ``models``, with ``"*"`` for every model directory."""
        if "*" not in self.models:
            return list(self.models)
        return sorted(d.name for d in self.model_repository.iterdir()
                      if (d / "config.pbtxt").is_file())

    def _check_python_env(self) -> None:
        env = Path(self.python_env)
        requirements = self.model_repository / models_env.REQUIREMENTS
        current = (models_env.is_current(env, requirements) if requirements.is_file()
                   else (env / "bin" / "activate").is_file())
        if not current:
            raise FileNotFoundError(
                f"the local models' Python environment {env.absolute()} is missing or not made "
                f"from {requirements}: create it with `python -m mesh.embedded.models_env "
                f"{env}` (./dev and revo up do)")

    def environment(self) -> dict[str, str]:
        """This process's environment, plus what the Python backend stub needs to run models
        against this interpreter's libpython, offline; without anything that would point the
        models at the mesh's own packages."""
        libdir = sysconfig.get_config_var("LIBDIR")
        library_path = [str(libdir)] if libdir else []
        if os.environ.get("LD_LIBRARY_PATH"):
            library_path.append(os.environ["LD_LIBRARY_PATH"])
        environment = dict(
            os.environ,
            LD_LIBRARY_PATH=os.pathsep.join(library_path),
            # Weights come from installed packages or configured paths, never from a hub.
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        for name in (SITE_PACKAGES_ENV, "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            environment.pop(name, None)
        return environment

    def start(self, timeout: float = 120.0) -> TritonServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        command = self.command()
        self._check_python_env()
        log = self.log_file or self.work_dir / "tritonserver.log"
        self.process = spawn(command, log_file=log, env=self.environment(),
                             rotation=self.log_rotation)
        try:
            wait_until_ready(self.process, f"{self.http_url}/v2/health/ready",
                             name="tritonserver", log=log, timeout=timeout, poll_s=0.1)
        except RuntimeError:
            self.process = None
            raise
        except TimeoutError:
            self.stop()
            raise
        startup = self.startup_models()
        for name in startup:
            try:
                self.load_model(name, self.overrides.get(name) or self.config_for(name),
                                timeout)
            except RuntimeError:
                self.stop()
                raise
        for name, config in list(self.overrides.items()):
            if name in startup:
                continue
            try:
                self.load_model(name, config)
            except RuntimeError as exc:
                logger.warning("%s", exc)
        return self

    def load_model(self, name: str, config: str | None = None,
                   timeout: float = 600.0) -> None:
        """Load (or reload) model ``name``, with ``config`` (JSON) instead of its
        ``config.pbtxt`` when given. Blocks until Triton has loaded it; RuntimeError with
        Triton's reason when it could not (the server and its other models keep running)."""
        body = json.dumps({"parameters": {"config": config}} if config else {}).encode()
        try:
            self._post(f"/v2/repository/models/{name}/load", body, timeout)
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", "")
            except ValueError:
                reason = ""
            reason = reason.split("\n\nAt:")[0]  # the Python backend appends a traceback
            raise RuntimeError(f"Triton could not load {name}: "
                               f"{reason or f'HTTP {exc.code}'}") from None
        except OSError as exc:
            raise RuntimeError(f"Triton could not load {name}: {exc}") from exc
        if config:
            self.overrides[name] = config

    def _post(self, path: str, body: bytes, timeout: float) -> None:
        request = urllib.request.Request(f"{self.http_url}{path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout):
            pass

    def load_generator(self, checkpoint: Path, timeout: float = 600.0) -> None:
        """Load ``generator`` from a Hugging Face checkpoint directory. CheckpointError when
        the directory is not one (nothing is sent to Triton), RuntimeError when Triton
        could not load it."""
        checked = check_checkpoint(checkpoint)
        self.load_model(GENERATOR, self.config_for(GENERATOR, {"checkpoint": str(checked)}),
                        timeout)

    def ready(self) -> bool:
        """Whether the server is up and every model it was asked to load is ready."""
        names = {*(m for m in self.models if m != "*"), *self.overrides}
        return http_ok(f"{self.http_url}/v2/health/ready") and all(
            http_ok(f"{self.http_url}/v2/models/{name}/ready") for name in names)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None
