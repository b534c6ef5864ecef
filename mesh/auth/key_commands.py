"""``revo keys``: API keys from the command line, straight in NATS like ``revo users``.

The operator acts for any user: ``--user`` names the key's owner (default ``admin``, the
user ``revo up`` creates). Users manage their own keys through ``UserService`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mesh.auth.commands import _DURATION, _with_accounts
from mesh.auth.keys import ApiKey, key_expiry
from mesh.auth.roles import ROLES
from mesh.auth.users import Accounts
from mesh.cli_support import add_command, print_json
from mesh.config import MeshConfig
from mesh.errors import InvalidArgument, NotFound, RpcError

__all__ = ["add_key_parsers"]

_SCALE = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_lifetime(text: str) -> int:
    """``30d``, ``12h``, ``90m`` or ``3600s`` in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidArgument(f"--expires takes a lifetime like 30d, 12h, 90m or 3600s, not "
                              f"{text[:40]!r}")
    return max(1, round(float(match.group(1)) * _SCALE[match.group(2)]))


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M") if seconds else "-"


def _status(key: ApiKey, now: float) -> str:
    if key.revoked:
        return "revoked"
    return "expired" if now >= key.expires_at else "active"


def _when(seconds: float) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds else None


def key_json(key: ApiKey, now: float) -> dict[str, object]:
    """``revo keys list --json``'s record of a key (never its secret)."""
    return {"id": key.id, "name": key.name, "owner": key.owner, "role": key.role,
            "status": _status(key, now), "created_at": _when(key.created_at),
            "expires_at": _when(key.expires_at), "last_used_at": _when(key.last_used_at)}


def _row(key: ApiKey, now: float) -> str:
    return (f"{key.id:<16}  {key.name[:24]:<24} {key.owner[:20]:<20} {key.role:<10} "
            f"{_status(key, now):<8} {_stamp(key.created_at):<16}  "
            f"{_stamp(key.expires_at):<16}  {_stamp(key.last_used_at)}")


_HEADER = (f"{'ID':<16}  {'NAME':<24} {'OWNER':<20} {'ROLE':<10} {'STATUS':<8} "
           f"{'CREATED (UTC)':<16}  {'EXPIRES (UTC)':<16}  LAST USED")


def cmd_keys(args: argparse.Namespace, config: MeshConfig) -> int:
    async def work(accounts: Accounts) -> int:
        now = time.time()
        if args.action == "list":
            found = await accounts.keys.list(args.user)
            if args.json:
                print_json({"keys": [key_json(key, now) for key in found]})
                return 0
            print(_HEADER)
            for key in found:
                print(_row(key, now))
            return 0
        if args.action == "revoke":
            key = await accounts.keys.revoke(args.id)
            print(f"revoked {key.id} ({key.name}, owner {key.owner}); every gateway refuses "
                  "it within a second")
            return 0
        owner = await accounts.users.get(args.user)
        if owner is None:
            raise NotFound(f"no user {args.user!r}; `revo users list` shows them (--user "
                           "names the key's owner)")
        expires_in = parse_lifetime(args.expires) if args.expires else None
        expires_at = key_expiry(config.auth.api_keys, now, expires_in_s=expires_in)
        key, secret = await accounts.keys.create(owner, args.name, args.role or owner.role,
                                                 expires_at, now)
        print(f"API key {key.id} ({key.name}) for {key.owner}, role {key.role}, expires "
              f"{_stamp(key.expires_at)} UTC:")
        print(secret)
        print("Copy it now: it is not stored and will not be shown again. Send it as "
              "'authorization: Bearer <key>'.", file=sys.stderr)
        return 0

    try:
        return asyncio.run(_with_accounts(config, work))
    except RpcError as exc:
        print(f"revo keys: {exc.message}", file=sys.stderr)
        return 1


def add_key_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                    run: Callable[[Callable[[argparse.Namespace, MeshConfig], int]],
                                  Callable[[argparse.Namespace], int]]) -> None:
    keys = add_command(
        sub, "keys", help="manage API keys (straight in NATS; no gateway needed)",
        description="Manage API keys: long-lived credentials for programs, each acting as "
        "its owner with at most the owner's role. The operator acts for any user (--user; "
        "default admin). Straight in NATS, like revo users. A key's secret is printed once.",
        examples=["revo keys create --name ci --user ada --role analyst --expires 30d",
                  "revo keys list", "revo keys list --user ada --json",
                  "revo keys revoke 3f9c2a1b7d4e5f60"])
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = add_command(
        actions, "create", help="make a key; its secret is printed once",
        description="Make an API key for a user; its secret is printed once, on stdout (the "
        "rest on stderr), and is not stored. Send it as 'authorization: Bearer <key>' or "
        "set REVO_API_KEY.",
        examples=["revo keys create --name ci --user ada",
                  "revo keys create --name nightly --user ada --role viewer --expires 12h",
                  "export REVO_API_KEY=$(revo keys create --name me --user ada | tail -1)"])
    create.add_argument("--name", required=True, help="what the key is for (1-64 characters)")
    create.add_argument("--user", default="admin", help="the key's owner (default: admin)")
    create.add_argument("--role", choices=sorted(ROLES),
                        help="the key's role, at most the owner's (default: the owner's)")
    create.add_argument("--expires", help="lifetime: 30d, 12h, 90m, 3600s (default: "
                        "auth.api_keys.default_ttl_s)")
    listing = add_command(
        actions, "list", help="every key (never a secret)",
        description="Every API key (or one user's) with its owner, role, status (active, "
        "expired, revoked) and when it was created, expires and was last used (UTC). "
        "Never a secret. Creates nothing.",
        examples=["revo keys list", "revo keys list --user ada",
                  "revo keys list --json | jq -r '.keys[] | select(.status == \"active\") "
                  "| .id'"])
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--json", action="store_true", help="as JSON: {\"keys\": [{id, "
                         "name, owner, role, status, created_at, expires_at, last_used_at}]}")
    revoke = add_command(
        actions, "revoke", help="stop a key at every gateway",
        description="Revoke a key: every gateway refuses it within a second.",
        examples=["revo keys revoke 3f9c2a1b7d4e5f60"])
    revoke.add_argument("id", help="the key's id (from `revo keys list`)")
    keys.set_defaults(func=run(cmd_keys))
