"""Configuration: defaults, revo.toml, REVO_* variables, and errors that name the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import CLIENT_VARIABLES, MeshConfig, load_config
from mesh.errors import ConfigError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "revo.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./revo.toml here

    config = load_config(environ={})

    assert config.gateway.address == "127.0.0.1:50051"
    assert config.nats.url == "nats://127.0.0.1:4222"
    assert config.nats.embedded is True
    assert config.home == Path(".revo")
    assert config.plugins.block == []
    assert config.plugins.only == []
    assert config.engines == {}
    assert config.engine("echo").pool_size is None
    assert config.engine("echo").plugin_settings() == {}


def test_reads_revo_toml_from_the_working_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, '[gateway]\naddress = "0.0.0.0:6000"\n')
    monkeypatch.chdir(tmp_path)

    assert load_config(environ={}).gateway.address == "0.0.0.0:6000"


def test_reads_the_file_named_by_revo_config(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere.toml"
    other.write_text('[node]\nid = "from-revo-config"\n')

    config = load_config(environ={"REVO_CONFIG": str(other)})

    assert config.node.id == "from-revo-config"


def test_toml_file_sets_nested_sections_and_engines(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
home = "/var/lib/revo"
log_level = "DEBUG"

[gateway]
address = "0.0.0.0:7000"
stream_window = 8

[nats]
url = "nats://nats-1:4222,nats://nats-2:4222"
embedded = false

[plugins]
block = ["creative"]
extra = { crashy = "tests.plugins.crashy" }

[engines.echo]
pool_size = 4
prefix = "> "
""")

    config = load_config(path, environ={})

    assert config.home == Path("/var/lib/revo")
    assert config.log_level == "DEBUG"
    assert config.gateway.address == "0.0.0.0:7000"
    assert config.gateway.stream_window == 8
    assert config.nats.embedded is False
    assert config.plugins.block == ["creative"]
    assert config.plugins.extra == {"crashy": "tests.plugins.crashy"}
    assert config.engine("echo").pool_size == 4
    # The plugin's own keys are kept apart from the mesh's (pool_size, max_pending).
    assert config.engine("echo").plugin_settings() == {"prefix": "> "}


def test_environment_sets_gateway_address_and_home() -> None:
    config = load_config(environ={"REVO_GATEWAY__ADDRESS": "10.0.0.1:9000",
                                  "REVO_HOME": "/tmp/revo-home"})

    assert config.gateway.address == "10.0.0.1:9000"
    assert config.home == Path("/tmp/revo-home")


def test_environment_lists_are_comma_separated() -> None:
    config = load_config(environ={"REVO_PLUGINS__BLOCK": "a, b,,c",
                                  "REVO_PLUGINS__ONLY": "echo"})

    assert config.plugins.block == ["a", "b", "c"]
    assert config.plugins.only == ["echo"]


def test_environment_sets_engine_pool_size_and_plugin_keys() -> None:
    config = load_config(environ={"REVO_ENGINES__ECHO__POOL_SIZE": "3",
                                  "REVO_ENGINES__ECHO__PREFIX": "x"})

    assert config.engine("echo").pool_size == 3
    assert config.engine("echo").plugin_settings() == {"prefix": "x"}


def test_environment_overrides_file_key_by_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[gateway]
address = "0.0.0.0:7000"
stream_window = 8

