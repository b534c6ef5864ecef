"""The mesh as MCP tools (``revo mcp``): memories, tasks and generation for assistant hosts.

:mod:`mesh.mcp.server` builds the server and serves it (stdio or streamable HTTP);
:mod:`mesh.mcp.access` carries the API key and turns mesh errors into tool errors;
:mod:`mesh.mcp.memories`, :mod:`mesh.mcp.tasks` and :mod:`mesh.mcp.models` are the tools of
each engine. See docs/mcp.md.
"""

from mesh.mcp.server import build_server, serve_http, serve_stdio

__all__ = ["build_server", "serve_http", "serve_stdio"]
