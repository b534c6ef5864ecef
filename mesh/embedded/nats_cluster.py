"""A JetStream cluster of nats-servers on one machine, with handles for fault tests.

:class:`NatsCluster` runs nats-servers clustered with JetStream on loopback (free ports,
so several clusters can run in one test session) and says which member leads JetStream's
meta group and which leads a given stream, from the servers' own monitoring endpoint
(``/jsz``). Each member is a :class:`~mesh.embedded.nats_server.NatsServer`:
``kill()``, ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT: a partition), and ``start()``
again on the same ports and store. ``revo up --profile cluster`` runs one
(:mod:`mesh.embedded.cluster`).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.processes import LogRotation

__all__ = ["NatsCluster", "jsz", "replicated"]

FORM_TIMEOUT_S = 30.0


def jsz(server: NatsServer, query: str = "") -> dict[str, Any]:
    """The server's ``/jsz`` (JetStream) monitoring document; ``query`` such as
    ``accounts=true&streams=true``. Raises OSError when the server does not answer."""
    url = f"{server.monitor_url}/jsz" + (f"?{query}" if query else "")
    with urllib.request.urlopen(url, timeout=1) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def _answers(server: NatsServer, query: str = "") -> dict[str, Any] | None:
    if not server.serving:
        return None
    try:
        return jsz(server, query)
    except (OSError, ValueError):
        return None


@dataclass
class NatsCluster:
    """``size`` nats-servers with JetStream, routed to each other, named ``nats-1`` ... on
    free loopback ports, their stores under ``base_dir/<name>``."""

    base_dir: Path
    size: int = 3
    name: str = "revo"
    cpus: int = 1
    max_payload: int = 8 * 1024 * 1024
    log_dir: Path | None = None
    log_rotation: LogRotation | None = None
    """Rotate each member's log by size."""
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.servers:
            routes = [free_port() for _ in range(self.size)]
            self.servers = [
                NatsServer(self.base_dir / f"nats-{i + 1}", server_name=f"nats-{i + 1}",
                           cluster_name=self.name, cluster_port=routes[i],
                           routes=[p for j, p in enumerate(routes) if j != i],
                           cpus=self.cpus, max_payload=self.max_payload,
                           log_file=(self.log_dir / f"nats-{i + 1}.log"
                                     if self.log_dir else None),
                           log_rotation=self.log_rotation)
                for i in range(self.size)]

    @property
    def url(self) -> str:
        """Every member's client URL, comma separated (``nats.url``)."""
        return ",".join(server.url for server in self.servers)

    def server(self, name: str) -> NatsServer:
        """The member called ``name`` (``nats-1`` ...)."""
        for server in self.servers:
            if server.server_name == name:
                return server
        raise KeyError(f"no nats-server {name!r} in this cluster "
                       f"({', '.join(s.server_name for s in self.servers)})")

    def start(self, timeout: float = FORM_TIMEOUT_S) -> NatsCluster:
        """Start every member and wait until the cluster has formed."""
        try:
            for server in self.servers:
                server.launch()
            self.wait_formed(timeout, all_running=True)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_formed(self, timeout: float = FORM_TIMEOUT_S, *,
                    all_running: bool = False) -> NatsServer:
        """Wait until every running member is healthy (``/healthz``: JetStream current
        with its meta group) and they agree on a meta leader, which is returned (members
        killed or paused on purpose are left out). TimeoutError says what was missing;
        with ``all_running``, RuntimeError when a member exited."""
        deadline = time.monotonic() + timeout
        seen = "no member answered"
        while time.monotonic() < deadline:
            for server in self.servers if all_running else []:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"{server.server_name} exited with "
                                       f"{server.process.returncode}; see {server.log_path}")
            running = [s for s in self.servers if s.serving]
            leaders = {(_answers(s) or {}).get("meta_cluster", {}).get("leader", "")
                       for s in running}
            healthy = all(_healthy(s) for s in running)
            names = {s.server_name for s in running}
            if healthy and len(leaders) == 1 and leaders <= names:
                return self.server(leaders.pop())
            seen = f"leaders seen {sorted(leaders)}, all healthy: {healthy}"
            time.sleep(0.1)
        raise TimeoutError(f"the NATS cluster did not form within {timeout:g} s ({seen}); "
                           f"see {', '.join(str(s.log_path) for s in self.servers)}")

    def meta_leader(self) -> NatsServer | None:
        """The member leading JetStream's meta group, as the first serving member reports
        it (None while it knows none). Right after the leader dies or is paused, members
        may still name it: :meth:`wait_formed` waits for a leader that serves."""
        for server in self.servers:
            leader = (_answers(server) or {}).get("meta_cluster", {}).get("leader", "")
            if leader:
                return self.server(leader)
        return None

    def stream_leader(self, stream: str) -> NatsServer | None:
        """The member leading ``stream``'s replicas (a KV bucket's stream is
        ``KV_<bucket>``), None while it has none or no member knows the stream."""
        info = self.stream_info(stream)
        leader = (info or {}).get("cluster", {}).get("leader", "")
        return self.server(leader) if leader else None

    def stream_info(self, stream: str) -> dict[str, Any] | None:
        """``stream`` as its leader describes it in ``/jsz`` (only the leader knows whether
        the other replicas are current), else as the first running member holding it
        does: ``config`` (``num_replicas``), ``cluster`` (``leader``, ``replicas`` with
        ``current``), ``state``. None when no running member holds it."""
        first: dict[str, Any] | None = None
        for server in self.servers:
            document = _answers(server, "accounts=true&streams=true&config=true")
            for account in (document or {}).get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail.get("name") != stream:
                        continue
                    if detail.get("cluster", {}).get("leader") == server.server_name:
                        found: dict[str, Any] = detail
                        return found
                    first = first or detail
        return first

    def wait_replicated(self, stream: str, timeout: float = FORM_TIMEOUT_S) -> dict[str, Any]:
        """Wait until ``stream`` has a leader and every replica it is configured with is
        current; its :meth:`stream_info`. TimeoutError with what was seen last."""
        deadline = time.monotonic() + timeout
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            info = self.stream_info(stream)
            if info is not None and replicated(info):
                return info
            time.sleep(0.05)
        raise TimeoutError(f"stream {stream} not replicated within {timeout:g} s: "
                           f"{(info or {}).get('cluster')}")

    def streams(self) -> list[str]:
        """The names of every stream the running members hold."""
        names: set[str] = set()
        for server in self.servers:
            document = _answers(server, "accounts=true&streams=true")
            for account in (document or {}).get("account_details", []):
                names.update(d["name"] for d in account.get("stream_detail", []))
        return sorted(names)

    def stop(self, timeout: float = 10.0) -> None:
        for server in reversed(self.servers):
            server.stop(timeout)


def replicated(info: dict[str, Any]) -> bool:
    """Whether a stream's ``/jsz`` detail shows a leader and all its configured replicas
    current."""
    cluster = info.get("cluster", {})
    followers = cluster.get("replicas") or []
    wanted = int(info.get("config", {}).get("num_replicas", 1))
    return bool(cluster.get("leader")) and len(followers) == wanted - 1 and all(
        f.get("current") for f in followers)


def _healthy(server: NatsServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.monitor_url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
