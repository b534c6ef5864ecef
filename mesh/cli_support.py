"""What every ``revo`` command shares: exit codes, failures that say which failure they are,
help pages with examples, and the way to the gateway (address, TLS, credentials).

Exit codes (docs/operators.md, "Exit codes")::

    0  OK
    1  the command or the call failed (the message says why: NOT_FOUND, INTERNAL, ...)
    2  usage: a wrong argument, bad JSON input, an unknown method, a configuration error
    3  unreachable: the gateway or NATS cannot be reached (refused, DNS, TLS, no answer)
    4  refused: no credentials, a wrong key or bad token, an expired or revoked token, or
       a role without the permission

A command raises :class:`CommandFailed` with the exit code and a message for people;
``revo`` prints it to stderr. :func:`call_failure` turns a failed gRPC call into one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from mesh.config import MeshConfig

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CommandFailed",
    "Credential",
    "add_command",
    "call_failure",
    "channel_credentials",
    "credential",
    "gateway_target",
    "print_json",
    "sign_in",
    "stderr",
    "unreachable_nats",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4


class CommandFailed(Exception):
    """A command's failure: ``revo`` prints ``message`` to stderr and exits ``exit_code``.

    ``kind`` names the failure for programs (``status --json``): ``unreachable``,
    ``unauthenticated``, ``token_missing``, ``token_expired``, ``token_revoked``,
    ``permission_denied``, ``usage`` or ``error``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, kind: str = "error",
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.kind = kind
        self.details: dict[str, Any] = dict(details or {})

    def as_json(self) -> dict[str, Any]:
        """The failure as ``{"kind", "message", "exit_code", "details"}``."""
        return {"kind": self.kind, "message": self.message, "exit_code": self.exit_code,
                "details": self.details}


# -- help pages ----------------------------------------------------------------------------

