"""``revo users``, ``revo audit`` and ``revo token``: security from the command line
(``revo keys`` is in :mod:`mesh.auth.key_commands`).

They talk to NATS directly (``nats.url``), like the gateways do, so they work before any
admin exists and without a gateway running. Whoever can reach NATS and read the mesh's
secrets is an operator; protect both.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.js.errors import NotFoundError

from mesh.auth.audit import read_audit
from mesh.auth.revocations import RevocationList
from mesh.auth.roles import ROLES
from mesh.auth.tokens import operator_token
from mesh.auth.users import Accounts, User, UserStore
from mesh.cli_support import add_command, print_json, unreachable_nats
from mesh.config import MeshConfig
from mesh.errors import RpcError
from mesh.transport.connection import MeshConnection, connect

__all__ = ["add_parsers"]


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("revo users: the passwords differ")
    return first


def user_json(user: User) -> dict[str, object]:
    """``revo users list --json``'s record of a user (never a password hash)."""
    return {"username": user.username, "role": user.role, "disabled": user.disabled,
            "updated_at": datetime.fromtimestamp(user.updated_at, UTC).isoformat()}


def _row(user: User) -> str:
    changed = datetime.fromtimestamp(user.updated_at, UTC).strftime("%Y-%m-%d %H:%M")
    return (f"{user.username:<24} {user.role:<10} "
            f"{'disabled' if user.disabled else 'enabled':<9} {changed}")


async def _connect(config: MeshConfig, name: str) -> MeshConnection:
    try:
        return await asyncio.wait_for(connect(config.nats, name=name),
                                      config.nats.connect_timeout_s)
    except (TimeoutError, OSError) as exc:
        raise unreachable_nats(config.nats.url, exc) from None


async def _with_accounts(config: MeshConfig,
                         work: Callable[[Accounts], Awaitable[int]]) -> int:
    nc = await _connect(config, "revo-users")
    try:
        users = UserStore(nc)
        await users.start()
        revocations = RevocationList(nc, config.auth.refresh_ttl_s + config.auth.leeway_s)
        await revocations.open()
        return await work(Accounts(users, revocations.revoke_user))
    finally:
        await nc.drain()


def cmd_users(args: argparse.Namespace, config: MeshConfig) -> int:
    async def work(accounts: Accounts) -> int:
        action = args.action
        if action == "list":
            found = await accounts.users.list()
            if args.json:
                print_json({"users": [user_json(user) for user in found]})
                return 0
            print(f"{'USER':<24} {'ROLE':<10} {'STATUS':<9} CHANGED (UTC)")
            for user in found:
                print(_row(user))
            return 0
        if action == "create":
            user = await accounts.create(args.username, args.role, _password(args))
        elif action == "set-role":
            user = await accounts.set_role(args.username, args.role)
        elif action == "reset-password":
            user = await accounts.reset_password(args.username, _password(args))
        elif action in ("disable", "enable"):
            user = await accounts.set_disabled(args.username, action == "disable")
        else:
            user = await accounts.delete(args.username)
            print(f"deleted {user.username}; their tokens are revoked")
            return 0
        print(_row(user))
        return 0

    try:
        return asyncio.run(_with_accounts(config, work))
    except RpcError as exc:
        print(f"revo users: {exc.message}", file=sys.stderr)
        return 1


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(text: str | None) -> float | None:
    if not text:
        return None
    match = _DURATION.match(text)
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time() - float(match.group(1)) * scale
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"revo audit: --since takes 30m, 2h, 1d or an ISO time, not {text!r}"
                         ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _line(record: dict[str, object]) -> str:
    stamp = datetime.fromtimestamp(float(str(record.get("time", 0))), UTC)
    reason = f"  {record['reason']}" if record.get("reason") else ""
    return (f"{stamp:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" {record.get('decision', ''):<5} "
            f"{record.get('status', ''):<18} {record.get('user') or '-':<16} "
            f"{record.get('role') or '-':<9} {record.get('method', '')} "
            f"{record.get('latency_ms', '')} ms  id={record.get('request_id', '')}"
            + (f" key={record['key']}" if record.get("key") else "") + reason)


def cmd_audit(args: argparse.Namespace, config: MeshConfig) -> int:
    async def run() -> int:
        nc = await _connect(config, "revo-audit")
        shown: list[dict[str, object]] = []
        try:
            async for record in read_audit(nc, decision=args.decision or "*",
                                           user=args.user or "*", since=_since(args.since),
                                           follow=args.follow):
                if args.method and args.method not in str(record.get("method", "")):
                    continue
                if args.status and str(record.get("status")) != args.status.upper():
                    continue
                if args.follow:
                    print(json.dumps(record) if args.json else _line(record), flush=True)
                else:
                    shown.append(record)
        finally:
            await nc.drain()
        for record in shown[-args.limit:] if args.limit else shown:
            print(json.dumps(record) if args.json else _line(record))
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except NotFoundError as exc:
        print(f"revo audit: {exc.description}", file=sys.stderr)
        return 1


