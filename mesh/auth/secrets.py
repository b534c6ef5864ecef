"""Secrets the mesh keeps on disk: read from the environment, a file, or created once."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from mesh.errors import ConfigError

__all__ = ["env_secret", "load_secret"]


def load_secret(env_name: str, path: Path, environ: Mapping[str, str] | None = None,
                *, create: bool = True) -> bytes:
    """The secret in ``$env_name``, else in ``path``; created there (mode 0600) when absent.

    Creation is race-free: concurrent processes on one ``REVO_HOME`` end up with the same
    secret. Replicas on different machines must be given the same secret explicitly.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(env_name, "")
    if value:
        return value.encode()
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"{path} does not exist; set {env_name} or create it")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = base64.urlsafe_b64encode(os.urandom(48))
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret + b"\n")
        with contextlib.suppress(FileExistsError):  # another process won: use its secret
            os.link(scratch, path)
        scratch.unlink()
    data = path.read_bytes().strip()
    if len(data) < 32:
        raise ValueError(f"{path} holds {len(data)} bytes; a secret needs at least 32")
    return data


def env_secret(env_name: str, environ: Mapping[str, str] | None = None) -> str:
    """The secret in ``$env_name``, else in the file named by ``$<env_name>_FILE`` (how
    compose and Kubernetes hand secrets over: ``REVO_ADMIN_PASSWORD_FILE=/run/secrets/x``),
    else ''. A named file that cannot be read is a :class:`ConfigError` saying which."""
    environ = os.environ if environ is None else environ
    value = environ.get(env_name, "")
    named = environ.get(f"{env_name}_FILE", "")
    if value or not named:
        return value
    try:
        return Path(named).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{env_name}_FILE names {named}, which cannot be read: "
                          f"{exc.strerror}") from None