def add_command(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                name: str, *, help: str, description: str,
                examples: Iterable[str]) -> argparse.ArgumentParser:
    """A command's parser whose ``--help`` has a description and examples (``revo …`` lines,
    each optionally followed by ``# what it does``)."""
    lines = "\n".join(f"  {example}" for example in examples)
    return sub.add_parser(  # type: ignore[no-any-return]
        name, help=help, description=textwrap.fill(description, 88),
        epilog=f"examples:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)


def print_json(value: Any, *, compact: bool = False) -> None:
    """``value`` as JSON on stdout: indented, or on one line (``compact``, for streams)."""
    print(json.dumps(value, indent=None if compact else 2, sort_keys=False), flush=True)


# -- the way to the gateway ----------------------------------------------------------------

def gateway_target(explicit: str | None, config: MeshConfig,
                   environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """The gateway's ``host:port`` and whether the URL asks for TLS: ``--address``, else
    ``REVO_URL`` (``host:port``, ``grpc://host:port``, ``https://host:port`` for TLS),
    else the ``revo up`` running here, else ``gateway.address``."""
    from mesh.embedded.up import read_state

    environ = os.environ if environ is None else environ
    url = explicit or environ.get("REVO_URL", "")
    if not url:
        state = read_state(config)
        url = state["gateway"] if state else config.gateway.address
    scheme, found, rest = url.partition("://")
    if not found:
        return url.rstrip("/"), False
    if scheme not in ("grpc", "http", "https", "grpcs"):
        raise CommandFailed(f"REVO_URL / --address {url!r}: use host:port, grpc://host:port "
                            "or https://host:port", EXIT_USAGE, "usage")
    host = rest.rstrip("/")
    if ":" not in host:
        host += ":443" if scheme in ("https", "grpcs") else ":80"
    return host, scheme in ("https", "grpcs")


def channel_credentials(config: MeshConfig, tls: bool = False,
                        environ: Mapping[str, str] | None = None
                        ) -> grpc.ChannelCredentials | None:
    """TLS credentials to the gateway, None for plain: ``REVO_CA_FILE`` (the CA that signed
    the gateway's certificate), else this configuration's ``gateway.tls``, else the system's
    roots when the URL said ``https://``."""
    import grpc

    from mesh.client import client_credentials

    environ = os.environ if environ is None else environ
    ca_file = environ.get("REVO_CA_FILE", "")
    if ca_file:
        try:
            return grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
        except OSError as exc:
            raise CommandFailed(f"REVO_CA_FILE names {ca_file}, which cannot be read: "
                                f"{exc.strerror}", EXIT_USAGE, "usage") from None
    credentials = client_credentials(config)
    if credentials is None and tls:
        return grpc.ssl_channel_credentials()
    return credentials


@dataclass(frozen=True)
class Credential:
    """What a command signs in with: a bearer ``token`` (or API key), or a user name and
    password to sign in with first; ``source`` says where it came from, for messages."""

    token: str = ""
    username: str = ""
    password: str = ""
    source: str = "no credentials"


def credential(config: MeshConfig, ttl_s: float = 300.0,
               environ: Mapping[str, str] | None = None) -> Credential:
    """``REVO_API_KEY``, else ``REVO_TOKEN``, else ``REVO_USERNAME`` and ``REVO_PASSWORD``,
    else the local operator: an admin token signed with this machine's key (created by
    nobody: a home without a secret gives no token)."""
    from mesh.auth.tokens import operator_token

    environ = os.environ if environ is None else environ
    if environ.get("REVO_API_KEY"):
        return Credential(token=environ["REVO_API_KEY"], source="the API key in REVO_API_KEY")
    if environ.get("REVO_TOKEN"):
        return Credential(token=environ["REVO_TOKEN"], source="the token in REVO_TOKEN")
    if environ.get("REVO_USERNAME") or environ.get("REVO_PASSWORD"):
        if not (environ.get("REVO_USERNAME") and environ.get("REVO_PASSWORD")):
            raise CommandFailed("REVO_USERNAME and REVO_PASSWORD go together: set both",
                                EXIT_USAGE, "usage")
        return Credential(username=environ["REVO_USERNAME"], password=environ["REVO_PASSWORD"],
                          source=f"the password of {environ['REVO_USERNAME']} "
                          "(REVO_USERNAME)")
    token = operator_token(config, ttl_s=ttl_s, environ=environ, create=False)
    if token:
        return Credential(token=token, source="the local operator token (signed with "
                          f"the secret under {config.home})")
    return Credential()


async def sign_in(channel: grpc.aio.Channel, who: Credential, target: str,
                  timeout: float = 10.0) -> str:
    """The bearer token to send: ``who.token``, or an access token from signing in with
    ``who``'s user name and password ('' for none)."""
    if who.token or not who.username:
        return who.token
    import grpc

    from mesh.v1 import auth_pb2, auth_pb2_grpc

    try:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username=who.username, password=who.password),
            timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise CommandFailed(f"gateway {target}: wrong user name or password: signing in "
                                f"as {who.username} (REVO_USERNAME, REVO_PASSWORD) was "
                                f"refused ({exc.details()})", EXIT_REFUSED,
                                "unauthenticated") from None
        raise call_failure(exc, target, who, what="signing in") from None
    return str(reply.tokens.access_token)


# -- failures ------------------------------------------------------------------------------

_HOW_TO_SIGN_IN = ("set REVO_API_KEY (an API key: `revo keys create`), REVO_TOKEN, or "
                   "REVO_USERNAME and REVO_PASSWORD; on the machine of `revo up`, the local "
                   "operator signs in by itself")


def _unreachable_hint(text: str) -> str:
    lowered = text.lower()
    if any(word in lowered for word in ("dns", "resolv", "lookup", "name or service not")):
        return "the host name does not resolve"
    if "ssl" in lowered or "tls" in lowered or "handshake" in lowered or "certificate" \
            in lowered:
        return ("TLS failed: give the CA that signed the gateway's certificate (REVO_CA_FILE "
                "or gateway.tls.ca_file), or use a plain address")
    if "socket closed" in lowered or "connection reset" in lowered:
        return ("the gateway closed the connection at once: does it speak TLS? Then give "
                "REVO_CA_FILE (or an https:// address)")
    if "refused" in lowered:
        return "nothing listens there: is the mesh up (`revo up`)? Or pass --address / REVO_URL"
    if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
        return "no answer in time: a firewall, a wrong port, or a gateway that hangs"
    return "is the mesh up (`revo up`)? Or pass --address / REVO_URL"


def call_failure(exc: grpc.RpcError, target: str, credential: Credential | None = None,
                 *, what: str = "the call", connected: bool = False) -> CommandFailed:
    """A failed gRPC call as the failure it is: unreachable (exit 3), refused (exit 4) or
    failed (exit 1), with the code, message and the error's details. ``connected``: the
    channel had reached the gateway, so a deadline is the call's own, not a lost way."""
    import grpc

    from mesh.client import rpc_error
    from mesh.errors import Reason

    error = rpc_error(exc)
    code = error.code
    details: dict[str, Any] = {"code": code.name, "message": error.message}
    if error.reason:
        details["reason"] = error.reason
    if error.metadata:
        details["metadata"] = dict(error.metadata)
    if error.retry_after_s is not None:
        details["retry_after_s"] = error.retry_after_s
    if error.violations:
        details["violations"] = [{"field": v.field, "description": v.description}
                                 for v in error.violations]
    source = credential.source if credential else "no credentials"
    # The transport's own failures carry no reason; the mesh's always do.
    if not error.reason and (code == grpc.StatusCode.UNAVAILABLE or (
            code == grpc.StatusCode.DEADLINE_EXCEEDED and not connected)):
        hint = _unreachable_hint(f"{code.name} {error.message}")
        return CommandFailed(f"gateway {target}: not reachable: {error.message or code.name} "
                             f"({hint})", EXIT_UNREACHABLE, "unreachable", details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if error.reason == Reason.TOKEN_MISSING or (credential is not None
                                                    and not credential.token
                                                    and not credential.username):
            return CommandFailed(f"gateway {target}: no credentials were sent and "
                                 f"{what} needs them: {_HOW_TO_SIGN_IN}", EXIT_REFUSED,
                                 "token_missing", details)
        if error.reason == Reason.TOKEN_EXPIRED:
            return CommandFailed(f"gateway {target}: expired token: {source} has expired "
                                 f"({error.message}); get a new one", EXIT_REFUSED,
                                 "token_expired", details)
        if error.reason == Reason.TOKEN_REVOKED:
            return CommandFailed(f"gateway {target}: revoked token: {source} was revoked "
                                 f"({error.message})", EXIT_REFUSED, "token_revoked", details)
        return CommandFailed(f"gateway {target}: wrong key or bad token: the gateway refused "
                             f"{source} ({error.message})", EXIT_REFUSED, "unauthenticated",
                             details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CommandFailed(f"gateway {target}: permission denied: {error.message} "
                             f"(signed in with {source})", EXIT_REFUSED, "permission_denied",
                             details)
    text = f"{code.name}: {error.message}"
    if error.reason:
        text += f" [reason {error.reason}]"
    if error.retry_after_s is not None:
        text += f" [retry after {error.retry_after_s:g} s]"
    for violation in error.violations:
        text += f"\n  {violation.field}: {violation.description}"
    if error.metadata:
        text += "\n  " + ", ".join(f"{k}={v}" for k, v in sorted(error.metadata.items()))
    return CommandFailed(f"{what} failed: {text}", EXIT_ERROR, "error", details)


def unreachable_nats(url: str, reason: object) -> CommandFailed:
    """NATS (``nats.url``) cannot be reached: exit 3."""
    return CommandFailed(f"cannot reach NATS at {url} ({reason or 'timed out'}); is the mesh "
                         "up? (set nats.url / REVO_NATS__URL)", EXIT_UNREACHABLE, "unreachable")


def stderr(message: str) -> None:
    """One message for people, on stderr."""
    print(message, file=sys.stderr, flush=True)
