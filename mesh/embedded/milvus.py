"""Run the real Milvus standalone server (C++ Milvus 2.3.5 from the ``milvus`` wheel).

The wheel's own launcher starts the server without a session of its own and would outlive
a killed parent; this module uses only the wheel's binaries and its configuration template
(:class:`milvus.MilvusServerConfig`, which pins every port the server listens on) and
starts the server like every other child (:mod:`mesh.embedded.processes`). The binaries
are unpacked once into ``$XDG_CACHE_HOME/revo/milvus-<version>`` (a few seconds) and shared
by every server; data, configuration and logs live under ``base_dir``. Ports are chosen on
the first start and kept, so :meth:`MilvusServer.restart` brings it back at the same URI.
Milvus's gRPC port listens on every interface (its configuration sets only the address it
advertises); keep the machine's firewall closed to it outside loopback.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import (
    LogRotation,
    http_ok,
    spawn,
    stop_process,
    wait_until_ready,
)

__all__ = ["MilvusServer", "milvus_binaries"]

START_TIMEOUT_S = 120.0


def milvus_binaries() -> Path:
    """The directory holding the unpacked ``milvus`` binary and its libraries.
    FileNotFoundError when the ``milvus`` wheel is not installed."""
    try:
        import milvus  # type: ignore[import-untyped]
    except ImportError as exc:
        raise FileNotFoundError("the Milvus server is not installed: pip install "
                                "'milvus==2.3.5' (in the dev extra)") from exc
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "revo" / f"milvus-{milvus.__version__}"
    milvus._initialize_data_files(str(root))  # unpacks only what changed
    return root / "bin"


@dataclass
class MilvusServer:
    """A Milvus standalone server on loopback, its data under ``base_dir``."""

    base_dir: Path
    port: int = 0
    """The gRPC port clients use (0: a free one, kept across restarts)."""
    log_file: Path | None = None
    log_rotation: LogRotation | None = None
    """Rotate the log by size (:class:`~mesh.embedded.processes.LogRotation`)."""
    metrics_port: int = 0
    """The port of /healthz and /metrics (0: a free one)."""
    etcd_ports: tuple[int, int] = (0, 0)
    """The embedded etcd's client and peer ports (0: free ones). The wheel leaves the peer
    port at etcd's 2380, so a second server on the machine could not start."""
    process: subprocess.Popen[bytes] | None = None
    _ports: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """What ``engines.recall.milvus_uri`` takes."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/healthz"

    def start(self, timeout: float = START_TIMEOUT_S) -> MilvusServer:
        """Start the server (again on the same ports and data) and wait until healthy."""
        from milvus import MilvusServerConfig

        binaries = milvus_binaries()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        if not self._ports:  # a restart reuses the configuration (the ports may be in
            # TIME_WAIT, which the wheel's check of each port would take for taken)
            if not all(self.etcd_ports):
                self.etcd_ports = (free_port(), free_port())
            # every listener on a free port: the wheel's defaults (19530 and up, 2379) are
            # what another Milvus on this machine would take
            ports = {key: free_port() for key in MilvusServerConfig().configurable_items
                     if key.endswith("_port")}
            config = MilvusServerConfig(data_dir=str(self.base_dir), **ports | {
                "proxy_port": self.port, "etcd_port": self.etcd_ports[0]})
            config.resolve()  # writes configs/milvus.yaml
            self._ports = {key: config.get(key) for key in config.configurable_items
                           if key.endswith("_port")}
            self._pin_etcd()
        env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(self.metrics_port),
                   MILVUS_RUN_DIR=str(self.base_dir / "run"),
                   LD_LIBRARY_PATH=":".join([str(binaries),
                                             os.environ.get("LD_LIBRARY_PATH", "")]))
        log = self.log_file or self.base_dir / "milvus.log"
        self.process = spawn([str(binaries / "milvus"), "run", "standalone"], log_file=log,
                             env=env, cwd=self.base_dir, rotation=self.log_rotation)
        try:
            wait_until_ready(self.process, self.health_url, name="milvus", log=log,
                             timeout=timeout, poll_s=0.2)
        except TimeoutError:
            self.stop()
            raise
        return self

    def _pin_etcd(self) -> None:
        """Give the embedded etcd its own client and peer ports (an etcd configuration
        file, named in milvus.yaml's ``etcd.config.path``)."""
        client, peer = (f"http://127.0.0.1:{port}" for port in self.etcd_ports)
        etcd = self.base_dir / "configs" / "embedEtcd.yaml"
        etcd.write_text(f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
                        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
                        f"initial-cluster: default={peer}\n")
        milvus_yaml = self.base_dir / "configs" / "milvus.yaml"
        text = milvus_yaml.read_text()
        milvus_yaml.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n"
                                            f"    path: {etcd}\n", 1))

    def healthy(self) -> bool:
        return http_ok(self.health_url)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self, timeout: float = START_TIMEOUT_S) -> MilvusServer:
        """Stop and start again on the same ports and data."""
        self.stop()
        return self.start(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None