[engines.echo]
pool_size = 4
prefix = "file"
""")

    config = load_config(path, environ={"REVO_GATEWAY__ADDRESS": "127.0.0.1:7001",
                                        "REVO_ENGINES__ECHO__POOL_SIZE": "1"})

    assert config.gateway.address == "127.0.0.1:7001"
    assert config.gateway.stream_window == 8  # the file's other keys survive
    assert config.engine("echo").pool_size == 1
    assert config.engine("echo").plugin_settings() == {"prefix": "file"}


def test_keyword_overrides_apply_last(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[gateway]\naddress = "0.0.0.0:7000"\n')

    config = load_config(path, environ={"REVO_GATEWAY__ADDRESS": "127.0.0.1:7001"},
                         gateway={"address": "127.0.0.1:0"})

    assert config.gateway.address == "127.0.0.1:0"


def test_revo_config_variable_is_not_taken_for_a_setting(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "")

    assert isinstance(load_config(environ={"REVO_CONFIG": str(path)}), MeshConfig)


def test_unknown_key_in_file_suggests_the_closest(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[gateway]\nadress = "0.0.0.0:7000"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert "gateway.adress" in message
    assert "did you mean 'gateway.address'" in message
    assert str(path) in message


def test_unknown_top_level_key_in_file_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'log_levl = "DEBUG"\n')

    with pytest.raises(ConfigError, match="did you mean 'log_level'"):
        load_config(path, environ={})


def test_unknown_environment_variable_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"REVO_GATWAY__ADDRESS": "127.0.0.1:1"})

    message = str(caught.value)
    assert "REVO_GATWAY__ADDRESS" in message
    assert "did you mean 'REVO_GATEWAY__ADDRESS'" in message


def test_variables_without_the_prefix_are_ignored() -> None:
    config = load_config(environ={"GATEWAY__ADDRESS": "nope", "PATH": "/bin",
                                  "REVOLUTION": "1"})

    assert config.gateway.address == "127.0.0.1:50051"


def test_invalid_port_names_the_key_and_the_value(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[nats]\nport = 70000\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert "nats.port" in message
    assert "70000" in message
    assert "65535" in message


def test_invalid_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"REVO_ENGINES__ECHO__POOL_SIZE": "0"})

    message = str(caught.value)
    assert "engines.echo.pool_size" in message
    assert "environment" in message


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[gateway\naddress = \n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)


def test_missing_explicit_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing, environ={})


def test_environment_adds_an_extra_plugin() -> None:
    config = load_config(environ={"REVO_PLUGINS__EXTRA__CRASHY": "tests.plugins.crashy"})

    assert config.plugins.extra == {"crashy": "tests.plugins.crashy"}


def test_missing_file_named_by_revo_config_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "revo.tml"

    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={"REVO_CONFIG": str(missing)})


def test_log_level_is_checked_and_case_insensitive() -> None:
    assert load_config(environ={"REVO_LOG_LEVEL": "debug"}, read_file=False).log_level == "DEBUG"
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"REVO_LOG_LEVEL": "loud"}, read_file=False)
    assert "log_level" in str(caught.value)


def test_nats_replicas_defaults_to_one_and_is_bounded() -> None:
    assert load_config(environ={}, read_file=False).nats.replicas == 1
    assert load_config(environ={"REVO_NATS__REPLICAS": "3"}).nats.replicas == 3

    with pytest.raises(ConfigError, match=r"nats\.replicas.*less than or equal to 5"):
        load_config(environ={"REVO_NATS__REPLICAS": "7"})


def test_the_audit_replicas_key_points_to_nats_replicas(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[auth.audit]\nreplicas = 3\n")

    with pytest.raises(ConfigError, match=r"auth\.audit\.replicas.*replaced by "
                       r"'nats\.replicas'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"REVO_AUTH__AUDIT__REPLICAS.*replaced by "
                       r"'REVO_NATS__REPLICAS'"):
        load_config(environ={"REVO_AUTH__AUDIT__REPLICAS": "3"})


def test_client_variables_are_accepted_and_ignored() -> None:
    """A shell that holds a client's variables (REVO_URL, REVO_TOKEN, ...) can still run
    every ``revo`` command: they are not settings, and change none."""
    client = {"REVO_URL": "10.0.0.9:443", "REVO_API_KEY": "revo_x_y", "REVO_TOKEN": "t",
              "REVO_USERNAME": "ada", "REVO_PASSWORD": "p", "REVO_CA_FILE": "/ca.pem",
              "REVO_TIMEOUT": "5"}

    assert set(client) == CLIENT_VARIABLES
    assert load_config(environ=client, read_file=False) == load_config(environ={},
                                                                       read_file=False)


def test_an_unknown_variable_near_a_client_variable_names_it() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting REVO_TOKN; did you mean "
                       r"'REVO_TOKEN'"):
        load_config(environ={"REVO_TOKN": "t"}, read_file=False)


def test_the_client_library_reads_exactly_the_accepted_client_variables() -> None:
    from mesh.client.api import CLIENT_VARIABLES as READ_BY_THE_CLIENT

    assert set(READ_BY_THE_CLIENT) == CLIENT_VARIABLES
