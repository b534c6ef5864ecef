"""``revo mcp``: the MCP server, over stdio or streamable HTTP, in front of one gateway.

The server is a door like the others (docs/mcp.md): it translates MCP tool calls into the
mesh's gRPC calls made with an API key, and decides nothing itself.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import uvicorn
from mcp.server.mcpserver import MCPServer

from mesh import __version__
from mesh.client import MeshClient
from mesh.mcp import models
from mesh.mcp.access import MeshAccess

__all__ = ["HTTP_PATH", "build_server", "loopback_address", "serve_http", "serve_stdio"]

log = logging.getLogger(__name__)

HTTP_PATH = "/mcp"
ENGINE_TOOLS = ("mesh.mcp.memories", "mesh.mcp.tasks")
"""Tools of built-in engines that ship as their own distributions (revo-engine-recall,
revo-engine-parallel): each module is skipped when its engine's stubs are not installed."""
INSTRUCTIONS = (
    "revo is a self-hosted mesh of AI engines. Use remember/search/list_memories/forget for "
    "long-term memory (search finds memories by meaning), submit_task/watch_task/get_task/"
    "cancel_task for durable background work, and generate for text from the mesh's "
    "models. Every call acts as the owner of the API key this server was given.")


def build_server(access: MeshAccess) -> MCPServer:
    """The MCP server with every tool, calling the mesh through ``access``."""
    server: MCPServer = MCPServer("revo", title="revo mesh", version=__version__,
                                  instructions=INSTRUCTIONS, log_level="WARNING")
    models.register(server, access)
    for module in ENGINE_TOOLS:
        try:
            tools = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # that engine's distribution is not installed
            if not (exc.name or "").startswith("revo_engine_"):
                raise
            log.info("revo mcp: no %s tools (%s is not installed)", module, exc.name)
            continue
        tools.register(server, access)
    return server


def loopback_address(address: str) -> tuple[str, int]:
    """``host:port`` as a loopback host and a port, or ValueError: anyone who reaches the
    server acts as the key's owner, so it listens on this machine only."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--address {address!r} must be host:port, e.g. 127.0.0.1:8765")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--address {address!r}: revo mcp listens on loopback only "
                         "(127.0.0.1, ::1 or localhost): whoever reaches it acts as the API "
                         "key's owner")
    return host, int(port)


class _HttpServer(uvicorn.Server):
    """uvicorn's server, ending on SIGINT/SIGTERM with a clean return: uvicorn raises the
    signal again after its graceful shutdown, which would end ``revo mcp`` by the signal
    instead of exiting 0 like every other revo command."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _client(gateway: str, credentials: grpc.ChannelCredentials | None) -> MeshClient:
    # No default token: each call carries its own key (MeshAccess.metadata).
    return MeshClient(gateway, timeout=30.0, retry=None, credentials=credentials)


async def serve_stdio(gateway: str, api_key: str,
                      credentials: grpc.ChannelCredentials | None = None) -> None:
    """Serve MCP on stdin/stdout until stdin closes."""
    async with _client(gateway, credentials) as client:
        server = build_server(MeshAccess(client.channel, api_key, gateway))
        await server.run_stdio_async()


async def serve_http(gateway: str, api_key: str, address: str,
                     credentials: grpc.ChannelCredentials | None = None) -> None:
    """Serve MCP over streamable HTTP at ``http://<address>/mcp`` until SIGINT/SIGTERM.
    Prints the URL on stderr once it accepts connections (port 0 picks a free port)."""
    host, port = loopback_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    bound = listener.getsockname()[1]
    async with _client(gateway, credentials) as client:
        server = build_server(MeshAccess(client.channel, api_key, gateway))
        # The host given here turns on the SDK's DNS-rebinding protection for loopback.
        app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        shown = f"[{host}]" if ":" in host else host
        print(f"revo mcp: streamable HTTP at http://{shown}:{bound}{HTTP_PATH} "
              f"(gateway {gateway})", file=sys.stderr, flush=True)
        await _HttpServer(config).serve(sockets=[listener])
