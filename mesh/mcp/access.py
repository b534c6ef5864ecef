"""How the MCP tools reach the mesh: the gateway's channel, the API key each call carries,
and the mesh's errors turned into MCP tool errors.

Every tool calls the gateway over gRPC with the generated stubs, carrying
``authorization: Bearer <API key>``, so the gateway applies the key owner's role, budgets,
rate limits and audit exactly as for any other client. The key is the server's own
(``--api-key`` / ``REVO_API_KEY``); over streamable HTTP a request's own
``Authorization: Bearer`` header, when it has one, is used instead (the gateway checks it:
the header is forwarded, never trusted here).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from mesh.client import rpc_error
from mesh.errors import RpcError

__all__ = ["MeshAccess", "describe"]

Metadata = tuple[tuple[str, str], ...]


def describe(error: RpcError) -> str:
    """One line for an assistant: the code, the mesh's message, and what a program reads
    from the details (reason, retry delay, wrong fields)."""
    text = f"{error.code.name}: {error.message or 'no message'}"
    extras = []
    if error.reason:
        extras.append(f"reason {error.reason}")
    if error.retry_after_s is not None:
        extras.append(f"retry after {error.retry_after_s:g} s")
    extras += [f"{v.field}: {v.description}" for v in error.violations
               if v.description not in error.message]
    return f"{text} ({'; '.join(extras)})" if extras else text


def _bearer(headers: Mapping[str, str] | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header ('' for none)."""
    if not headers:
        return ""
    value = headers.get("authorization") or ""
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


class MeshAccess:
    """The gateway channel and the key of the server's owner, shared by every tool."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str, gateway: str) -> None:
        self.channel = channel
        self._api_key = api_key
        self.gateway = gateway
        self.sequence = 0
        """The newest Perfect Recall write this server made (searches read it)."""

    def metadata(self, ctx: Context) -> Metadata:
        """The call metadata for one tool call: the request's own key over HTTP when it
        sent one, else the server's; a tool error when there is neither."""
        key = _bearer(ctx.headers) or self._api_key
        if not key:
            raise ToolError("UNAUTHENTICATED: no API key: send 'Authorization: Bearer "
                            "<API key>' with the MCP request, or start revo mcp with "
                            "--api-key / REVO_API_KEY")
        return (("authorization", f"Bearer {key}"),)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a failed mesh call inside the block into a tool error with the mesh's code
        and message (never a stack trace)."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self.tool_error(exc) from None

    def tool_error(self, exc: grpc.aio.AioRpcError) -> ToolError:
        """The tool error for a failed mesh call."""
        error = rpc_error(exc)
        text = describe(error)
        if error.code is grpc.StatusCode.UNAVAILABLE and not error.reason:
            text += f" (is the gateway at {self.gateway} up?)"
        return ToolError(text)
