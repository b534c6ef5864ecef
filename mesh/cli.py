"""``revo``: the mesh's command line.

Every command's ``--help`` has a description and examples; listings take ``--json``;
errors go to stderr, and the exit code says which failure it is (:mod:`mesh.cli_support`:
0 OK, 1 failed, 2 usage, 3 unreachable, 4 refused). docs/operators.md has the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mesh.cli_support import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    add_command,
    call_failure,
    channel_credentials,
    credential,
    gateway_target,
    print_json,
    stderr,
)
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

    return run_up(_config(args), profile=args.profile, detach=args.detach,
                  background=args.background, config_file=args.config)


def cmd_down(args: argparse.Namespace) -> int:
    from mesh.embedded.background import stop_detached

    return stop_detached(_config(args))


def cmd_logs(args: argparse.Namespace) -> int:
    from mesh.embedded.background import show_log

    return show_log(_config(args), args.name, follow=args.follow, lines=args.lines)


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
    ok = all(r.status.value in ("enabled", "disabled") for r in records)
    if args.json:
        print_json({"plugins": [{
            "name": r.name, "status": r.status.value, "version": r.version,
            "distribution": r.distribution, "source": r.source,
            "services": [s.full_name for s in r.spec.service_descriptors()] if r.spec else [],
            "message": r.message} for r in records]})
        return EXIT_OK if ok else EXIT_ERROR
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
    return EXIT_OK if ok else EXIT_ERROR


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


def _up_report(state: dict[str, Any] | None, config: MeshConfig) -> dict[str, Any]:
    """``status --json``'s ``up``: what the ``revo up`` running here recorded."""
    state = state or {}
    return {"running": bool(state), "home": state.get("home", str(config.home)),
            "pid": state.get("pid"), "profile": state.get("profile", "default") if state
            else None, "processes": dict(state.get("processes", {})),
            "nats": state.get("nats") or None, "gateway": state.get("gateway") or None,
            "gateways": dict(state.get("gateways", {})), "http": state.get("http") or None,
            "envoy": state.get("envoy") or None, "triton": state.get("triton") or None,
            "logs": state.get("logs") or None}


def _engine_report(engine: Any) -> dict[str, Any]:
    from mesh.v1 import mesh_pb2

    loading = engine.status == mesh_pb2.ENGINE_STATUS_LOADING
    return {"name": engine.name,
            "status": mesh_pb2.EngineStatus.Name(engine.status).removeprefix(
                "ENGINE_STATUS_").lower(),
            "version": engine.version, "actors_alive": engine.actors_alive,
            "pool_size": engine.pool_size, "restarts": engine.restarts,
            "message": engine.status_message,
            "progress": {"done": engine.progress.done, "total": engine.progress.total,
                         "unit": engine.progress.unit} if loading else None}


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from mesh.cli_support import sign_in
    from mesh.embedded.up import metrics_url, read_state
    from mesh.v1 import mesh_pb2, mesh_pb2_grpc

    config = _config(args)
    state = read_state(config)
    target, tls = gateway_target(args.address, config)
    gateway_metrics = (state.get("gateway_metrics", "") if state
                       else metrics_url(config.gateway.metrics_address))
    report: dict[str, Any] = {
        "up": _up_report(state, config),
        "gateway": {"address": target, "reachable": False, "metrics": gateway_metrics or None},
        "nodes": [], "services": [], "error": None}
    if not args.json:
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
    who = credential(config, ttl_s=60)

    async def query() -> tuple[list[mesh_pb2.Node], list[mesh_pb2.Service]]:
        credentials = channel_credentials(config, tls)
        channel = (grpc.aio.secure_channel(target, credentials) if credentials
                   else grpc.aio.insecure_channel(target))
        async with channel:
            token = await sign_in(channel, who, target, timeout=3.0)
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            mesh = mesh_pb2_grpc.MeshServiceStub(channel)
            try:
                nodes = await mesh.ListNodes(mesh_pb2.ListNodesRequest(), timeout=3.0,
                                             metadata=metadata)
                services = await mesh.ListServices(mesh_pb2.ListServicesRequest(),
                                                   timeout=3.0, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                connected = channel.get_state() == grpc.ChannelConnectivity.READY
                raise call_failure(exc, target, who, what="revo status",
                                   connected=connected) from None
        return list(nodes.nodes), list(services.services)

    try:
        nodes, services = asyncio.run(query())
    except CommandFailed as failure:
        if args.json:
            report["error"] = failure.as_json()
            print_json(report)
        stderr(f"revo status: {failure.message}")
        return failure.exit_code
    report["gateway"]["reachable"] = True
    report["nodes"] = [{"id": node.id, "pid": node.pid, "version": node.version,
                        "draining": node.draining, "metrics_url": node.metrics_url or None,
                        "engines": [_engine_report(e) for e in node.engines]}
                       for node in nodes]
    report["services"] = [{"name": service.name, "methods": [m.name for m in service.methods]}
                          for service in services]
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"gateway {target}: serving {len(services)} services on {len(nodes)} nodes")
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
    return EXIT_OK


