"""``revo up --profile cluster``: the production shape on one machine, with fault handles.

:class:`ClusterLauncher` is :class:`~mesh.embedded.up.Launcher` with production's parts as
local processes: three nats-servers clustered with JetStream
(:class:`~mesh.embedded.nats_cluster.NatsCluster`, ``nats.replicas = 3``), the Milvus
server (:class:`~mesh.embedded.milvus.MilvusServer`) for Perfect Recall, Triton as in the
default profile, two gateways behind Envoy and three nodes. Every child is configured by the
same ``REVO_*`` keys production uses: ``REVO_NATS__URL`` (all three servers),
``REVO_NATS__REPLICAS``, ``REVO_ENGINES__RECALL__MILVUS_URI``, and each gateway's
``REVO_GATEWAY__ADDRESS`` / ``__HTTP_ADDRESS`` / ``__METRICS_ADDRESS`` (the first gateway
takes the configured addresses, the second free ports). A child or server that dies is
started again, as in the default profile.

:class:`LocalCluster` runs it inside the calling process (tests, ``python -m benchmarks
cluster``), supervising from a thread, and hands out what fault tests need::

    with LocalCluster.start(config) as cluster:
        stub = EchoServiceStub(cluster.channel())    # through Envoy
        leader = cluster.nats.meta_leader()          # a NatsServer
        leader.kill()                                # the JetStream meta leader dies
        cluster.nats.wait_formed()                   # ...and a new one is elected
        leader.start()                               # back on its ports and store
        cluster.kill("node-2")                       # supervision starts it again
        cluster.kill("gateway-1", hold=True)         # ...or not, until:
        cluster.release("gateway-1")
        cluster.milvus.restart()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from mesh.config import GatewaySettings, MeshConfig
from mesh.embedded.milvus import MilvusServer
from mesh.embedded.nats_cluster import NatsCluster
from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.up import Launcher, http_url, metrics_url

__all__ = ["CLUSTER_GATEWAYS", "CLUSTER_NODES", "CLUSTER_REPLICAS", "ClusterLauncher",
           "LocalCluster", "NatsCluster"]

CLUSTER_NODES = 3
CLUSTER_GATEWAYS = 2
CLUSTER_REPLICAS = 3
"""nats-servers in the cluster, and so the replicas of every stream and bucket."""


def _free_address(configured: str, *, keep: bool = False) -> str:
    """``configured``'s host with a free port ('' stays '': that door is off); with
    ``keep``, a configured port other than 0 is kept."""
    if not configured:
        return ""
    host, _, port = configured.rpartition(":")
    if keep and port not in ("", "0"):
        return configured
    return f"{host or '127.0.0.1'}:{free_port()}"


@dataclass
class ClusterLauncher(Launcher):
    """The cluster profile of ``revo up``; parts are named ``nats-1`` ... ``nats-3``,
    ``milvus``, ``tritonserver``, ``gateway-1``, ``gateway-2``, ``node-1`` ...
    ``node-3``, ``envoy``."""

    profile: str = "cluster"
    nats_cluster: NatsCluster | None = None
    milvus: MilvusServer | None = None
    _gateways: dict[str, GatewaySettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Port 0 is a free port here (several clusters may run on one machine): chosen now,
        # as Envoy and the other gateways must know each address before anything starts.
        self.config = self.config.model_copy(deep=True)
        envoy = self.config.envoy
        envoy.address = _free_address(envoy.address, keep=True)
        envoy.admin_address = _free_address(envoy.admin_address, keep=True)
        first = self.config.gateway
        self._gateways = {}
        for index in range(1, CLUSTER_GATEWAYS + 1):
            keep = index == 1  # the first gateway is the configured one
            self._gateways[f"gateway-{index}"] = first.model_copy(update={
                "address": _free_address(first.address, keep=keep),
                "http_address": _free_address(first.http_address, keep=keep),
                "metrics_address": _free_address(first.metrics_address, keep=keep)})
        self.config.gateway = self._gateways["gateway-1"]

    @property
    def gateways(self) -> dict[str, GatewaySettings]:
        return self._gateways

    def _child_settings(self) -> dict[str, dict[str, str]]:
        children: dict[str, dict[str, str]] = {
            f"node-{i}": {} for i in range(1, CLUSTER_NODES + 1)}
        for name, gateway in self._gateways.items():
            children[name] = {"REVO_GATEWAY__ADDRESS": gateway.address,
                              "REVO_GATEWAY__HTTP_ADDRESS": gateway.http_address,
                              "REVO_GATEWAY__METRICS_ADDRESS": gateway.metrics_address}
        return children

    def _start_nats(self) -> str:
        with self.steps.step("nats cluster") as step:
            self.nats_cluster = NatsCluster(self.config.home / "nats", size=CLUSTER_REPLICAS,
                                            cpus=self.config.nats.embedded_cpus,
                                            max_payload=self.config.nats.max_payload_bytes,
                                            log_dir=self.logs,
                                            log_rotation=self.log_rotation).start()
            step.detail = (f"{CLUSTER_REPLICAS} nats-servers, JetStream replicas "
                           f"{CLUSTER_REPLICAS}")
        return self.nats_cluster.url

    def _start_stores(self) -> None:
        with self.steps.step("milvus") as step:
            self.milvus = MilvusServer(self.config.home / "milvus",
                                       log_file=self.logs / "milvus.log",
                                       log_rotation=self.log_rotation).start()
            step.detail = self.milvus.uri

    def _child_env(self, nats_url: str) -> dict[str, str]:
        env = super()._child_env(nats_url)
        env["REVO_NATS__REPLICAS"] = str(CLUSTER_REPLICAS)
        if self.milvus is not None:
            env["REVO_ENGINES__RECALL__MILVUS_URI"] = self.milvus.uri
        return env

    def start(self) -> dict[str, Any]:
        state = super().start()
        assert self.nats_cluster is not None
        state.update(
            profile="cluster", replicas=CLUSTER_REPLICAS,
            gateways={name: g.address for name, g in self._gateways.items()},
            gateway_http={name: http_url(g.http_address) for name, g in self._gateways.items()},
            gateway_metrics_all={name: metrics_url(g.metrics_address)
                                 for name, g in self._gateways.items()},
            nats_servers={s.server_name: {"url": s.url, "monitor": s.monitor_url}
                          for s in self.nats_cluster.servers},
            nats_monitor=self.nats_cluster.servers[0].monitor_url,
            milvus=self.milvus.uri if self.milvus else "")
        self._write_state()
        return state

    def _servers(self) -> dict[str, Any]:
        servers = super()._servers()
        if self.nats_cluster is not None:
            servers.update({s.server_name: s for s in self.nats_cluster.servers})
        servers["milvus"] = self.milvus
        return servers

    def _server_pids(self) -> dict[str, int]:
        return {name: server.process.pid for name, server in self._servers().items()
                if name.startswith("nats-") or name == "milvus"
                if server is not None and server.process is not None}

    def _supervise_servers(self) -> None:
        for server in self.nats_cluster.servers if self.nats_cluster else []:
            self._restart_if_dead(server.server_name, server, server.log_path)
        self._restart_if_dead("milvus", self.milvus)

    def _stop_servers(self, deadline: float) -> None:
        if self.milvus is not None:
            self.milvus.stop(timeout=max(0.5, deadline - time.monotonic() - 2.0))
        if self.nats_cluster is not None:
            self.nats_cluster.stop(timeout=max(0.5, deadline - time.monotonic()))


@dataclass
class LocalCluster:
    """A :class:`ClusterLauncher` started in this process and supervised from a thread.
    Use :meth:`start` as a context manager; everything stops on exit."""

    launcher: ClusterLauncher
    state: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    @classmethod
    def start(cls, config: MeshConfig) -> LocalCluster:
        """Start every part and wait until each gateway lists every node."""
        cluster = cls(ClusterLauncher(config, pass_config=True))
        try:
            cluster.state = cluster.launcher.start()
        except BaseException:
            cluster.launcher.stop()
            raise
        cluster._thread = threading.Thread(target=cluster.launcher.wait,
                                           name="revo-cluster-supervisor", daemon=True)
        cluster._thread.start()
        return cluster

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.launcher.stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.launcher.stop()

    @property
    def nats(self) -> NatsCluster:
        """The nats-servers: leaders, and each member to kill, pause or start again."""
        assert self.launcher.nats_cluster is not None
        return self.launcher.nats_cluster

    @property
    def milvus(self) -> MilvusServer:
        """The Milvus server (``restart()`` keeps its port and data)."""
        assert self.launcher.milvus is not None
        return self.launcher.milvus

    @property
    def envoy_address(self) -> str:
        """``host:port`` of Envoy, the front door (gRPC, gRPC-web, HTTP)."""
        return self.launcher.config.envoy.address

    @property
    def gateways(self) -> dict[str, GatewaySettings]:
        """Each gateway's name and settings (its gRPC ``address``, ``http_address``)."""
        return self.launcher.gateways

    @property
    def nodes(self) -> list[str]:
        return [name for name in self.launcher.children if name.startswith("node-")]

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def channel(self, address: str = "") -> grpc.aio.Channel:
        """An insecure gRPC channel to Envoy (or to ``address``, such as a gateway's)."""
        return grpc.aio.insecure_channel(address or self.envoy_address)

    def kill(self, name: str, *, hold: bool = False) -> None:
        """SIGKILL part ``name`` (:meth:`parts`); supervision starts it again unless
        ``hold``."""
        self.launcher.kill(name, hold=hold)

    def hold(self, name: str) -> None:
        """Leave part ``name`` dead when it dies, until :meth:`release`."""
        self.launcher.hold(name)

    def release(self, name: str) -> None:
        self.launcher.release(name)

    def parts(self) -> list[str]:
        return self.launcher.parts()

    def pid(self, name: str) -> int | None:
        """The pid of part ``name`` while it runs."""
        process = self.launcher.process(name)
        return process.pid if process is not None else None

    def wait_running(self, name: str, timeout: float = 30.0) -> int:
        """Wait until part ``name`` runs (after supervision started it again); its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None:
                return pid
            time.sleep(0.05)
        raise TimeoutError(f"{name} not running within {timeout:g} s")

    def nats_server(self, name: str) -> NatsServer:
        return self.nats.server(name)