def cmd_token(args: argparse.Namespace, config: MeshConfig) -> int:
    if not 0 < args.ttl <= 86400:
        print("revo token: --ttl must be between 1 and 86400 seconds", file=sys.stderr)
        return 2
    if not config.auth.enabled:
        print("revo token: auth is off (auth.enabled = false); no token is needed",
              file=sys.stderr)
        return 1
    token = operator_token(config, ttl_s=args.ttl, user=args.user, create=False)
    if token is None:  # a new secret here would sign tokens that no gateway accepts
        print(f"revo token: no signing secret under {config.home} (REVO_HOME): run it where "
              "the mesh's secrets are, or set REVO_JWT_SECRET", file=sys.stderr)
        return 1
    print(token)
    return 0


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                run: Callable[[Callable[[argparse.Namespace, MeshConfig], int]],
                              Callable[[argparse.Namespace], int]]) -> None:
    users = add_command(
        sub, "users", help="manage users (straight in NATS; no gateway needed)",
        description="Manage the mesh's users: list, create, change a role, reset a "
        "password, disable, enable, delete. Works straight in NATS (nats.url, or the revo up "
        "running here), so it works before any admin exists and without a gateway. A change "
        "of role or password revokes the user's tokens.",
        examples=["revo users list", "revo users list --json",
                  "revo users create ada --role developer",
                  "echo \"$PASSWORD\" | revo users create ci --role analyst --password-stdin",
                  "revo users set-role ada --role admin", "revo users disable ada"])
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add_command(actions, "list", help="every user, role and status",
                          description="Every user with their role, status and when they "
                          "last changed (UTC). Creates nothing.",
                          examples=["revo users list", "revo users list --json | jq -r "
                                    "'.users[] | select(.role == \"admin\") | .username'"])
    listing.add_argument("--json", action="store_true", help="as JSON: {\"users\": "
                         "[{username, role, disabled, updated_at}]}")
    texts = {
        "create": ("add a user", "Add a user with a role and a password (asked twice, or "
                   "read from stdin with --password-stdin).",
                   ["revo users create ada --role developer",
                    "revo users create ci --role analyst --password-stdin < password.txt"]),
        "set-role": ("change a user's role", "Change a user's role; their tokens are "
                     "revoked, so they sign in again with the new role.",
                     ["revo users set-role ada --role admin"]),
        "reset-password": ("set a new password", "Set a user's password; their tokens are "
                           "revoked.", ["revo users reset-password ada",
                                        "revo users reset-password ada --password-stdin"]),
        "disable": ("stop sign-in", "Stop a user from signing in; their tokens and API keys "
                    "stop working.", ["revo users disable ada"]),
        "enable": ("allow sign-in again", "Let a disabled user sign in again.",
                   ["revo users enable ada"]),
        "delete": ("remove a user", "Remove a user; their tokens are revoked.",
                   ["revo users delete ada"]),
    }
    for name, (text, description, examples) in texts.items():
        action = add_command(actions, name, help=text, description=description,
                             examples=examples)
        action.add_argument("username")
        if name in ("create", "set-role"):
            action.add_argument("--role", required=True, choices=sorted(ROLES))
        if name in ("create", "reset-password"):
            action.add_argument("--password-stdin", action="store_true",
                                help="read the password from stdin (scripts)")
    users.set_defaults(func=run(cmd_users))

    audit = add_command(
        sub, "audit", help="read the audit trail (oldest first)",
        description="Read the audit trail: one record per call (who, which method, allowed "
        "or denied, status, latency), oldest first, straight from NATS. Filters combine.",
        examples=["revo audit --since 1h", "revo audit --decision deny --limit 20",
                  "revo audit --user ada --method RecallService --json",
                  "revo audit -f                  # follow new records"])
    audit.add_argument("--user", help="only this user ('-' for anonymous)")
    audit.add_argument("--decision", choices=["allow", "deny"])
    audit.add_argument("--method", help="only methods whose path contains this")
    audit.add_argument("--status", help="only this status (OK, UNAUTHENTICATED, ...)")
    audit.add_argument("--since", help="30m, 2h, 1d or an ISO time (default: everything)")
    audit.add_argument("--limit", type=int, default=100, help="show the last N (default 100; "
                       "0 for all)")
    audit.add_argument("-f", "--follow", action="store_true", help="wait for new records")
    audit.add_argument("--json", action="store_true", help="one JSON record per line")
    audit.set_defaults(func=run(cmd_audit))

    token = add_command(
        sub, "token", help="print an admin access token signed with this machine's key "
        "(for grpcurl and scripts)",
        description="Print an access token signed with this machine's signing key (the "
        "mesh's secrets under REVO_HOME), for grpcurl and scripts. It cannot be revoked "
        "except by rotating the key: keep --ttl short. revo call signs in by itself and "
        "needs none.",
        examples=["revo token", "REVO_TOKEN=$(revo token --ttl 300) revo call "
                  "EchoService/Stats", "grpcurl -H \"authorization: Bearer $(revo token)\" "
                  "127.0.0.1:50051 list"])
    token.add_argument("--user", default="operator", help="the token's subject")
    token.add_argument("--ttl", type=float, default=900.0,
                       help="lifetime in seconds (at most 86400: the token cannot be revoked "
                       "except by rotating the signing key)")
    token.set_defaults(func=run(cmd_token))

    from mesh.auth.key_commands import add_key_parsers  # it builds on this module

    add_key_parsers(sub, run)
