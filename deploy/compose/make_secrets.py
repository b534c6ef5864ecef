#!/usr/bin/env python3
"""Make the secrets compose.yaml names, once: ``python3 deploy/compose/make_secrets.py``.

Writes random secrets under ``deploy/compose/secrets/`` (or the directory given as the
argument) and leaves any file that already exists alone, so running it again changes
nothing but ``nats_auth.conf`` (derived from ``nats_password``, so rewritten each time);
rotating a secret is: delete its file, run this, ``docker compose up -d``.
The provider API keys are written empty: put your keys in them (until then calls to those
models fail). Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NATS_USER = "revo"  # compose.yaml: REVO_NATS__USER

RANDOM = ("jwt_secret", "identity_secret", "admin_password", "nats_password",
          "grafana_admin_password")
EMPTY = ("openai_api_key", "anthropic_api_key")
DERIVED = ("nats_auth.conf",)
SECRETS = RANDOM + EMPTY + DERIVED
"""Every file compose.yaml's ``secrets:`` names (tests/deploy/test_compose.py checks it)."""


def _write(path: Path, text: str) -> bool:
    """Write ``text`` to a new file; False when it exists.

    Compose mounts a secret file as it is (its owner and mode), and the containers run as
    users of their own (revo is uid 10001): the files are world-readable, and the directory
    (0700) is what keeps other users of this host out."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.fchmod(fd, 0o644)  # whatever the umask
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def nats_auth(password: str) -> str:
    """nats.conf's included authorization block: user revo with the clients' password."""
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    return ("# made by deploy/compose/make_secrets.py from nats_password\n"
            f'authorization {{\n  users: [ {{user: {NATS_USER}, password: "{quoted}"}} ]\n}}\n')


def make(directory: Path) -> list[str]:
    """Create the missing secrets in ``directory``; the names of those created."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    created = [name for name in RANDOM
               if _write(directory / name, secrets.token_urlsafe(48) + "\n")]
    created += [name for name in EMPTY if _write(directory / name, "")]
    # derived, so always rewritten: it follows nats_password when that is rotated
    password = (directory / "nats_password").read_text().strip()
    derived = directory / "nats_auth.conf"
    derived.unlink(missing_ok=True)
    _write(derived, nats_auth(password))
    return created


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else HERE / "secrets"
    created = make(directory)
    print(f"{directory}: created {', '.join(created) or 'nothing (all present)'}")
    if "openai_api_key" in created or "anthropic_api_key" in created:
        print("put your provider API keys in openai_api_key / anthropic_api_key")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
