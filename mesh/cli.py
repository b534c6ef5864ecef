"""``revo``: the mesh's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mesh.config import MeshConfig, load_config
from mesh.errors import ConfigError


def _config(args: argparse.Namespace) -> MeshConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "address", None):
        overrides["gateway"] = {"address": args.address}
    if getattr(args, "colocate", False):
        overrides.setdefault("gateway", {})["colocate"] = True
    if getattr(args, "nats", None):
        overrides["nats"] = {"url": args.nats}
    config = load_config(args.config, **overrides)  # deep-merged over file and environment
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config


def cmd_up(args: argparse.Namespace) -> int:
    from mesh.embedded.up import run_up

    return run_up(_config(args), profile=args.profile)


def cmd_node(args: argparse.Namespace) -> int:
    from mesh.runtime.process import run_node

    return run_node(_config(args))


def cmd_gateway(args: argparse.Namespace) -> int:
    from mesh.runtime.process import run_gateway

    return run_gateway(_config(args))


def cmd_plugins(args: argparse.Namespace) -> int:
    from mesh.plugins.host import PluginHost

    config = _config(args)
    host = PluginHost(block=config.plugins.block, only=config.plugins.only,
                      extra=config.plugins.extra,
                      settings={n: s.plugin_settings() for n, s in config.engines.items()})
    records = host.load()
    if not records:
        print("no engine plugins installed (entry point group 'revo.engines')")
        return 0
    rows = [("ENGINE", "STATUS", "VERSION", "DISTRIBUTION", "SERVICES / MESSAGE")]
    for r in records:
        detail = r.message or ", ".join(s.full_name for s in r.spec.service_descriptors()) \
            if r.spec else r.message
        rows.append((r.name, r.status.value, r.version or "-", r.distribution or r.source,
                     detail or ""))
    _table(rows)
    return 0 if all(r.status.value in ("enabled", "disabled") for r in records) else 1


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  "
              + row[-1])


def load_progress(engine: Any) -> str:
    """``  1200 of 5000 memories (24 %)`` for an engine still loading, else ''."""
    from mesh.v1 import mesh_pb2

    if engine.status != mesh_pb2.ENGINE_STATUS_LOADING:
        return ""
    done, total, unit = engine.progress.done, engine.progress.total, engine.progress.unit
    if not total:
        return f"  {done} {unit} so far".rstrip()
    return f"  {done} of {total} {unit} ({100 * done // total} %)"


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from mesh.auth.tokens import operator_token
    from mesh.client import MeshClient, client_credentials
    from mesh.embedded.up import metrics_url, read_state
    from mesh.v1 import mesh_pb2

    config = _config(args)
    state = read_state(config)
    target = args.address or (state["gateway"] if state else config.gateway.address)
    if state:
        procs = ", ".join(f"{name} {pid}" for name, pid in state["processes"].items())
        print(f"revo up: running (pid {state['pid']}; {procs})")
        print(f"  NATS {state['nats']}   logs {state['logs']}")
        if state.get("profile") == "cluster":
            print("  gateways " + ", ".join(f"{name} {address}" for name, address
                                           in state["gateways"].items())
                  + f"   Envoy {state['envoy'] or '-'}")
            print(f"  Milvus {state['milvus'] or '-'}   JetStream replicas "
                  f"{state['replicas']}")
    else:
        print(f"revo up: not running under {config.home}")

    async def query() -> tuple[list[mesh_pb2.Node], list[mesh_pb2.Service]]:
        async with MeshClient(target, timeout=3.0, retry=None,
                              credentials=client_credentials(config),
                              token=operator_token(config, ttl_s=60)) as client:
            return await client.list_nodes(), await client.list_services()

    try:
        nodes, services = asyncio.run(query())
    except Exception as exc:
        reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc
        print(f"gateway {target}: not reachable ({reason})")
        return 1
    print(f"gateway {target}: serving {len(services)} services on {len(nodes)} nodes")
    gateway_metrics = (state.get("gateway_metrics", "") if state
                       else metrics_url(config.gateway.metrics_address))
    print(f"  metrics {gateway_metrics or 'off'}")
    for node in nodes:
        print(f"  node {node.id} (pid {node.pid}, revo-mesh {node.version})"
              + (" draining" if node.draining else ""))
        print(f"    metrics {node.metrics_url or 'off'}")
        for engine in node.engines:
            status = mesh_pb2.EngineStatus.Name(engine.status).removeprefix("ENGINE_STATUS_")
            print(f"    {engine.name:<14} {status.lower():<12} v{engine.version or '?':<8} "
                  f"actors {engine.actors_alive}/{engine.pool_size}  restarts {engine.restarts}"
                  + (f"  {engine.status_message}" if engine.status_message else "")
                  + load_progress(engine))
    for service in services:
        print(f"  service {service.name}: {', '.join(m.name for m in service.methods)}")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    import os

    from mesh.client import client_credentials
    from mesh.embedded.up import read_state
    from mesh.mcp.server import loopback_address, serve_http, serve_stdio

    config = _config(args)
    api_key = args.api_key or os.environ.get("REVO_API_KEY", "")
    if not api_key and args.transport == "stdio":
        print("revo mcp: no API key: pass --api-key or set REVO_API_KEY (create one with "
              "`revo keys create`); every tool call acts as the key's owner", file=sys.stderr)
        return 2
    try:
        loopback_address(args.http_address)
    except ValueError as exc:
        print(f"revo mcp: {exc}", file=sys.stderr)
        return 2
    state = read_state(config)
    gateway = args.gateway or (state["gateway"] if state else config.gateway.address)
    credentials = client_credentials(config)
    try:
        if args.transport == "stdio":
            asyncio.run(serve_stdio(gateway, api_key, credentials))
        else:
            asyncio.run(serve_http(gateway, api_key, args.http_address, credentials))
    except KeyboardInterrupt:
        pass
    return 0


def operator_client(args: argparse.Namespace, timeout: float = 30.0) -> Any:
    """A :class:`~mesh.client.MeshClient` signed in as the local operator, to the gateway
    of the ``revo up`` running here (or ``args.address``): for plugin commands
    (:func:`mesh.plugins.hookspecs.revo_commands`). Use it with ``async with``."""
    from mesh.auth.tokens import operator_token
    from mesh.client import MeshClient, client_credentials
    from mesh.embedded.up import read_state

    config = _config(args)
    state = read_state(config)
    target = getattr(args, "address", None) or (state["gateway"] if state
                                                else config.gateway.address)
    return MeshClient(target, timeout=timeout, retry=None,
                      credentials=client_credentials(config),
                      token=operator_token(config, ttl_s=max(60, int(timeout) * 2)))


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """The names of ``parser``'s commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Let every installed plugin add its commands (hook ``revo_commands``)."""
    from mesh.plugins.host import PluginHost

    host = PluginHost()
    host.load()
    host.each(_revo_commands_spec(), commands=sub)


