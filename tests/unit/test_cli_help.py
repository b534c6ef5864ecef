"""Every ``revo`` command and subcommand (plugins' too) has a description and examples in
its ``--help``, and ``revo --version`` names revo-mesh's version and each engine's."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import entry_points, version

import pytest

from mesh.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: str = "revo"
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, f"{path} {name}")


def test_every_command_has_a_description_and_examples() -> None:
    commands = dict(_commands(build_parser(plugin_commands=True)))
    # the walk reaches nested and plugin commands
    assert {"revo call", "revo users list", "revo keys create",
            "revo workflows run"} <= commands.keys()
    missing = []
    for path, parser in commands.items():
        examples = [line.strip() for line in (parser.epilog or "").splitlines()
                    if line.strip().startswith(("revo ", "REVO_", "echo ", "export ",
                                                "grpcurl "))]
        if not (parser.description or "").strip():
            missing.append(f"{path}: no description")
        if "examples:" not in (parser.epilog or "") or not examples:
            missing.append(f"{path}: no examples")
        elif parser.formatter_class is not argparse.RawDescriptionHelpFormatter:
            missing.append(f"{path}: examples reflowed (RawDescriptionHelpFormatter)")
        name = path.split()[-1]
        if path != "revo" and not any(name in example for example in examples):
            missing.append(f"{path}: no example uses it")
    assert not missing, "\n".join(missing)


def test_version_names_revo_mesh_and_each_installed_engine(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"revo-mesh {version('revo-mesh')} (Python ")
    engines = {line.split()[1]: line.split()[2:] for line in lines[1:]}
    installed = {point.name: point.dist for point in entry_points(group="revo.engines")}
    assert engines.keys() == installed.keys()
    for name, dist in installed.items():
        assert dist is not None
        assert engines[name] == [dist.name, dist.version]