def cmd_mcp(args: argparse.Namespace) -> int:
    import os

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
    gateway, tls = gateway_target(args.gateway, config)  # --gateway, REVO_URL, revo up's
    credentials = channel_credentials(config, tls)
    try:
        if args.transport == "stdio":
            asyncio.run(serve_stdio(gateway, api_key, credentials))
        else:
            asyncio.run(serve_http(gateway, api_key, args.http_address, credentials))
    except KeyboardInterrupt:
        pass
    return 0


def operator_client(args: argparse.Namespace, timeout: float = 30.0) -> Any:
    """A :class:`~mesh.client.MeshClient` for plugin commands
    (:func:`mesh.plugins.hookspecs.revo_commands`), to the gateway of ``args.address``,
    ``REVO_URL`` or the ``revo up`` running here, signed in with ``REVO_API_KEY``,
    ``REVO_TOKEN`` or ``REVO_USERNAME``/``REVO_PASSWORD`` when set, else as the local
    operator. Use it with ``async with``; turn its call errors into the failure they are
    with :func:`gateway_failure`."""
    from mesh.client import MeshClient

    config = _config(args)
    target, tls = gateway_target(getattr(args, "address", None), config)
    who = credential(config, ttl_s=max(60, int(timeout) * 2))
    client = MeshClient(target, timeout=timeout, retry=None,
                        credentials=channel_credentials(config, tls), token=who.token or None)
    return _SignedIn(client, who) if who.username else client


class _SignedIn:
    """A client that signs in with a user name and password as it opens."""

    def __init__(self, client: Any, who: Any) -> None:
        self.client, self.who = client, who

    async def __aenter__(self) -> Any:
        await self.client.login(self.who.username, self.who.password)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


def gateway_failure(args: argparse.Namespace, exc: Any, what: str = "the call"
                    ) -> CommandFailed:
    """A failed call of a plugin command (a ``grpc.aio.AioRpcError``) as the failure it is:
    unreachable, refused or failed, with the right exit code; raise it."""
    config = _config(args)
    target, _ = gateway_target(getattr(args, "address", None), config)
    # a deadline there is the command's own (revo workflows run --wait), not a lost way
    return call_failure(exc, target, credential(config, ttl_s=60), what=what, connected=True)


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


def version_text() -> str:
    """``revo --version``: revo-mesh's version and each installed engine's, with its
    distribution (from the installed packages' metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    try:
        own = version("revo-mesh")
    except PackageNotFoundError:  # running from a source tree that was never installed
        own = "unknown (not installed)"
    lines = [f"revo-mesh {own} (Python {sys.version.split()[0]})"]
    for point in sorted(entry_points(group="revo.engines"), key=lambda p: p.name):
        dist = point.dist
        lines.append(f"  engine {point.name:<12} "
                     + (f"{dist.name} {dist.version}" if dist else point.value))
    return "\n".join(lines)


class _Version(argparse.Action):
    """``--version``: computed when asked, not each time the parser is built."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


