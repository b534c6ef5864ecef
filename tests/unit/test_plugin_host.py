"""The plugin host: every plugin gets a status and a message a person can act on.

The hooks exercised here: ``revo_hookspecs`` (extend), ``revo_engine`` (declare), and
Parallel Mind's ``revo_task_types`` as a hook a plugin declares; settings are validated by
the host. ``tests/unit/test_hookspecs.py`` checks that each hook in
``mesh.plugins.hookspecs`` is named in this file.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh.config import load_config
from mesh.errors import ConfigError
from mesh.plugins import PluginHost, PluginRecord, PluginStatus
from mesh.runtime.pool import EnginePool
from revo_engine_echo import EchoSettings
from revo_engine_parallel import hookspecs as parallel_hooks
from tests.plugins import bad_start, failing_task_types

ECHO_PATHS = {"/revo.echo.v1.EchoService/Echo", "/revo.echo.v1.EchoService/Count",
              "/revo.echo.v1.EchoService/Stats"}

FAULTY = {
    "bad_config": "tests.plugins.bad_config",
    "bad_start": "tests.plugins.bad_start",
    "broken_import": "tests.plugins.broken_import",
    "misnamed": "tests.plugins.misnamed",
    "missing_method": "tests.plugins.missing_method",
    "unknown_hook": "tests.plugins.unknown_hook",
}


def load_one(name: str, module: str, **kwargs: object) -> PluginRecord:
    host = PluginHost(discover=False, extra={name: module}, **kwargs)  # type: ignore[arg-type]
    records = host.load()
    assert [record.name for record in records] == [name]
    return host.records[name]


# -- healthy plugins ----------------------------------------------------------------------

def test_revo_engine_of_echo_loaded_by_module_path_is_enabled() -> None:
    record = load_one("echo", "revo_engine_echo")

    assert record.status is PluginStatus.ENABLED, record.message
    assert record.message == ""
    assert record.spec is not None
    assert record.spec.name == "echo"
    assert record.version == "0.1.0"
    assert set(record.methods) == ECHO_PATHS
    assert record.methods["/revo.echo.v1.EchoService/Count"].server_streaming
    assert not record.methods["/revo.echo.v1.EchoService/Echo"].server_streaming


def test_installed_echo_is_found_through_its_entry_point() -> None:
    host = PluginHost()
    host.load()

    record = host.records["echo"]
    assert record.status is PluginStatus.ENABLED, record.message
    assert record.distribution == "revo-engine-echo"
    assert record.version == "0.1.0"
    assert record.source == "revo_engine_echo"
    assert record in host.enabled()


def test_revo_engine_of_crashy_test_plugin_is_enabled() -> None:
    record = load_one("crashy", "tests.plugins.crashy")

    assert record.status is PluginStatus.ENABLED, record.message
    assert record.spec is not None
    assert record.spec.pool_size == 1
    assert set(record.methods) == ECHO_PATHS


# -- settings (validated by the host with the engine's model) ----------------------------

def test_settings_model_turns_the_table_into_the_engines_settings() -> None:
    record = load_one("echo", "revo_engine_echo", settings={"echo": {"prefix": "x"}})

    assert record.status is PluginStatus.ENABLED, record.message
    assert isinstance(record.settings, EchoSettings)
    assert record.settings.prefix == b"x"


def test_settings_come_from_the_plugin_keys_of_configuration() -> None:
    config = load_config(environ={"REVO_ENGINES__ECHO__PREFIX": "env:",
                                  "REVO_ENGINES__ECHO__POOL_SIZE": "3"})
    settings = {name: s.plugin_settings() for name, s in config.engines.items()}

    record = load_one("echo", "revo_engine_echo", settings=settings)

    assert record.status is PluginStatus.ENABLED, record.message
    assert isinstance(record.settings, EchoSettings)
    assert record.settings.prefix == b"env:"


def test_unknown_settings_key_is_a_config_error_naming_it_with_a_suggestion() -> None:
    record = load_one("echo", "revo_engine_echo", settings={"echo": {"prefx": "x"}})

    assert record.status is PluginStatus.CONFIG_ERROR
    assert record.message == "[engines.echo] prefx: unknown key; did you mean 'prefix'?"


def test_setting_of_the_wrong_type_is_a_config_error_naming_the_key() -> None:
    record = load_one("echo", "revo_engine_echo", settings={"echo": {"prefix": 5}})

    assert record.status is PluginStatus.CONFIG_ERROR
    assert record.message.startswith("[engines.echo] prefix: "), record.message
    assert "bytes" in record.message


def test_settings_model_validators_speak_through_the_config_error() -> None:
    record = load_one("parallel", "revo_engine_parallel",
                      settings={"parallel": {"workers_min": 8, "workers_max": 2}})

    assert record.status is PluginStatus.CONFIG_ERROR
    assert record.message.startswith("[engines.parallel] ")
    assert "workers_min (8) is above workers_max (2)" in record.message


def test_engine_without_a_settings_model_gets_none() -> None:
    record = load_one("crashy", "tests.plugins.crashy")

    assert record.status is PluginStatus.ENABLED, record.message
    assert record.settings is None


def test_engine_without_a_settings_model_refuses_keys_of_its_own() -> None:
    record = load_one("crashy", "tests.plugins.crashy", settings={"crashy": {"mode": "loud"}})

    assert record.status is PluginStatus.CONFIG_ERROR
    assert record.message.startswith("[engines.crashy] mode: ")
    assert "takes no settings" in record.message


def test_missing_required_setting_is_a_config_error_naming_it() -> None:
    record = load_one("bad_config", FAULTY["bad_config"])

    assert record.status is PluginStatus.CONFIG_ERROR
    assert record.message == "[engines.bad_config] model: Field required"
    assert record.spec is not None  # it was declared before its configuration failed


# -- faulty plugins -----------------------------------------------------------------------

def test_import_error_is_a_load_error_that_names_the_cause() -> None:
    record = load_one("broken_import", FAULTY["broken_import"])

    assert record.status is PluginStatus.LOAD_ERROR
    assert "ImportError" in record.message
    assert "revo-missing-dependency" in record.message


def test_missing_module_is_a_load_error() -> None:
    record = load_one("ghost", "tests.plugins.does_not_exist")

    assert record.status is PluginStatus.LOAD_ERROR
    assert "tests.plugins.does_not_exist" in record.message


def test_revo_engine_named_unlike_its_entry_point_is_a_load_error() -> None:
    record = load_one("misnamed", FAULTY["misnamed"])

    assert record.status is PluginStatus.LOAD_ERROR
    assert "'misnamed'" in record.message
    assert "'other'" in record.message


def test_engine_lacking_a_method_is_a_load_error_naming_it() -> None:
    record = load_one("missing_method", FAULTY["missing_method"])

    assert record.status is PluginStatus.LOAD_ERROR
    assert "'count'" in record.message
    assert "revo.echo.v1.EchoService.Count" in record.message


def test_unknown_hook_is_a_load_error_naming_the_hook() -> None:
    record = load_one("unknown_hook", FAULTY["unknown_hook"])

    assert record.status is PluginStatus.LOAD_ERROR
    assert "revo_not_a_hook" in record.message
    assert "revo_engine" in record.message  # lists the hooks that do exist


def test_faulty_plugins_never_stop_the_healthy_ones() -> None:
    host = PluginHost(discover=False,
                      extra={**FAULTY, "echo": "revo_engine_echo",
                             "crashy": "tests.plugins.crashy"})

    host.load()

    statuses = {name: record.status for name, record in host.records.items()}
    assert statuses == {
        "bad_config": PluginStatus.CONFIG_ERROR,
        "bad_start": PluginStatus.ENABLED,  # it fails only when its actors start
        "broken_import": PluginStatus.LOAD_ERROR,
        "crashy": PluginStatus.ENABLED,
        "echo": PluginStatus.ENABLED,
        "misnamed": PluginStatus.LOAD_ERROR,
        "missing_method": PluginStatus.LOAD_ERROR,
        "unknown_hook": PluginStatus.LOAD_ERROR,
    }
    assert [record.name for record in host.enabled()] == ["bad_start", "crashy", "echo"]
    for record in host.records.values():
        if record.status is not PluginStatus.ENABLED:
            assert record.message, f"{record.name} failed without saying why"


async def test_engine_failing_to_start_gets_start_error_with_its_message() -> None:
    host = PluginHost(discover=False, extra={"bad_start": "tests.plugins.bad_start"})
    host.load()
    record = host.records["bad_start"]
    assert record.spec is not None
    pool = EnginePool(record.spec, record.settings, loop=asyncio.get_running_loop(),
                      size=1, max_pending=1, start_timeout_s=5.0)

    with pytest.raises(RuntimeError) as caught:
        await pool.start()
    host.mark_start_error("bad_start", caught.value)

    assert record.status is PluginStatus.START_ERROR
    assert bad_start.START_ERROR in record.message
    assert host.enabled() == []


# -- block and only -----------------------------------------------------------------------

def test_blocked_plugin_is_disabled_and_not_imported() -> None:
    host = PluginHost(discover=False, block=["broken_import"],
                      extra={"broken_import": FAULTY["broken_import"],
                             "echo": "revo_engine_echo"})

    host.load()

    assert host.records["broken_import"].status is PluginStatus.DISABLED
    assert "blocked" in host.records["broken_import"].message
    assert host.records["echo"].status is PluginStatus.ENABLED


def test_only_disables_every_other_plugin() -> None:
    host = PluginHost(discover=False, only=["echo"],
                      extra={"echo": "revo_engine_echo", "crashy": "tests.plugins.crashy"})

    host.load()

    assert host.records["crashy"].status is PluginStatus.DISABLED
    assert host.records["echo"].status is PluginStatus.ENABLED
    assert [record.name for record in host.enabled()] == ["echo"]


def test_blocking_an_installed_plugin_by_its_entry_point_name() -> None:
    host = PluginHost(block=["echo"])

    host.load()

    assert host.records["echo"].status is PluginStatus.DISABLED
    assert "echo" not in [record.name for record in host.enabled()]


def test_extra_plugin_with_an_installed_name_gets_one_clear_outcome() -> None:
    host = PluginHost(extra={"echo": "tests.plugins.crashy"})

    host.load()

    record = host.records["echo"]
    if record.status is PluginStatus.ENABLED:
        assert record.source == "tests.plugins.crashy"  # the development override won
    else:
        assert "tests.plugins.crashy" in record.message
        assert "revo_engine_echo" in record.message or "revo-engine-echo" in record.message
        assert "already registered" not in record.message


# -- hooks that plugins declare ----------------------------------------------------------

TASK_PLUGINS = {"guarded": "tests.plugins.guarded", "parallel": "revo_engine_parallel",
                "echo": "revo_engine_echo"}


def test_revo_hookspecs_declares_a_hook_that_each_then_asks_enabled_plugins() -> None:
    host = PluginHost(discover=False, extra=TASK_PLUGINS, block=["echo"])
    host.load()  # guarded (implementing revo_task_types) loads before parallel declares it

    offered = host.each(parallel_hooks.revo_task_types)

    assert host.records["guarded"].status is PluginStatus.ENABLED
    assert list(offered) == ["guarded"]  # parallel and echo offer none; echo is blocked
    assert {"test.fail", "test.crash", "test.effect"} <= set(offered["guarded"])


def test_plugin_implementing_a_declared_hook_loads_without_the_declaring_plugin() -> None:
    record = load_one("guarded", "tests.plugins.guarded")

    assert record.status is PluginStatus.ENABLED, record.message


def test_bad_implementation_of_a_declared_hook_is_its_own_load_error() -> None:
    host = PluginHost(discover=False, extra={**TASK_PLUGINS,
                                             "bad_task_types": "tests.plugins.bad_task_types"})
    host.load()

    record = host.records["bad_task_types"]
    assert record.status is PluginStatus.LOAD_ERROR
    assert "revo_task_types" in record.message
    assert "queue" in record.message
    assert [r.name for r in host.enabled()] == ["echo", "guarded", "parallel"]


def test_hook_implementation_that_raises_is_named_by_each() -> None:
    host = PluginHost(discover=False, extra={
        **TASK_PLUGINS, "failing_task_types": "tests.plugins.failing_task_types"})
    host.load()

    with pytest.raises(ConfigError) as caught:
        host.each(parallel_hooks.revo_task_types)

    assert "plugin failing_task_types" in str(caught.value)
    assert failing_task_types.FAILURE in str(caught.value)


def test_revo_engine_is_called_through_pluggy_so_its_tracing_sees_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mesh.plugins.host")
    host = PluginHost(discover=False, extra={"echo": "revo_engine_echo"})

    host.load()

    traced = [r.getMessage() for r in caplog.records if r.name == "mesh.plugins.host"]
    assert any("revo_engine" in line and "[hook]" in line for line in traced), traced
    assert any("revo_hookspecs" in line for line in traced), traced


def test_revo_commands_adds_a_plugins_commands_to_revo() -> None:
    import argparse

    from mesh.plugins.hookspecs import revo_commands

    host = PluginHost(discover=False, extra={"workflows": "revo_engine_workflows",
                                             "echo": "revo_engine_echo"})
    host.load()
    parser = argparse.ArgumentParser(prog="revo")
    commands = parser.add_subparsers(dest="command", required=True)

    host.each(revo_commands, commands=commands)

    assert set(commands.choices) == {"workflows"}  # echo adds none
    args = parser.parse_args(["workflows", "apply", "flow.yaml", "--check"])
    assert (args.action, str(args.file), args.check) == ("apply", "flow.yaml", True)
    assert callable(args.func)
