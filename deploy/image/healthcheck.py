#!/usr/bin/env python3
"""The revo image's health check: is this container's gateway or node serving?

``revo-healthcheck [gateway|node]`` exits 0 when it is, 1 (with the reason) when not. Without
an argument the role is read from the container's command (``revo gateway`` / ``revo node``
as PID 1); any other command (the CLI) has nothing to probe and passes. It reads the same
configuration as the process it checks (``mesh.config.load_config``: revo.toml and REVO_*):

- gateway: the standard gRPC health service (``grpc.health.v1.Health/Check``) on
  ``gateway.address``, with the gateway's TLS when it has one;
- node: the same service on ``node.health_address``, for ``revo.node`` (ready: serving
  and connected to NATS; NOT_SERVING while it drains).
"""

from __future__ import annotations

import sys
from pathlib import Path

TIMEOUT_S = 3.0
NODE_READINESS = "revo.node"  # node.health_address: the node's own readiness


def _local(address: str) -> str:
    """``host:port`` as reached from inside the container (a wildcard host is loopback)."""
    host, _, port = address.rpartition(":")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]', '::') else host}:{port}"


def _role_of_pid1() -> str:
    try:
        words = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return ""
    return next((w for w in words if w in ("gateway", "node")), "")


def _grpc_health(target: str, service: str, credentials: object = None) -> str:
    """'' when ``grpc.health.v1.Health/Check(service)`` at ``target`` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with (grpc.secure_channel(target, credentials) if credentials  # type: ignore[arg-type]
          else grpc.insecure_channel(target)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return f"{target} {service or '(server)'}: {exc.code().name} {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return "" if status == "SERVING" else f"{target} {service or '(server)'}: {status}"


def check_gateway() -> str:
    """'' when the gateway's gRPC health answers SERVING, else why not."""
    from mesh.client import client_credentials
    from mesh.config import load_config

    config = load_config()
    return _grpc_health(_local(config.gateway.address), "", client_credentials(config))


def check_node() -> str:
    """'' when the node is ready (its health service's ``revo.node``), else why not."""
    from mesh.config import load_config

    address = load_config().node.health_address
    if not address or address.endswith(":0"):
        return (f"node.health_address is {address!r}: give it a fixed port "
                "(REVO_NODE__HEALTH_ADDRESS=0.0.0.0:50052) so the node can be probed")
    return _grpc_health(_local(address), NODE_READINESS)


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else _role_of_pid1()
    checks = {"gateway": check_gateway, "node": check_node}
    if role and role not in checks:
        print(f"revo-healthcheck: unknown role {role!r}: gateway or node", file=sys.stderr)
        return 2
    if not role:
        return 0  # a CLI command: nothing serves, nothing to probe
    problem = checks[role]()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