def _revo_commands_spec() -> Callable[..., None]:
    from mesh.plugins.hookspecs import revo_commands

    return revo_commands


def build_parser(plugin_commands: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revo", description=__doc__)
    parser.add_argument("--config", help="revo.toml to read (default: $REVO_CONFIG or ./revo.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start nats-server, a node and the gateway; Ctrl-C stops "
                        "all")
    up.add_argument("--profile", choices=["default", "cluster"], default="default",
                    help="cluster: the production shape on this machine (three clustered "
                    "nats-servers, the Milvus server, Triton, two gateways behind Envoy, three "
                    "nodes; docs/operators.md)")
    up.set_defaults(func=cmd_up)
    node = sub.add_parser("node", help="run a node with every installed engine")
    node.add_argument("--nats", help="NATS URL (overrides nats.url)")
    node.set_defaults(func=cmd_node)
    gateway = sub.add_parser("gateway", help="run the gRPC gateway")
    gateway.add_argument("--address", help="host:port to listen on (overrides gateway.address)")
    gateway.add_argument("--nats", help="NATS URL (overrides nats.url)")
    gateway.add_argument("--colocate", action="store_true",
                         help="host the engines in the gateway's process (fast path)")
    gateway.set_defaults(func=cmd_gateway)
    status = sub.add_parser("status", help="what runs: processes, nodes, engines, services")
    status.add_argument("--address", help="gateway to ask (default: the running revo up's)")
    status.set_defaults(func=cmd_status)
    sub.add_parser("plugins", help="installed engine plugins and their status"
                   ).set_defaults(func=cmd_plugins)
    mcp = sub.add_parser("mcp", help="serve the mesh's tools to assistants over MCP "
                         "(docs/mcp.md)")
    mcp.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                     help="stdio (the host starts revo mcp) or streamable HTTP (default: "
                     "stdio)")
    mcp.add_argument("--address", dest="http_address", default="127.0.0.1:8765",
                     help="loopback host:port for --transport http (default: "
                     "127.0.0.1:8765; port 0 picks one)")
    mcp.add_argument("--gateway", help="the gateway's host:port (default: the running revo "
                     "up's, else gateway.address)")
    mcp.add_argument("--api-key", default="", help="the API key every call is made with "
                     "(prefer REVO_API_KEY: arguments are visible to other local users)")
    mcp.set_defaults(func=cmd_mcp)
    from mesh.auth.commands import add_parsers

    def with_config(command: Callable[[argparse.Namespace, MeshConfig], int]
                    ) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            from mesh.embedded.up import read_state

            config = _config(args)
            state = read_state(config)
            if state and state.get("nats"):  # the NATS of the `revo up` running here
                config.nats.url = state["nats"]
            logging.getLogger("mesh.transport").setLevel(logging.WARNING)  # no connect chatter
            return command(args, config)
        return run

    add_parsers(sub, with_config)
    if plugin_commands:
        _plugin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for i, w in enumerate(words) if not w.startswith("-")
                    and (i == 0 or words[i - 1] != "--config")), "")
    parser = build_parser()
    if command and command not in _commands(parser):
        parser = build_parser(plugin_commands=True)  # a plugin's command: load plugins
    args = parser.parse_args(words)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"revo: configuration error: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"revo: {exc}", file=sys.stderr)
        return 1
