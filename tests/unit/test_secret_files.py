"""Secrets handed over as files (compose and Kubernetes secrets): the admin password through
``REVO_ADMIN_PASSWORD_FILE``, the NATS password through ``nats.password_file``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.auth.secrets import env_secret
from mesh.config import NatsSettings, load_config
from mesh.errors import ConfigError
from mesh.transport.connection import nats_password


def test_admin_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "admin_password"
    secret.write_text("s3cret-from-a-file\n")
    environ = {"REVO_ADMIN_PASSWORD_FILE": str(secret)}
    assert env_secret("REVO_ADMIN_PASSWORD", environ) == "s3cret-from-a-file"
    # the variable itself wins; neither set: no secret
    assert env_secret("REVO_ADMIN_PASSWORD", {**environ, "REVO_ADMIN_PASSWORD": "x"}) == "x"
    assert env_secret("REVO_ADMIN_PASSWORD", {}) == ""
    # it is not a configuration key: the environment check lets it through
    load_config(read_file=False, environ=environ)


def test_unreadable_admin_password_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"REVO_ADMIN_PASSWORD_FILE names .*nope"):
        env_secret("REVO_ADMIN_PASSWORD", {"REVO_ADMIN_PASSWORD_FILE": str(missing)})


def test_nats_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "nats_password"
    secret.write_text("nats-pass\n")
    config = load_config(read_file=False, environ={"REVO_NATS__USER": "revo",
                                                   "REVO_NATS__PASSWORD_FILE": str(secret)})
    assert nats_password(config.nats) == "nats-pass"
    assert nats_password(NatsSettings(password="inline", password_file=secret)) == "inline"
    with pytest.raises(ConfigError, match=r"nats.password_file: cannot read .*gone"):
        nats_password(NatsSettings(password_file=tmp_path / "gone"))