_EXAMPLES = """\
examples:
  revo up                          # nats-server, Triton, Envoy, a node and the gateway
  revo status                      # what runs; --json for scripts
  revo call --list                 # every method you can call
  revo call revo.echo.v1.EchoService/Echo -d '{"payload": "aGk="}'
  revo users create ada --role developer
  revo keys create --name ci --user ada
  revo workflows list

exit codes: 0 OK, 1 failed, 2 usage, 3 unreachable, 4 refused (docs/operators.md)
"""


def build_parser(plugin_commands: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revo", description="revo: the mesh's command line. Every command has --help "
        "with examples. Installed engines add commands of their own (revo workflows --help).",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="revo-mesh's version and each "
                        "installed engine's, then exit")
    parser.add_argument("--config", help="revo.toml to read (default: $REVO_CONFIG or ./revo.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = add_command(
        sub, "up", help="start nats-server, a node and the gateway; Ctrl-C stops all",
        description="Start the whole mesh on this machine: nats-server, Triton (local "
        "models, when installed), Envoy, a node with every installed engine and the gateway. "
        "It prints where each listens and runs until Ctrl-C, which stops everything. State "
        "and logs go under REVO_HOME (default ./.revo).",
        examples=["revo up", "revo up --detach     # in the background: revo down stops "
                  "it, revo logs -f node follows a log",
                  "revo up --profile cluster     # the production shape, on one "
                  "machine", "REVO_ADMIN_PASSWORD=... revo up   # creates the first admin"])
    up.add_argument("--profile", choices=["default", "cluster"], default="default",
                    help="cluster: the production shape on this machine (three clustered "
                    "nats-servers, the Milvus server, Triton, two gateways behind Envoy, three "
                    "nodes; docs/operators.md)")
    up.add_argument("-d", "--detach", action="store_true",
                    help="run in the background: return once the mesh is ready (revo down "
                    "stops it, revo logs shows its logs)")
    up.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    down = add_command(
        sub, "down", help="stop the mesh that revo up runs here",
        description="Stop the revo up of this REVO_HOME (in the background or not): "
        "SIGTERM, which stops everything in reverse order, then SIGKILL for what is left "
        "after 20 s. Says what it did; 'nothing running' (exit 0) when nothing runs. Exit "
        "code 1 when something had to be killed.",
        examples=["revo up --detach && revo down", "REVO_HOME=/srv/revo revo down"])
    down.set_defaults(func=cmd_down)
    logs = add_command(
        sub, "logs", help="print (or follow) a log of revo up's processes",
        description="Print the log of one of revo up's processes from REVO_HOME/logs: "
        "nats (nats-server), triton (tritonserver), envoy, node, gateway, up (revo up's own "
        "output in the background), and in the cluster profile nats-1, node-2, milvus... "
        "Without a NAME, or with one that is not there, it lists them. Logs rotate at "
        "10 MiB, keeping 3 older files (NAME.log.1 is the newest).",
        examples=["revo logs", "revo logs node", "revo logs -f gateway     # follow it; "
                  "Ctrl-C stops", "revo logs -n 50 nats     # its last 50 lines"])
    logs.add_argument("name", nargs="?", metavar="NAME", help="the log to print (revo logs "
                      "lists them)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing what is written to it (across rotations)")
    logs.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                      help="only its last N lines (default: all of the current file)")
    logs.set_defaults(func=cmd_logs)
    node = add_command(
        sub, "node", help="run a node with every installed engine",
        description="Run one node: it hosts every installed engine's actor pool and serves "
        "their methods over NATS; run as many as you need (the gateway spreads calls over "
        "them). Stops on SIGTERM after in-flight calls finish (node.shutdown_grace_s).",
        examples=["revo node", "revo node --nats nats://10.0.0.5:4222",
                  "REVO_PLUGINS__ONLY=echo,recall revo node"])
    node.add_argument("--nats", help="NATS URL (overrides nats.url)")
    node.set_defaults(func=cmd_node)
    gateway = add_command(
        sub, "gateway", help="run the gRPC gateway",
        description="Run the gRPC gateway: it signs callers in, checks their roles and rate "
        "limits, and forwards each call to a node over NATS. It also serves the HTTP door "
        "(gateway.http_address).",
        examples=["revo gateway", "revo gateway --address 0.0.0.0:50051 --nats "
                  "nats://10.0.0.5:4222", "revo gateway --colocate     # engines in-process: "
                  "one process, no NATS hop"])
    gateway.add_argument("--address", help="host:port to listen on (overrides gateway.address)")
    gateway.add_argument("--nats", help="NATS URL (overrides nats.url)")
    gateway.add_argument("--colocate", action="store_true",
                         help="host the engines in the gateway's process (fast path)")
    gateway.set_defaults(func=cmd_gateway)
    status = add_command(
        sub, "status", help="what runs: processes, nodes, engines, services",
        description="What runs: the revo up of this directory (its processes), then what "
        "the gateway says: nodes, their engines (status, actors, restarts, loading "
        "progress) and the services served. Signs in like revo call. Creates nothing. "
        "Exit code 3 when the gateway cannot be reached, 4 when it refuses the credentials.",
        examples=["revo status", "revo status --json | jq '.nodes[].engines[]'",
                  "revo status --address 10.0.0.7:50051"])
    status.add_argument("--address", help="gateway to ask (default: REVO_URL, else the "
                        "running revo up's, else gateway.address)")
    status.add_argument("--json", action="store_true", help="one JSON document (keys in "
                        "docs/operators.md)")
    status.set_defaults(func=cmd_status)
    plugins = add_command(
        sub, "plugins", help="installed engine plugins and their status",
        description="The engine plugins installed here (entry point group revo.engines) "
        "with their status as a node would load them: enabled, disabled, load error, "
        "config error. Exit code 1 when one failed to load.",
        examples=["revo plugins", "revo plugins --json",
                  "REVO_PLUGINS__BLOCK=creative revo plugins"])
    plugins.add_argument("--json", action="store_true", help="as JSON: {\"plugins\": [...]}")
    plugins.set_defaults(func=cmd_plugins)
    mcp = add_command(
        sub, "mcp", help="serve the mesh's tools to assistants over MCP (docs/mcp.md)",
        description="Serve the mesh's methods as MCP tools to an assistant (Claude Desktop, "
        "an IDE): over stdio, started by the assistant's host, or over streamable HTTP on a "
        "loopback port. Every tool call acts as the API key's owner.",
        examples=["REVO_API_KEY=revo_... revo mcp", "revo mcp --transport http --address "
                  "127.0.0.1:8765"])
    mcp.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                     help="stdio (the host starts revo mcp) or streamable HTTP (default: "
                     "stdio)")
    mcp.add_argument("--address", dest="http_address", default="127.0.0.1:8765",
                     help="loopback host:port for --transport http (default: "
                     "127.0.0.1:8765; port 0 picks one)")
    mcp.add_argument("--gateway", help="the gateway's host:port (default: REVO_URL, else the "
                     "running revo up's, else gateway.address)")
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

    from mesh.cli_call import add_call_parser

    add_call_parser(sub, with_config)
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
    except CommandFailed as failure:
        stderr(f"revo {args.command}: {failure.message}")
        return failure.exit_code
    except ConfigError as exc:
        stderr(f"revo: configuration error: {exc}")
        return EXIT_USAGE
    except ConnectionError as exc:
        stderr(f"revo: {exc}")
        return EXIT_ERROR
